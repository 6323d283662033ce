"""Step caching (`tubelet.diffusion.step_cache`): exact when nothing is skipped, per-row decisions
(a batched clip makes the decisions it makes alone), the stats in the metadata, and the errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tubelet.diffusion.cond import Boxes, Cond
from tubelet.diffusion.step_cache import StepCache
from tubelet.errors import ConfigError, TubeletError
from tubelet.models.box_adapter import BoxAdapter, BoxAdapterConfig, BoxedDiT
from tubelet.models.dit import DIT_PRESETS, VideoDiT
from tubelet.pipelines import GenerationRequest, TextToVideoPipeline
from tubelet.pipelines.request import RequestError

PROMPT = "a red circle moving right"


def _dit() -> VideoDiT:
    torch.manual_seed(0)
    dit = VideoDiT(DIT_PRESETS["tiny"]).eval()
    dit.init_weights(zero_head=False)
    return dit


def _staged(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
    h, ctx = model.prepare(x, t, cond)  # type: ignore[operator]
    for i in range(model.num_blocks):  # type: ignore[arg-type]
        h = model.run_block(i, h, ctx)  # type: ignore[operator]
    return model.finish(h, ctx)  # type: ignore[operator]


def test_stages_compose_to_forward() -> None:
    dit = _dit()
    x, t = torch.randn(2, dit.config.in_channels, 3, 8, 8), torch.tensor([900.0, 100.0])
    cond = Cond(context=torch.randn(2, 5, dit.config.text_dim))
    with torch.no_grad():
        assert torch.equal(_staged(dit, x, t, cond), dit(x, t, cond))
        boxed = BoxedDiT(dit, BoxAdapter(BoxAdapterConfig.for_dit(dit.config, attention=True))).eval()
        for layer in boxed.adapter.layers:
            layer.gate.fill_(0.3)
        g = torch.Generator().manual_seed(1)
        xy = torch.rand(2, 1, 3, 4, generator=g).sort(-1).values
        boxes = Boxes(
            xy, torch.ones(2, 1, 3, dtype=torch.bool), torch.tensor([[True]] * 2), torch.tensor([[0]] * 2)
        )
        bc = cond.replace(boxes=boxes)
        assert torch.equal(_staged(boxed, x, t, bc), boxed(x, t, bc))
        assert not torch.equal(boxed(x, t, bc), dit(x, t, cond))  # the boxes did act


class _Toy(nn.Module):
    """A staged denoiser whose blocks add constants: the first block's residual never changes."""

    num_blocks = 4

    def __init__(self) -> None:
        super().__init__()
        self.calls = [0] * self.num_blocks

    def prepare(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> tuple[torch.Tensor, None]:
        return x * 1.0, None

    def run_block(self, i: int, h: torch.Tensor, ctx: None) -> torch.Tensor:
        self.calls[i] += 1
        return h + (i + 1)

    def finish(self, h: torch.Tensor, ctx: None) -> torch.Tensor:
        return h


def test_skipped_steps_reuse_the_rest_and_count() -> None:
    toy = _Toy()
    cached = StepCache(threshold=0.05, warmup=2, max_skips=3).wrap(toy)
    cond = Cond(context=torch.zeros(1, 1, 1))
    for k in range(10):
        x = torch.full((2, 3), float(k))
        assert torch.equal(cached(x, torch.zeros(2), cond), x + 10)  # exact: the residuals are constant
    st = cached.stats
    # calls 1-2 warm up; then at most 3 skips in a row: full, skip x3, full, skip x3
    assert [all(r) for r in st.row_full] == [True, True, False, False, False, True, False, False, False, True]
    assert (st.calls_full, st.calls_skipped, st.rows_full, st.rows_skipped) == (4, 6, 8, 12)
    assert toy.calls == [10, 4, 4, 4]
    assert st.dit_work == pytest.approx(4 + 6 / 4)
    again = StepCache(threshold=0.0).wrap(_Toy())  # threshold 0 never skips
    for _ in range(3):
        again(torch.ones(1, 3), torch.zeros(1), cond)
    assert again.stats.calls_full == 3


def test_cache_needs_a_staged_denoiser_and_valid_settings() -> None:
    with pytest.raises(ConfigError, match="has no prepare"):
        StepCache().wrap(nn.Linear(2, 2))
    for bad in (-0.1, 1.5, "fast", True):
        with pytest.raises(ConfigError, match="threshold"):
            StepCache.of(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="warmup"):
        StepCache(warmup=-1)
    assert StepCache.of(None) is None and StepCache.of(0.1) == StepCache(threshold=0.1)
    with pytest.raises(RequestError, match="cache must be a threshold"):
        GenerationRequest(PROMPT, cache=3.0).validate()


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> TextToVideoPipeline:
    return TextToVideoPipeline.from_pretrained(tiny_model_dir)


def test_threshold_zero_is_exact_and_the_metadata_counts(pipe: TextToVideoPipeline) -> None:
    kw = {"seed": 3, "num_inference_steps": 6, "progress": False}
    plain = pipe(PROMPT, **kw)
    zero = pipe(PROMPT, cache=0.0, **kw)
    assert np.array_equal(plain.frames, zero.frames) and "cache" not in plain.metadata
    assert zero.metadata["cache"] == {
        "threshold": 0.0,
        "warmup": 1,
        "max_skips": 0,
        "calls": 6,
        "full_calls": 6,
    }
    loose = pipe(PROMPT, cache=1.0, **kw)  # every step after the warm-up reuses the first one
    assert loose.metadata["cache"]["full_calls"] == 1 and loose.metadata["cache"]["calls"] == 6
    assert not np.array_equal(loose.frames, plain.frames)


def test_batched_clips_equal_clips_alone(pipe: TextToVideoPipeline) -> None:
    prompts = [PROMPT, "a blue square moving up on a white background"]
    kw = {"num_inference_steps": 8, "progress": False, "cache": 0.2}
    both = pipe(prompts, seed=[5, 6], **kw)
    for p, s, res in zip(prompts, [5, 6], both):
        alone = pipe(p, seed=s, **kw)
        assert alone.metadata["cache"] == res.metadata["cache"]  # the same decisions, row by row
        assert 0 < res.metadata["cache"]["full_calls"] < 8
        # as without a cache: equal up to the batched matmuls' rounding (test_pipeline)
        assert torch.allclose(alone.latents, res.latents, atol=1e-4), p


def test_generate_request_and_cli_carry_the_cache(
    pipe: TextToVideoPipeline, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tubelet.cli import main
    from tubelet.media import read_metadata

    res = pipe.generate(GenerationRequest(PROMPT, seed=1, num_inference_steps=4, cache=0.5), progress=False)
    assert res.metadata["cache"]["calls"] == 4 and res.metadata["request"]["cache"] == 0.5
    out = tmp_path / "c.mp4"
    with pytest.raises(SystemExit) as e:
        main(["generate", PROMPT, "--model", str(tiny_model_dir), "--steps", "4", "--seed", "1", "--cache", "0.5",
              "--device", "cpu", "--no-progress", "--out", str(out)])  # fmt: skip
    assert e.value.code in (0, None)
    meta = read_metadata(out)
    assert meta["cache"] == res.metadata["cache"] and meta["frames_sha256"]
    with pytest.raises(SystemExit) as e:
        main(["generate", PROMPT, "--model", str(tiny_model_dir), "--cache", "2", "--no-progress"])
    assert e.value.code == 1
    with pytest.raises(TubeletError, match="no stages"):
        TextToVideoPipeline(nn.Linear(2, 2), pipe.text_encoder, pipe.vae, pipe.config)(PROMPT, cache=0.1)
    assert json.loads(json.dumps(res.metadata["cache"])) == res.metadata["cache"]
    assert dataclasses.asdict(StepCache(0.1))["threshold"] == 0.1
