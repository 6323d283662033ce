"""Quantization (tubelet.kernels.quant, torchao) and compile: bounded error against the float model on
the same inputs, hooks and LoRA on quantized layers, the CLI switches and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import one_thread_impl, random_lora_file

from tubelet.pipelines import load_pipeline

one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_impl)
pytest.importorskip("torchao")


def _latents(pipe, **kw):  # type: ignore[no-untyped-def]
    return pipe("a red circle", seed=3, progress=False, **kw).latents


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantized_dit_is_close_to_float(tiny_model_dir: Path, mode: str) -> None:
    from tubelet.diffusion.cond import Cond

    ref_pipe = load_pipeline(tiny_model_dir, device="cpu")
    pipe = load_pipeline(tiny_model_dir, device="cpu").quantize(mode)
    q = pipe.quantized
    # 7 linears a block: qkv, out; q, kv, out; fc1, fc2
    assert q is not None and q["mode"] == mode and q["layers"] == 7 * len(pipe.transformer.blocks)
    w = pipe.transformer.blocks[0].self_attn.qkv.weight
    assert type(w).__name__ != "Parameter"  # a torchao tensor
    assert pipe.transformer.patch_embed.weight.dtype == torch.float32  # outside the blocks: untouched
    # one DiT call on the same inputs: the error is a small fraction of the output
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, pipe.transformer.config.in_channels, 3, 4, 4, generator=g)
    ctx, m = ref_pipe.encode_prompts(["a red circle", "two squares"])
    cond = Cond(context=ctx, context_mask=m)
    t = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        a, b = ref_pipe.transformer(x, t, cond), pipe.transformer(x, t, cond)
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < (0.02 if mode == "int8" else 0.08), rel
    # the whole clip stays close too
    za, zb = _latents(ref_pipe), _latents(pipe)
    assert ((za - zb).norm() / za.norm()).item() < (0.05 if mode == "int8" else 0.15)
    with pytest.raises(Exception, match="quantized already"):
        pipe.quantize("int8")


def test_lora_on_a_quantized_dit_and_fuse_refused(tiny_model_dir: Path, tmp_path: Path) -> None:

    lora = random_lora_file(tiny_model_dir, tmp_path / "lora.safetensors")
    pipe = load_pipeline(tiny_model_dir, device="cpu").quantize("int8")
    base = _latents(pipe)
    pipe.load_lora(lora)
    with_lora = _latents(pipe)
    assert not torch.equal(base, with_lora)  # the LoRA acts on top of the quantized layer
    slot = pipe.transformer.blocks[0].self_attn.qkv.lora
    assert all(type(p) is torch.nn.Parameter for p in slot.parameters())  # LoRA layers not quantized
    with pytest.raises(Exception, match="quantized"):
        pipe.fuse_lora()
    pipe.unload_lora()
    assert torch.equal(_latents(pipe), base)


@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
def test_compile_matches_eager(tiny_model_dir: Path) -> None:
    ref = _latents(load_pipeline(tiny_model_dir, device="cpu"))
    pipe = load_pipeline(tiny_model_dir, device="cpu").enable_compile()
    out = _latents(pipe)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
    with pytest.raises(Exception, match="block offload"):
        pipe.enable_offload("blocks", "cpu")


def test_cli_quantize_and_errors(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tubelet.cli import main

    out = tmp_path / "q.mp4"
    with pytest.raises(SystemExit) as e:
        main(["generate", "a red circle", "--model", str(tiny_model_dir), "--device", "cpu", "--quantize", "int8",
              "--no-progress", "--out", str(out)])  # fmt: skip
    assert e.value.code == 0
    capsys.readouterr()
    meta = json.loads(out.with_suffix(".mp4.json").read_text())
    assert meta["quantize"]["mode"] == "int8" and meta["quantize"]["method"] == "Int8WeightOnlyConfig"
    for args, message in (
        (["--quantize", "int4"], "--quantize must be one of int8, fp8"),
        (["--compile", "--offload", "blocks"], "--compile does not combine with --offload blocks"),
    ):
        with pytest.raises(SystemExit) as e:  # refused before the model loads
            main(["generate", "x", "--model", str(tmp_path / "none"), *args])
        assert e.value.code == 1 and message in capsys.readouterr().err


def test_cli_dtype_bfloat16(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tubelet.cli import main

    out = tmp_path / "bf16.mp4"
    with pytest.raises(SystemExit) as e:
        main(["generate", "a red circle", "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "bfloat16",
              "--no-progress", "--out", str(out)])  # fmt: skip
    assert e.value.code == 0
    assert json.loads(out.with_suffix(".mp4.json").read_text())["dtype"] == "bfloat16"
    pipe = load_pipeline(tiny_model_dir, device="cpu", dtype=torch.bfloat16)
    assert pipe.transformer.blocks[0].ffn.fc1.weight.dtype == torch.bfloat16  # stored so: half the memory
    assert pipe.vae.encoder is not None and next(pipe.vae.parameters()).dtype == torch.float32
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["generate", "x", "--model", str(tmp_path / "none"), "--dtype", "int3"])
    assert e.value.code == 1 and "--dtype must be auto, float32, bfloat16, float16" in capsys.readouterr().err
