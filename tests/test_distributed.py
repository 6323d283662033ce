"""torchrun on the CPU with 2 gloo processes: FSDP2/DDP match one process, and resume.

The data is bilingual (an English and a Chinese caption per clip) and clips start at a random frame:
which caption and start frame a clip gets is drawn from (seed, epoch, clip index), not from a
process's RNG, so it does not depend on the process count (see tubelet.data.dataset.SampleKey).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tubelet.models.hub import load_safetensors
from tubelet.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
# Same global batch: 1 process x 4 clips == 2 processes x 2 clips, in the same order (rank r takes
# slice r of every global batch). The objective's randomness is drawn for the global batch on every
# rank (see DiTTask.loss) and the data's per-sample draws from (seed, epoch, clip index), so the runs
# differ only by the order of floating-point reductions. Measured over 4 steps (2 epochs) in float32:
# losses within 1e-7 relative, weights within 2e-7 absolute (DDP and FSDP2); asserted with 100x room.
# (Before the per-sample draws were keyed, captions / start frames came from per-process RNGs and the
# losses differed by ~1e-3 relative on this data, the weights by 5e-3.)
# (Under bfloat16 autocast the per-process batch shape changes rounding: ~1e-4 relative per step.)
TOL = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tubelet.recipes.shapes import write_dataset

    out = tmp_path_factory.mktemp("dist") / "data"
    # 9-frame clips in a 5-frame bucket: random_start (on in _run) picks one of 5 start frames.
    write_dataset(out, 8, seed=3, frames=9, size=16, progress=False)
    # Bilingual: every clip is named twice, once in English and once in Chinese.
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    langs: dict[str, list[str]] = {}
    for x in lines:
        langs.setdefault(x["video"], []).append(x["lang"])
    assert len(langs) == 8 and all(sorted(v) == ["en", "zh"] for v in langs.values()), langs
    return out


def _run(data: Path, out: Path, nproc: int, batch: int, *extra: str) -> None:
    args = [
        "-m",
        "tubelet",
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
    ]
    args += ["--set", f"data.buckets=[[5, 16, 16, {batch}]]", "--set", "optim.warmup_steps=1"]
    args += ["--set", "data.random_start=true", "--set", "precision=fp32", *extra]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    env_cmd = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert env_cmd.returncode == 0, env_cmd.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _final(run: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(ckpt.latest_checkpoint(run) / "model.safetensors")


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_two_processes_match_one(data: Path, tmp_path: Path, mode: str) -> None:
    """Bilingual captions and random start frames: 2 processes x 2 == 1 process x 4, step by step."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run(data, one, 1, 4, "--max-steps", "4", "--save-every", "0")
    _run(data, two, 2, 2, "--max-steps", "4", "--save-every", "0", "--parallel", mode)
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):  # relative (the losses are ~1)
        assert abs(x - y) <= TOL * max(1.0, abs(x)), (a, b)
    wa, wb = _final(one), _final(two)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=TOL, rtol=0), k
    # The exported model is the same too (gathered from the shards).
    assert (two / "model" / "transformer" / "model.safetensors").is_file()


def test_two_process_fsdp_run_resumes(data: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(data, straight, 2, 2, "--max-steps", "4", "--save-every", "2", "--parallel", "fsdp")
    _run(data, resumed, 2, 2, "--max-steps", "2", "--save-every", "2", "--parallel", "fsdp")
    _run(data, resumed, 2, 2, "--max-steps", "4", "--save-every", "2", "--parallel", "fsdp", "--resume")
    assert _losses(straight) == pytest.approx(_losses(resumed), rel=1e-6)
    wa, wb = _final(straight), _final(resumed)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k


def test_fsdp_bf16_keeps_float32_master_weights(data: Path, tmp_path: Path) -> None:
    """precision=bf16 under FSDP2: a MixedPrecisionPolicy computes and all-gathers in bf16, reduces
    gradients in fp32 and keeps the sharded master weights (and so the checkpoint) in fp32."""
    one, two = tmp_path / "one", tmp_path / "two"
    bf16 = ("--set", "precision=bf16")  # the last --set wins over _run's fp32
    _run(data, one, 1, 4, "--max-steps", "2", "--save-every", "0", *bf16)
    _run(data, two, 2, 2, "--max-steps", "2", "--save-every", "0", "--parallel", "fsdp", *bf16)
    weights = _final(two)
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    a, b = _losses(one), _losses(two)
    # bf16 parameters (FSDP) vs bf16 autocast over fp32 parameters (one process): close, not equal
    assert all(abs(x - y) <= 0.05 * abs(x) for x, y in zip(a, b)), (a, b)


def test_two_process_fsdp_sharded_checkpoints_resume_exactly(data: Path, tmp_path: Path) -> None:
    """sharded_checkpoint_mb=0: every checkpoint is a torch.distributed.checkpoint folder written by
    both ranks (nothing gathered). Resuming is exact; the export reads it in one process."""
    from tubelet.train.trainer import export_checkpoint

    sharded = ("--set", "sharded_checkpoint_mb=0", "--parallel", "fsdp", "--save-every", "2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(data, straight, 2, 2, "--max-steps", "4", *sharded)
    _run(data, resumed, 2, 2, "--max-steps", "2", *sharded)
    _run(data, resumed, 2, 2, "--max-steps", "4", *sharded, "--resume")
    last = ckpt.latest_checkpoint(straight)
    assert ckpt.is_sharded(last) and not (last / "model.safetensors").exists()
    assert _losses(straight) == pytest.approx(_losses(resumed), rel=1e-6)
    out = export_checkpoint(resumed, tmp_path / "exp")
    for sub in ("transformer", "text_encoder"):
        a = load_safetensors(straight / "model" / sub / "model.safetensors")
        b = load_safetensors(out / sub / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a), sub


@pytest.fixture(scope="module")
def base_model(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "run"
    _run(data, out, 1, 4, "--max-steps", "1", "--save-every", "0")
    return out / "model"


def test_two_process_fsdp_lora_run_matches_one(data: Path, base_model: Path, tmp_path: Path) -> None:
    """A LoRA fine-tune under FSDP2 (frozen sharded base, trained adapters) == one process; bf16 runs too."""
    lora = ("--set", f"init_from={base_model}", "--set", "lora={rank: 4, alpha: 8}", "--set", "optim.lr=0.01")
    one, two = tmp_path / "one", tmp_path / "two"
    _run(data, one, 1, 4, "--max-steps", "3", "--save-every", "0", *lora)
    _run(data, two, 2, 2, "--max-steps", "3", "--save-every", "0", "--parallel", "fsdp", *lora)
    a, b = _losses(one), _losses(two)
    assert all(abs(x - y) <= TOL * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
    wa, wb = _final(one), _final(two)
    assert wa.keys() == wb.keys() and all(".lora." in k for k in wa)  # the adapters only
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=TOL, rtol=0), k
    assert (two / "model" / "pytorch_lora_weights.safetensors").is_file()
    # bf16: the frozen base is stored in bf16, the adapters train in fp32
    bf16 = tmp_path / "bf16"
    _run(data, bf16, 2, 2, "--max-steps", "2", "--save-every", "0", "--parallel", "fsdp", *lora,
         "--set", "precision=bf16")  # fmt: skip
    assert all(v.dtype == torch.float32 for v in _final(bf16).values())
