"""Step caching: skip most of the denoiser on sampling steps where its work barely changes.

The method is the first-block residual cache (FBCache, as in ParaAttention and diffusers'
`FirstBlockCache`): at every step the denoiser's first block runs as usual; its residual
``r1 = block_0(h) - h`` is compared with the first-block residual of the last step that ran the
whole model,

    change = mean |r1 - r1_ref| / mean |r1_ref|.

While that change stays below ``threshold``, the remaining blocks are skipped and their
residual from that last full step is added instead (``h_out = block_0(h) + rest_ref``); the head
always runs on the current tokens and timestep. Why this criterion rather than TeaCache's or
MagCache's: those predict the output change from the timestep-modulated input through a polynomial
or a magnitude curve fitted offline per model, so every new model (or fine-tune) needs a calibration
run; the first-block residual is measured on the actual features of the current call, costs one
block in N, and needs no calibration. Its weakness is the fixed price of that first block (1/N of a
step, with N = 8 blocks in the embedded model, 30 in Wan2.1-1.3B).

The denoiser must expose its stages (`VideoDiT` and `BoxedDiT` do): ``prepare(x, t, cond) ->
(h, ctx)``, ``run_block(i, h, ctx) -> h`` for i in range(``num_blocks``), ``finish(h, ctx) -> out``.
Module calls stay intact (hooks, LoRA, quantization see every call). A cache holds state for one
sampling pass: make a new one (`StepCache.wrap`) per pass; a change of input shape or batch resets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from tubelet.diffusion.cond import Cond
from tubelet.errors import ConfigError


@dataclass
class StepCache:
    """Settings of the first-block residual cache.

    threshold: the relative change of the first block's residual since the last full step below
        which a step reuses the rest of the model from that step (0 never skips).
    warmup: the first steps of a pass always run the whole model (the coarse layout forms there).
    max_skips: at most this many steps in a row reuse the same full step (0: no limit).
    """

    threshold: float = 0.15
    warmup: int = 1
    max_skips: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ConfigError(f"step cache threshold must be a number, got {self.threshold!r}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"step cache threshold must be in [0, 1] (e.g. 0.15), got {self.threshold}")
        for name in ("warmup", "max_skips"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"step cache {name} must be an int >= 0, got {v!r}")

    @classmethod
    def of(cls, value: StepCache | float | dict[str, Any] | None) -> StepCache | None:
        """A `StepCache` from what users pass: None (off), a threshold, a mapping, or one itself."""
        if value is None or isinstance(value, StepCache):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"cache must be a threshold (e.g. 0.15) or a StepCache, got {value!r}")
        return cls(threshold=float(value))

    def wrap(self, model: Any) -> CachedDenoiser:
        """A callable ``(x, t, cond) -> out`` that runs `model` with this cache for one pass."""
        return CachedDenoiser(model, self)


@dataclass
class CacheStats:
    """What a pass did. Decisions are made per batch row, so a clip generated in a batch is the
    one generated alone: `rows_full` / `rows_skipped` count (row, call) pairs; `calls_full` the
    calls that ran the other blocks for at least one row (what the time follows), `calls_skipped`
    those that ran only the first block."""

    blocks: int = 1  # blocks of the denoiser
    calls_full: int = 0
    calls_skipped: int = 0
    rows_full: int = 0
    rows_skipped: int = 0
    row_full: list[list[bool]] = field(default_factory=list)  # per call: which batch rows ran every block

    @property
    def calls(self) -> int:
        return self.calls_full + self.calls_skipped

    @property
    def dit_work(self) -> float:
        """Denoiser work in full calls (a skipped call still runs its first block)."""
        return self.calls_full + self.calls_skipped / max(1, self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "calls_full": self.calls_full,
            "calls_skipped": self.calls_skipped,
            "rows_full": self.rows_full,
            "rows_skipped": self.rows_skipped,
            "dit_work": round(self.dit_work, 3),
        }


class CachedDenoiser:
    """`model` run through its stages with a first-block residual cache (see the module docstring).

    Every batch row keeps its own reference and decides on its own; a call runs the other blocks
    when any row needs them (the rows that skip then take their cached residual all the same, so
    each row's result does not depend on the batch it is in)."""

    def __init__(self, model: Any, cache: StepCache) -> None:
        for name in ("prepare", "run_block", "finish", "num_blocks"):
            if not hasattr(model, name):
                raise ConfigError(
                    f"{type(model).__name__} has no {name}: step caching needs a denoiser with stages "
                    "(prepare / run_block / finish / num_blocks), such as VideoDiT or BoxedDiT"
                )
        self.model, self.cache = model, cache
        self.stats = CacheStats(blocks=int(model.num_blocks))
        self._ref_r1: Tensor | None = None  # (B, ...) first-block residual of each row's last full call
        self._ref_rest: Tensor | None = None  # (B, ...) the other blocks' residual of that call
        self._in_a_row: Tensor | None = None  # (B,) calls each row has skipped since its last full one
        self._calls = 0

    def _reset(self, r1: Tensor) -> None:
        b = r1.shape[0]
        self._ref_r1 = self._ref_rest = None
        self._in_a_row = torch.zeros(b, dtype=torch.long, device=r1.device)

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        m, c, st = self.model, self.cache, self.stats
        h, ctx = m.prepare(x, t, cond)
        h1 = m.run_block(0, h, ctx)
        r1 = h1 - h
        self._calls += 1
        ref = self._ref_r1
        if ref is None or ref.shape != r1.shape:
            self._reset(r1)
            ref = None
        b = r1.shape[0]
        skip = torch.zeros(b, dtype=torch.bool, device=r1.device)
        if ref is not None and self._calls > c.warmup and c.threshold > 0:
            dims = tuple(range(1, r1.ndim))
            change = (r1 - ref).abs().float().mean(dims) / ref.abs().float().mean(dims).clamp_min(1e-12)
            skip = change < c.threshold
            if c.max_skips:
                assert self._in_a_row is not None
                skip &= self._in_a_row < c.max_skips
        assert self._in_a_row is not None
        n_skip = int(skip.sum())
        if n_skip == b:
            assert self._ref_rest is not None
            out = h1 + self._ref_rest
            st.calls_skipped += 1
        else:
            out = h1
            for i in range(1, m.num_blocks):
                out = m.run_block(i, out, ctx)
            rest = out - h1
            if n_skip:  # those rows keep their reference and take its residual, as alone
                assert self._ref_rest is not None
                keep = skip.view(b, *([1] * (rest.ndim - 1)))
                rest = torch.where(keep, self._ref_rest, rest)
                out = h1 + rest
                r1 = torch.where(keep, cast(Tensor, ref), r1)
            self._ref_r1, self._ref_rest = r1, rest
            st.calls_full += 1
        self._in_a_row = torch.where(skip, self._in_a_row + 1, torch.zeros_like(self._in_a_row))
        st.rows_skipped += n_skip
        st.rows_full += b - n_skip
        st.row_full.append([not k for k in skip.tolist()])
        return m.finish(out, ctx)
