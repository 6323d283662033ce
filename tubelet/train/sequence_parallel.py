"""Multi-process inference of one clip: sequence parallelism (Ulysses) and CFG parallelism.

Launch with torchrun, e.g. ``torchrun --nproc_per_node 2 -m tubelet generate PROMPT``; every process
runs the same sampler on the same noise, and only the denoiser call is split. Both are applied from
outside the model, as wrappers around the denoiser that call its stages and modules:

* **sequence** (`SequenceParallel`, DeepSpeed-Ulysses): each process keeps 1/P of the video tokens
  (within every timestep group, so the per-group modulation still lines up) and runs every block on
  them. Self-attention needs all tokens: the registered attention backend ``"ulysses"`` swaps the
  token split for a head split with one all-to-all for q, k, v (each process then attends over
  the whole sequence with H/P heads) and one all-to-all back. RoPE is applied before that exchange
  with each token's own rotation, so the order tokens travel in does not matter. Cross-attention,
  the MLP and the modulation are per token and need no communication. The head runs on all tokens
  after an all-gather. Needs H % P == 0 and tokens per group % P == 0; a DiT with token convolutions
  (neighbours across the split) is refused.
* **cfg** (`BatchParallel`): classifier-free guidance makes one call on a batch of 2B rows
  (conditional + unconditional); with P = 2 each process computes one half and they all-gather.
  Works with every denoiser (box control, the step cache) since it only splits the batch.

Outputs equal one process's to float32 rounding (tests/test_sequence_parallel.py measures it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tubelet.errors import TubeletError, check_choice
from tubelet.models.layers import attention, register_attention_backend, set_attention_backend

PARALLEL_MODES = ("sequence", "cfg")
_GROUP: Any = None  # the process group the "ulysses" backend exchanges over (None: the default one)


def _a2a(x: Tensor, group: Any) -> Tensor:
    """all_to_all over dim 0 (one slice per process) of a contiguous tensor."""
    x = x.contiguous()
    out = torch.empty_like(x)  # contiguous like x (empty_like keeps a strided input's strides)
    dist.all_to_all_single(out, x, group=group)
    return out


def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention over the whole sequence from each process's share of it.

    q, k, v: (B, H, N/P, hd), this process's tokens -> (B, H, N/P, hd). In between: (B, H/P, N, hd),
    all tokens and this process's heads, attended with tubelet's default backend.
    """
    if mask is not None:
        raise TubeletError("sequence parallel attention takes no mask (self-attention only)")
    p = dist.get_world_size(_GROUP)
    b, h, n, d = q.shape

    def to_heads(x: Tensor) -> Tensor:  # (B, H, n, d) -> (B, H/P, P n, d): send head group r to rank r
        x = x.reshape(b, p, h // p, n, d).transpose(0, 1)  # (P, B, H/P, n, d)
        x = _a2a(x, _GROUP)  # [r] = rank r's tokens of my heads
        return x.permute(1, 2, 0, 3, 4).reshape(b, h // p, p * n, d)

    o = attention(to_heads(q), to_heads(k), to_heads(v), None, "auto")  # (B, H/P, P n, d)
    o = o.reshape(b, h // p, p, n, d).permute(2, 0, 1, 3, 4)  # (P, B, H/P, n, d): [r] = rank r's tokens
    o = _a2a(o, _GROUP)  # [r] = my tokens of rank r's heads
    return o.transpose(0, 1).reshape(b, h, n, d)


register_attention_backend("ulysses", ulysses_attention)


class SequenceParallel(nn.Module):
    """`dit` (a VideoDiT) with its tokens split over the processes of `group` (module doc)."""

    def __init__(self, dit: nn.Module, group: Any = None) -> None:
        super().__init__()
        from tubelet.models.dit import VideoDiT

        if not isinstance(dit, VideoDiT):
            raise TubeletError(
                f"sequence parallel runs a plain VideoDiT, not a {type(dit).__name__} "
                "(box control: use --parallel cfg)"
            )
        cfg = dit.config
        world = dist.get_world_size(group)
        if cfg.conv_kernel:
            raise TubeletError(
                "sequence parallel: this DiT has token convolutions (neighbours across processes); use --parallel cfg"
            )
        if cfg.num_heads % world:
            raise TubeletError(
                f"sequence parallel over {world} processes needs heads divisible by {world}; the DiT has {cfg.num_heads}"
            )
        global _GROUP
        _GROUP = group
        self.dit = dit
        self.group = group
        self.world = world
        self.rank = dist.get_rank(group)
        self.config = cfg
        # each self-attention module's backend, to restore; then every one exchanges over the group
        self._before = [
            (m, m.attention_backend) for m in dit.modules() if getattr(m, "attention_kind", None) == "self"
        ]
        set_attention_backend(dit, "ulysses", kind="self")

    def remove(self) -> None:
        """Put the DiT's self-attention back on the backends it had."""
        for m, name in self._before:
            m.attention_backend = name

    def forward(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        h, state = self.dit.embed(x, t, cond)  # (B, T, S, D): every process embeds all tokens (cheap)
        _, groups, s, _ = h.shape
        p, r = self.world, self.rank
        if s % p:
            raise TubeletError(
                f"sequence parallel over {p} processes: {s} tokens per frame group is not divisible by {p}"
            )
        part = s // p
        rope = state.rope.view(groups, s, *state.rope.shape[1:])[:, r * part : (r + 1) * part]
        local = replace(state, rope=rope.reshape(groups * part, *state.rope.shape[1:]))
        hl = h[:, :, r * part : (r + 1) * part].contiguous()  # (B, T, S/P, D)
        for i in range(self.dit.num_blocks):
            hl = self.dit.run_block(i, hl, local)
        parts = [torch.empty_like(hl) for _ in range(p)]
        dist.all_gather(parts, hl.contiguous(), group=self.group)
        return self.dit.head(torch.cat(parts, dim=2), state)


class BatchParallel(nn.Module):
    """`model(x, t, cond)` with the batch split over the processes of `group` (CFG parallelism)."""

    def __init__(self, model: Any, group: Any = None) -> None:
        super().__init__()
        self.model = model
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def forward(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        b = x.shape[0]
        if b % self.world:  # e.g. no guidance with 2 processes and one clip: nothing to split
            return self.model(x, t, cond)
        n = b // self.world
        rows = slice(self.rank * n, (self.rank + 1) * n)
        t = torch.as_tensor(t, device=x.device)
        out = self.model(x[rows], t[rows] if t.ndim else t, cond.rows(rows))
        parts = [torch.empty_like(out) for _ in range(self.world)]
        dist.all_gather(parts, out.contiguous(), group=self.group)
        return torch.cat(parts, dim=0)


def wrap_denoiser(model: Any, mode: str, group: Any = None) -> Any:
    """The denoiser `model` run over the processes of `group` in `mode` ("sequence" | "cfg")."""
    check_choice("parallel", mode, PARALLEL_MODES)
    return SequenceParallel(model, group) if mode == "sequence" else BatchParallel(model, group)
