"""The training loop: tiny runs, checkpoints, exact resume (with kill -9), NaN handling, VAE runs."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tubelet.errors import ConfigError, TubeletError
from tubelet.models.hub import load_safetensors
from tubelet.train import checkpoint as ckpt
from tubelet.train.config import TrainConfig, resolve_train_config
from tubelet.train.trainer import TrainingError, lr_at, train

ROOT = Path(__file__).resolve().parents[1]


def tiny(**overrides: object) -> TrainConfig:
    return resolve_train_config("tiny", overrides=dict(overrides))


def test_tiny_run_writes_the_run_folder(shapes_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny(max_steps=6, save_every=3, keep_last=1)
    res = train(cfg, shapes_data, run, progress=False)
    assert res.step == 6 and res.bad_steps == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    for r in lines:
        assert {"step", "loss", "lr", "samples_per_s"} <= set(r)
        assert math.isfinite(r["loss"]) and r["samples_per_s"] > 0
    # keep_last=1: only the final checkpoint is left, and no temporary dir.
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000006"]
    assert not list((run / "checkpoints").glob("*.tmp"))
    # The exported model is a pipeline directory that generates.
    from tubelet.pipelines import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(run / "model")
    out = pipe("a red circle moving right", seed=1, num_inference_steps=2, progress=False)
    assert out.frames.shape == (5, 16, 16, 3) and out.frames.dtype.name == "uint8"
    again = pipe("a red circle moving right", seed=1, num_inference_steps=2, progress=False)
    assert (out.frames == again.frames).all()
    assert list((run / "samples").glob("*.mp4"))


def test_shapes_text_encoder_trains_jointly_and_generates(shapes_data: Path, tmp_path: Path) -> None:
    from tubelet.pipelines import TextToVideoPipeline
    from tubelet.recipes.shapes.text import ShapesTextEncoder

    run = tmp_path / "run"
    train(tiny(max_steps=3, save_every=0, text_encoder="shapes-tiny"), shapes_data, run, progress=False)
    pipe = TextToVideoPipeline.from_pretrained(run / "model")
    assert isinstance(pipe.text_encoder, ShapesTextEncoder)
    en = pipe("a red circle moving right", seed=1, num_inference_steps=2, progress=False)
    zh = pipe("一个红色圆形向右移动", seed=1, num_inference_steps=2, progress=False)
    assert (en.frames == zh.frames).all()  # one prompt in two languages: the same clip
    with pytest.raises(TubeletError, match="unknown word 'cat'"):
        pipe("a red cat moving right", seed=1, num_inference_steps=2, progress=False)
    with pytest.raises(ConfigError, match=r"unknown text_encoder preset 'nope'.*'shapes'"):
        train(tiny(max_steps=1, text_encoder="nope"), shapes_data, tmp_path / "bad", progress=False)


def test_gradient_accumulation_runs(shapes_data: Path, tmp_path: Path) -> None:
    res = train(tiny(max_steps=2, grad_accum=2, save_every=0), shapes_data, tmp_path / "acc", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "acc" / "metrics.jsonl").read_text().splitlines()]
    assert res.step == 2 and len(lines) == 2 and all(math.isfinite(r["loss"]) for r in lines)


def test_existing_run_needs_resume(shapes_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(max_steps=2, save_every=0), shapes_data, run, progress=False)
    with pytest.raises(TubeletError, match="--resume"):
        train(tiny(max_steps=4), shapes_data, run, progress=False)


def test_lr_schedule() -> None:
    cfg = tiny(
        max_steps=100, optim={"lr": 1.0, "warmup_steps": 10, "schedule": "cosine", "min_lr_ratio": 0.1}
    )
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)


def test_yaml_unknown_key_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("task: dit\noptim:\n  lr: 1e-3\n  lrr: 2\n")
    with pytest.raises(ConfigError, match="lrr"):
        resolve_train_config(config_file=f)
    f.write_text("max_steps: 7\ndata:\n  buckets: [[5, 16, 16, 2]]\n  num_workers: 0\n")
    cfg = resolve_train_config("tiny", f)
    assert cfg.max_steps == 7 and cfg.data.buckets[0].batch_size == 2
    with pytest.raises(ConfigError, match="unknown training preset"):
        resolve_train_config("nope")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    last = ckpt.latest_checkpoint(run)
    assert last is not None
    return load_safetensors(last / "model.safetensors")


def test_resume_after_kill_9_is_exact(shapes_data: Path, tmp_path: Path) -> None:
    """An uninterrupted run == the same run killed with SIGKILL after a checkpoint, then resumed."""
    n, total = 3, 12
    straight = tmp_path / "straight"
    train(tiny(max_steps=total, save_every=n), shapes_data, straight, progress=False)

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tubelet", "train", "--preset", "tiny", "--data", str(shapes_data)]
    cmd += ["--out", str(killed), "--max-steps", str(total), "--save-every", str(n), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and ckpt.latest_checkpoint(killed) is None:
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = [int(p.name[5:]) for p in ckpt.list_checkpoints(killed)]
    assert done and max(done) < total, f"the run finished before the kill ({done})"

    res = train(tiny(max_steps=total, save_every=n), shapes_data, killed, resume=True, progress=False)
    assert res.step == total
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_safetensors(ckpt.latest_checkpoint(straight) / "ema.safetensors")
    ema_b = load_safetensors(ckpt.latest_checkpoint(killed) / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_resume_is_exact(
    sig: signal.Signals, shapes_data: Path, tmp_path: Path
) -> None:
    """SIGTERM / Ctrl-C: the step in flight finishes, a checkpoint is saved, exit is non-zero with a
    message; resuming then ends with the same weights as an uninterrupted run."""
    total = 400  # far more than the test waits for: the signal arrives mid-run
    stopped = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "tubelet", "train", "--preset", "tiny", "--data", str(shapes_data)]
    cmd += ["--out", str(stopped), "--max-steps", str(total), "--save-every", "1000", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = stopped / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode not in (0, -sig), err.decode()[-2000:]
    assert "stopped by a signal at step" in err.decode() and "--resume" in err.decode()
    saved = [int(p.name[5:]) for p in ckpt.list_checkpoints(stopped)]
    assert len(saved) == 1 and 3 <= saved[0] < total  # saved by the signal, not by save_every

    n = saved[0] + 2
    res = train(tiny(max_steps=n, save_every=1000), shapes_data, stopped, resume=True, progress=False)
    assert res.step == n
    straight = tmp_path / "straight"
    train(tiny(max_steps=n, save_every=1000), shapes_data, straight, progress=False)
    a, b = _weights(straight), _weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_half_written_checkpoint_is_ignored(shapes_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(max_steps=2, save_every=0), shapes_data, run, progress=False)
    # A killed save leaves a .tmp dir (and maybe a dir without trainer.json): neither is loaded.
    (run / "checkpoints" / "step-0000009.tmp").mkdir()
    (run / "checkpoints" / "step-0000008").mkdir()
    assert ckpt.latest_checkpoint(run).name == "step-0000002"
    res = train(tiny(max_steps=3, save_every=0), shapes_data, run, resume=True, progress=False)
    assert res.step == 3


def test_nan_losses_stop_the_run_with_last_checkpoint_intact(
    shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tubelet.train import tasks

    original = tasks.DiTTask.loss
    calls = {"n": 0}

    def flaky(self, wrapped, batch, generator):  # type: ignore[no-untyped-def]
        loss, stats = original(self, wrapped, batch, generator)
        calls["n"] += 1
        if calls["n"] == 2 or calls["n"] > 4:  # one isolated NaN, later NaN forever
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(tasks.DiTTask, "loss", flaky)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="NaN/inf for 3 steps") as info:
        train(tiny(max_steps=50, save_every=2, max_bad_steps=3), shapes_data, run, progress=False)
    assert "step-0000002" in str(info.value)
    last = ckpt.latest_checkpoint(run)
    assert last is not None and last.name == "step-0000002"
    for v in load_safetensors(last / "model.safetensors").values():
        assert torch.isfinite(v).all()
    state = json.loads((last / "trainer.json").read_text())
    assert state["bad_steps"] == 1


def test_vae_run_exports_a_vae_with_latent_stats(shapes_data: Path, tmp_path: Path) -> None:
    from tubelet.models.vae import CausalVideoVAE

    run = tmp_path / "vae"
    res = train(
        resolve_train_config("tiny-vae", overrides={"max_steps": 3}), shapes_data, run, progress=False
    )
    vae = CausalVideoVAE.from_pretrained(res.model_dir)
    assert vae.config.latents_mean is not None and len(vae.config.latents_std) == vae.config.z_dim
    rec = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("rec" in r and "kl" in r for r in rec)


def test_vae_foreground_weight_reweights_object_pixels() -> None:
    """recon_foreground_weight: pixels off the clip's dominant colour count 1 + w times, and each
    sample is normalised by its total weight (a hand-computed L1 on a 2-pixel object)."""
    from tubelet.train.tasks import VAETask

    video = torch.full((1, 3, 1, 4, 4), -1.0)
    video[..., 0, :2] = 1.0  # a 2-pixel "object" on a black frame
    recon = video.clone()
    recon[..., 0, 0] = 0.0  # error 1 on one object pixel (3 channels)
    recon[..., 3, 3] = -0.5  # error 0.5 on one background pixel

    class Fixed(torch.nn.Module):
        def forward(self, x, sample_posterior=False, generator=None):
            z = torch.zeros(1, 16, 1, 1, 1)
            return recon, z, z

    for w, expected in ((0.0, (3 * 1.0 + 3 * 0.5) / 48), (9.0, (10 * 3 * 1.0 + 3 * 0.5) / ((14 + 20) * 3))):
        task = VAETask(
            resolve_train_config("tiny-vae", overrides={"recon_foreground_weight": w}), torch.device("cpu")
        )
        _, logs = task.loss(Fixed(), {"video": video}, torch.Generator())
        assert logs["rec"].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="recon_foreground_weight"):
        resolve_train_config("tiny-vae", overrides={"recon_foreground_weight": -1})


def test_foreground_weights_mark_pixels_off_the_dominant_colour() -> None:
    """The VAE's loss weights (moved here from the flow objective): pixels that differ from the
    clip's per-channel median by more than 0.1 in any channel count 1 + w; a flat clip is all 1."""
    from tubelet.train.tasks import foreground_weights

    x0 = torch.full((2, 3, 2, 8, 8), -0.5)
    x0[0, 0, :, 2:4, 2:4] = 0.8  # a small red-ish square in clip 0; clip 1 is flat
    wts = foreground_weights(x0, 9.0)
    assert wts.shape == (2, 1, 2, 8, 8)
    assert wts[0, 0, :, 2:4, 2:4].eq(10.0).all() and wts[0].sum() == 2 * (60 + 4 * 10)
    assert wts[1].eq(1.0).all()
    assert foreground_weights(x0, 0.0).eq(1.0).all()
    near = x0.clone()
    near[0, 1, :, 5, 5] += 0.05  # within the threshold: background
    assert torch.equal(foreground_weights(near, 9.0), wts)


def test_latent_cache_feeds_training(shapes_data: Path, tmp_path: Path) -> None:
    from tubelet.data.cache import LatentCacheDataset, build_cache

    vae_run = tmp_path / "vae"
    train(resolve_train_config("tiny-vae", overrides={"max_steps": 2}), shapes_data, vae_run, progress=False)
    cfg = tiny(max_steps=2, vae_path=str(vae_run / "model"))
    cache = build_cache(shapes_data, vae_run / "model", tmp_path / "cache", data=cfg.data, progress=False)
    ds = LatentCacheDataset(cache, cfg.data)
    assert len(ds) == 8 and ds[0]["latents"].shape == (16, 2, 2, 2)
    # Decoding in worker processes and encoding in batches of 3 (a partial last batch) changes nothing.
    par = build_cache(
        shapes_data, vae_run / "model", tmp_path / "cache2", data=cfg.data, workers=2, batch_size=3,
        progress=False,
    )  # fmt: skip
    ds2 = LatentCacheDataset(par, cfg.data)
    by_path = {ds2.samples[k]["path"]: ds2[k]["latents"] for k in range(len(ds2))}
    assert len(by_path) == 8
    for k in range(len(ds)):
        torch.testing.assert_close(by_path[ds[k]["path"]], ds[k]["latents"], atol=2e-3, rtol=0)
    res = train(
        tiny(max_steps=2, vae_path=str(vae_run / "model"), cache=str(cache)),
        None,
        tmp_path / "r",
        progress=False,
    )
    assert res.step == 2
    assert (tmp_path / "r" / "model" / "vae" / "config.json").is_file()


def test_export_checkpoint_matches_the_runs_own_export(shapes_data: Path, tmp_path: Path) -> None:
    from tubelet.cli import main
    from tubelet.train.trainer import export_checkpoint

    run = tmp_path / "run"
    train(tiny(max_steps=4, save_every=2, keep_last=2), shapes_data, run, progress=False)
    # The last checkpoint's EMA weights are what the run exported at its end.
    out = export_checkpoint(run, tmp_path / "exp")
    for sub in ("transformer", "text_encoder"):
        a = load_safetensors(run / "model" / sub / "model.safetensors")
        b = load_safetensors(out / sub / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    # An earlier step, raw weights, stored in float16 (half the bytes); the directory generates.
    half = export_checkpoint(run, tmp_path / "half", step=2, use_ema=False, dtype=torch.float16)
    w = load_safetensors(half / "transformer" / "model.safetensors")
    assert all(v.dtype == torch.float16 for v in w.values())
    from tubelet.pipelines import TextToVideoPipeline

    loaded = TextToVideoPipeline.from_pretrained(half)
    assert next(loaded.transformer.parameters()).dtype == torch.float32  # float16 is storage only on a CPU
    res = loaded("a red circle moving right", seed=0, num_inference_steps=2, progress=False)
    assert res.frames.shape == (5, 16, 16, 3)
    with pytest.raises(TubeletError, match="no checkpoint at step 3"):
        export_checkpoint(run, tmp_path / "x", step=3)
    with pytest.raises(TubeletError, match="not a training run"):
        export_checkpoint(tmp_path / "nowhere", tmp_path / "x")
    # The CLI: the path printed; a bad dtype is one clear error and exit status 1.
    with pytest.raises(SystemExit) as ok:
        main(["export", str(run), "-o", str(tmp_path / "cli"), "--step", "2"])
    assert ok.value.code == 0 and (tmp_path / "cli" / "transformer" / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as bad:
        main(["export", str(run), "-o", str(tmp_path / "cli2"), "--dtype", "int8"])
    assert bad.value.code == 1 and not (tmp_path / "cli2").exists()


def test_init_from_a_float16_export_fine_tunes_in_float32(shapes_data: Path, tmp_path: Path) -> None:
    """init_from an exported float16 model: training starts from exactly its weights (as float32)."""
    from tubelet.train.tasks import build_task
    from tubelet.train.trainer import export_checkpoint

    run = tmp_path / "run"
    train(tiny(max_steps=2, save_every=2, text_encoder="shapes-tiny"), shapes_data, run, progress=False)
    half = export_checkpoint(run, tmp_path / "half", dtype=torch.float16)
    cfg = tiny(max_steps=2, save_every=0, text_encoder="shapes-tiny", init_from=str(half))
    task = build_task(cfg, torch.device("cpu"))
    stored = load_safetensors(half / "transformer" / "model.safetensors")
    for k, v in task.model.dit.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, stored[k].float()), k
    text = load_safetensors(half / "text_encoder" / "model.safetensors")
    assert all(torch.equal(v, text[k].float()) for k, v in task.model.text.state_dict().items())
    res = train(cfg, shapes_data, tmp_path / "ft", progress=False)
    assert res.step == 2 and res.bad_steps == 0


def test_pixel_cache_holds_the_decoded_clips_and_feeds_training(shapes_data: Path, tmp_path: Path) -> None:
    """`tubelet data cache --pixels`: uint8 clips equal to what the dataset decodes, built by worker
    processes; a pixel-space run trains on it; without --model or --pixels the command is an error."""
    from tubelet.cli import main
    from tubelet.data.cache import LatentCacheDataset
    from tubelet.data.dataset import VideoDataset

    cfg = tiny(max_steps=3, save_every=1000)
    cache = tmp_path / "cache"
    cmd = ["data", "cache", str(shapes_data), "--pixels", "--workers", "2", "--preset", "tiny"]
    with pytest.raises(SystemExit) as ok:
        main([*cmd, "--out", str(cache)])
    assert ok.value.code == 0
    ds = LatentCacheDataset(cache, cfg.data)
    videos = VideoDataset(shapes_data, cfg.data, progress=False)
    assert len(ds) == len(videos) == 8
    for k in range(len(ds)):
        item = ds[k]
        assert item["pixels"].dtype == torch.uint8 and item["pixels"].shape == (3, 5, 16, 16)
        ref = videos.load(videos.samples.index(next(s for s in videos.samples if s.path == item["path"])))
        assert torch.equal(item["pixels"].float() / 127.5 - 1.0, ref["video"])

    res = train(tiny(max_steps=3, save_every=1000, cache=str(cache)), None, tmp_path / "r", progress=False)
    assert res.step == 3 and (tmp_path / "r" / "model" / "transformer").is_dir()

    with pytest.raises(SystemExit) as e:
        main(["data", "cache", str(shapes_data), "--out", str(tmp_path / "c2")])
    assert e.value.code == 1


def test_cache_device_errors_are_clear(
    shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tubelet data cache --device`: an unknown device, or CUDA on a torch without one, is one clear
    error with exit status 1 and no cache written."""
    from tubelet.cli import main

    bad = ["foo"] + ([] if torch.cuda.is_available() else ["cuda"])
    for dev in bad:
        out = tmp_path / f"cache-{dev}"
        with pytest.raises(SystemExit) as exit_:
            main(["data", "cache", str(shapes_data), "--model", str(ROOT / "tubelet/assets/shapes-t2v"),
                  "--out", str(out), "--device", dev])  # fmt: skip
        assert exit_.value.code == 1 and not out.exists()
        assert f"device '{dev}'" in capsys.readouterr().err


@pytest.mark.parametrize("sharded", [False, True], ids=["files", "dcp"])
def test_checkpoint_holds_only_the_trainable_state(tmp_path: Path, sharded: bool) -> None:
    """Frozen parameters (e.g. a LoRA run's base) are not written to a checkpoint; resuming rebuilds
    them from the run's config and restores the trainable ones and the optimizer exactly. The same
    for a sharded (torch.distributed.checkpoint) checkpoint."""
    from torch import nn

    from tubelet.train.parallel import DistInfo

    def build() -> nn.Module:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        m[0].requires_grad_(False)  # the "base"
        return m

    model = build()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optim.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        optim.step()
    gen = torch.Generator().manual_seed(1)
    info = DistInfo()
    path = ckpt.save_checkpoint(
        tmp_path, 3, info=info, model=model, optim=optim, ema=None,
        trainer_state={"step": 3}, generator=gen, keep_last=2, sharded=sharded,
    )  # fmt: skip
    if sharded:
        assert ckpt.is_sharded(path) and not (path / "model.safetensors").exists()
        saved = ckpt.read_sharded_weights(path, model, use_ema=False)
    else:
        saved = load_safetensors(path / "model.safetensors")
    assert set(saved) == {"1.weight", "1.bias", "2.weight", "2.bias"}
    state = json.loads((path / "trainer.json").read_text())
    assert state["frozen_parameters"] == ["0.bias", "0.weight"]

    fresh = build()  # the base comes from the "config" (same seed), the rest from the checkpoint
    with torch.no_grad():
        fresh[2].weight.zero_()
    fresh_optim = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    ckpt.load_checkpoint(path, info=info, model=fresh, optim=fresh_optim, generator=torch.Generator())
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(5, 4)
    for m, o in ((model, optim), (fresh, fresh_optim)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)

    wrong = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2), nn.Linear(2, 2))
    wrong[0].requires_grad_(False)
    with pytest.raises(ckpt.CheckpointError, match=r"does not match this run.s model|cannot be restored"):
        ckpt.load_checkpoint(
            path, info=info, model=wrong, optim=torch.optim.AdamW(wrong[1:].parameters()), generator=gen
        )
