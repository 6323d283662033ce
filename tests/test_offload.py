"""Offload (tubelet.pipelines.offload): exact outputs, the load/prefetch/drop schedule, LoRA and the
step cache on an offloaded model, the CLI switch. On a CPU the moves are no-ops; the schedule is read
from the hooks' event log. A CUDA test measures that block offload holds fewer weights on the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import one_thread_impl, random_lora_file

from tubelet.pipelines import load_pipeline
from tubelet.pipelines.offload import BlockOffload

one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_impl)


def _frames(pipe, **kw):  # type: ignore[no-untyped-def]
    return pipe("a red circle", seed=3, progress=False, **kw).frames


def test_model_offload_is_exact_and_uses_each_component_in_turn(tiny_model_dir: Path) -> None:
    ref = _frames(load_pipeline(tiny_model_dir, device="cpu"))
    pipe = load_pipeline(tiny_model_dir, device="cpu").enable_offload("model", "cpu")
    pipe._offload.events = []
    out = _frames(pipe)
    assert (out == ref).all()
    # text first, then the denoiser for every step (one move), then the VAE
    assert pipe._offload.events == ["text_encoder", "transformer", "vae"]
    assert pipe.device == torch.device("cpu")
    pipe.disable_offload()
    assert pipe.offload is None and (_frames(pipe) == ref).all()


def test_block_offload_schedule_prefetches_the_next_block_and_drops_each_after_use(
    tiny_model_dir: Path,
) -> None:
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    ref = _frames(pipe)
    pipe.enable_offload("blocks", "cpu", prefetch=1)
    bo: BlockOffload = pipe._block_offload
    bo.events = []
    out = _frames(pipe)
    assert (out == ref).all()
    n = len(pipe.transformer.blocks)
    ev = bo.events
    # every block becomes ready once per DiT call and is dropped right after it ran
    assert ev.count(("ready", 0)) == ev.count(("drop", 0)) > 0
    for i in range(n - 1):
        ready = ev.index(("ready", i))
        # the next block's copy is started before block i runs (prefetch), not after it finished
        assert ev.index(("load", i + 1)) < ev.index(("drop", i))
        assert ev.index(("load", i + 1)) > ready
    # the last block prefetches block 0 of the next call
    last = ev.index(("ready", n - 1))
    assert ("load", 0) in ev[last:]
    # at no time are more than 1 + prefetch blocks ready at once
    live, most = set(), 0
    for kind, i in ev:
        if kind == "ready":
            live.add(i)
        elif kind == "drop":
            live.discard(i)
        most = max(most, len(live))
    assert most == 1 and not bo.resident
    pipe.disable_offload()
    assert not pipe.transformer.blocks[0]._forward_pre_hooks  # hooks removed
    assert (_frames(pipe) == ref).all()


def test_block_offload_with_lora_and_step_cache_and_boxes(
    tiny_model_dir: Path, box_model: Path, tmp_path: Path
) -> None:
    # a LoRA loaded while offloaded is offloaded with its layer, and changes nothing numerically
    lora = random_lora_file(tiny_model_dir, tmp_path / "lora.safetensors")
    plain = load_pipeline(tiny_model_dir, device="cpu")
    plain.load_lora(lora)
    ref = _frames(plain, cache=0.2)
    pipe = load_pipeline(tiny_model_dir, device="cpu").enable_offload("blocks", "cpu")
    pipe.load_lora(lora)
    assert pipe.offload == "blocks" and pipe._block_offload is not None
    assert (_frames(pipe, cache=0.2) == ref).all()
    # box control: the adapter stays with the embeddings, the base's blocks stream
    boxes = [{"object": 0, "keyframes": [[0, 0.1, 0.1, 0.4, 0.4], [15, 0.6, 0.6, 0.9, 0.9]]}]
    b_ref = load_pipeline(box_model, device="cpu")(
        "a red circle moving right", seed=1, boxes=boxes, progress=False
    ).frames
    b_pipe = load_pipeline(box_model, device="cpu").enable_offload("blocks", "cpu")
    b_out = b_pipe("a red circle moving right", seed=1, boxes=boxes, progress=False).frames
    assert (b_out == b_ref).all()


def test_offload_cli(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from tubelet.cli import app

    runner = CliRunner()
    outs = {}
    for mode in (None, "model", "blocks"):
        out = tmp_path / f"{mode}.mp4"
        args = ["generate", "a red circle", "--model", str(tiny_model_dir), "--device", "cpu", "--seed", "2",
                "--out", str(out)]  # fmt: skip
        if mode:
            args += ["--offload", mode]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        meta = json.loads(out.with_suffix(".mp4.json").read_text())
        outs[mode] = meta["frames_sha256"]
        if mode:
            assert meta["offload"] == mode
            assert "nothing to offload to" in r.output  # a CPU run says offload saves nothing there
    assert outs[None] == outs["model"] == outs["blocks"]
    from tubelet.cli import main

    with pytest.raises(SystemExit) as e:  # refused before the model loads
        main(["generate", "x", "--model", str(tmp_path / "none"), "--offload", "layers"])
    assert e.value.code == 1 and "--offload must be one of model, blocks" in capsys.readouterr().err


def test_serve_runs_the_model_as_asked(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tubelet serve --offload blocks --dtype bfloat16`: the worker loads the model so (shown on
    /v1/models) and its clips say so; bad values are refused before the server starts."""
    import time

    from fastapi.testclient import TestClient

    from tubelet.cli import main
    from tubelet.serve.app import ServeConfig, create_app

    cfg = ServeConfig(model=str(tiny_model_dir), data_dir=tmp_path / "d", device="cpu", worker_threads=1,
                      runtime={"offload": "blocks", "dtype": "bfloat16"})  # fmt: skip
    with TestClient(create_app(cfg)) as c:
        end = time.monotonic() + 120
        while c.get("/healthz").json()["worker"] != "ready":
            assert time.monotonic() < end
            time.sleep(0.1)
        info = c.get("/v1/models").json()["data"][0]
        assert info["runtime"] == {"dtype": "bfloat16", "offload": "blocks"}, info
        job = c.post("/v1/videos", json={"prompt": "a red circle", "num_inference_steps": 1}).json()
        while (job := c.get(f"/v1/videos/{job['id']}").json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < end
            time.sleep(0.05)
        assert job["status"] == "completed", job
    for args, message in ((["--offload", "layers"], "--offload must be one of model, blocks"),
                          (["--dtype", "int3"], "--dtype must be auto")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(["serve", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "e"), *args])
        assert e.value.code == 1 and message in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_block_offload_on_cuda_holds_fewer_weights(tiny_model_dir: Path) -> None:
    ref = _frames(load_pipeline(tiny_model_dir, device="cuda"))
    pipe = load_pipeline(tiny_model_dir, device="cpu").enable_offload("blocks", "cuda")
    torch.cuda.reset_peak_memory_stats()
    out = _frames(pipe)
    assert (out == ref).all()
    assert pipe.transformer.blocks[0].self_attn.qkv.weight.device.type == "cpu"
