"""Wan2.2 A14B (two experts switched at a noise boundary): a tiny random diffusers WanPipeline with
transformer_2 + boundary_ratio, converted, makes the same clip as diffusers (each step routed to the
right expert, each expert with its own guidance scale), saves/loads, offloads exactly; bad sources
are clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_convert import PROMPTS, Z_DIM, make_transformer, make_vae

from tubelet.convert.wan import convert_wan
from tubelet.errors import ConversionError

BOUNDARY = 0.875


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from test_text import make_encoder, make_tokenizer

    root = tmp_path_factory.mktemp("wan22")
    tok = make_tokenizer(root / "parts" / "tokenizer")
    text_encoder = make_encoder(root / "parts" / "text_encoder", "umt5", len(tok))
    high, low = make_transformer(), make_transformer()
    with torch.no_grad():  # two different experts
        for p in low.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vae = make_vae()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    pipe = WanPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=high,
                       transformer_2=low, boundary_ratio=BOUNDARY)  # fmt: skip
    pipe.save_pretrained(str(root / "pipe"))
    dst = root / "tubelet"
    logs: list[str] = []
    convert_wan(root / "pipe", dst, dtype="float32", log=logs.append)
    return {"src": root / "pipe", "dst": dst, "pipe": pipe, "logs": logs}


def test_conversion_detects_two_experts(a14b):
    logs = "\n".join(a14b["logs"])
    assert "Wan2.2 A14B text-to-video (two experts, boundary_ratio 0.875)" in logs
    assert "[2/4] transformer_2 (low-noise expert)" in logs
    cfg = json.loads((a14b["dst"] / "config.json").read_text())
    assert cfg["boundary_ratio"] == BOUNDARY
    assert (a14b["dst"] / "transformer_2" / "config.json").is_file()


@pytest.mark.parametrize("g2", [None, 2.0], ids=["same-guidance", "own-guidance"])
def test_generation_matches_diffusers_with_two_experts(a14b, g2):
    import dataclasses

    from tubelet.models.experts import TwoExpertDiT
    from tubelet.pipelines import load_pipeline

    pipe = load_pipeline(a14b["dst"], device="cpu")
    assert isinstance(pipe.transformer, TwoExpertDiT) and pipe.transformer.boundary == 875.0
    pipe.config = dataclasses.replace(pipe.config, guidance_scale_2=g2)
    calls: list[str] = []
    pipe.transformer.high.register_forward_hook(lambda *a: calls.append("high"))
    pipe.transformer.low.register_forward_hook(lambda *a: calls.append("low"))
    settings = {"num_frames": 5, "height": 32, "width": 48, "num_inference_steps": 6, "guidance_scale": 4.0}
    got = pipe(PROMPTS[0], negative_prompt="blurry", seed=7, sampler="unipc", progress=False, **settings)
    # the noisy steps ran the high-noise expert, the rest the low-noise one: both ran, high first
    assert calls[0] == "high" and calls[-1] == "low" and calls == sorted(calls)
    assert got.metadata["boundary_ratio"] == BOUNDARY and got.metadata["guidance_scale_2"] == g2
    noise = torch.randn((1, Z_DIM, 2, 4, 6), generator=torch.Generator().manual_seed(7))
    ref = a14b["pipe"]
    with torch.no_grad():
        want = ref(PROMPTS[0], negative_prompt="blurry", latents=noise, output_type="np", guidance_scale_2=g2,
                   **settings).frames[0]  # fmt: skip
    diff = np.abs(got.frames.astype(np.float64) / 255.0 - want.astype(np.float64))
    assert diff.max() <= 1.0 / 255.0 + 1e-4, diff.max()
    if g2 is not None:  # the low-noise guidance matters: the same clip at one scale differs
        with torch.no_grad():
            other = ref(
                PROMPTS[0], negative_prompt="blurry", latents=noise, output_type="np", **settings
            ).frames[0]
        assert np.abs(other - want).max() > 2.0 / 255.0


def test_save_load_offload_and_refusals(a14b, tmp_path):
    from tubelet.pipelines import load_pipeline

    small = {
        "num_frames": 5,
        "height": 32,
        "width": 48,
        "num_inference_steps": 6,
        "seed": 3,
        "progress": False,
    }
    pipe = load_pipeline(a14b["dst"], device="cpu")
    ref = pipe(PROMPTS[1], **small).frames
    again = load_pipeline(pipe.save_pretrained(tmp_path / "saved"), device="cpu")
    assert (again(PROMPTS[1], **small).frames == ref).all()
    for mode in ("model", "blocks"):
        off = load_pipeline(a14b["dst"], device="cpu", offload=mode)
        if mode == "model":
            off._offload.events = []
        assert (off(PROMPTS[1], **small).frames == ref).all()
        if mode == "model":  # each expert brought in when its steps come
            assert off._offload.events == ["text_encoder", "transformer", "transformer_2", "vae"]
        else:
            assert len(off._block_offloads) == 3  # each expert's blocks and the umT5 encoder's
    with pytest.raises(Exception, match="LoRA on a two-expert model"):
        pipe.load_lora(tmp_path / "none.safetensors")
    with pytest.raises(Exception, match="no stages to cache"):
        pipe(PROMPTS[1], cache=0.1, **small)


def test_bad_two_expert_sources(a14b, tmp_path):
    src = tmp_path / "pipe"
    shutil.copytree(a14b["src"], src)
    index = json.loads((src / "model_index.json").read_text())
    bad = dict(index, boundary_ratio=1.5)
    (src / "model_index.json").write_text(json.dumps(bad))
    with pytest.raises(ConversionError, match=r"boundary_ratio in \[0, 1\], got 1.5"):
        convert_wan(src, tmp_path / "d", log=lambda m: None)
    (src / "model_index.json").write_text(json.dumps(dict(index, expand_timesteps=True)))
    with pytest.raises(ConversionError, match="TI2V-5B"):
        convert_wan(src, tmp_path / "d", log=lambda m: None)
    (src / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(src / "transformer_2")
    with pytest.raises(ConversionError, match="transformer_2/ folder is missing"):
        convert_wan(src, tmp_path / "d", log=lambda m: None)
    assert not (tmp_path / "d").exists()
