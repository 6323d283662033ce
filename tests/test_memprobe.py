"""The pre-flight memory check: one trial step per bucket names the bucket that will not fit, and
changes nothing about the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tubelet.data.buckets import Bucket
from tubelet.errors import TrainingError
from tubelet.train import checkpoint as ckpt
from tubelet.train.config import TrainConfig, resolve_train_config
from tubelet.train.memprobe import probe_buckets, shortfall, synthetic_batch
from tubelet.train.trainer import train

BUCKETS = [
    {"frames": 5, "height": 16, "width": 16, "batch_size": 2},
    {"frames": 3, "height": 16, "width": 16, "batch_size": 2},
]


def tiny(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {"max_steps": 4, "save_every": 2, "data": {"fps": 8.0, "buckets": BUCKETS}}
    return resolve_train_config("tiny", overrides={**base, **overrides})


def test_memory_check_changes_nothing(shapes_data: Path, tmp_path: Path) -> None:
    """A run with the trial steps (and then resumed with them again) equals a run without."""
    checked, plain = tmp_path / "checked", tmp_path / "plain"
    train(tiny(memory_check="on", max_steps=2), shapes_data, checked, progress=False)
    train(tiny(memory_check="on"), shapes_data, checked, resume=True, progress=False)
    train(tiny(memory_check="off"), shapes_data, plain, progress=False)
    for run in (checked, plain):
        assert ckpt.latest_checkpoint(run) is not None
    from tubelet.models.hub import load_safetensors

    wa = load_safetensors(ckpt.latest_checkpoint(checked) / "model.safetensors")  # type: ignore[operator]
    wb = load_safetensors(ckpt.latest_checkpoint(plain) / "model.safetensors")  # type: ignore[operator]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    losses = [
        (checked / "metrics.jsonl").read_text().splitlines(),
        (plain / "metrics.jsonl").read_text().splitlines(),
    ]
    strip = [[line.split('"samples_per_s"')[0] for line in ls] for ls in losses]
    assert strip[0] == strip[1]


def test_a_bucket_that_runs_out_of_memory_is_named_before_step_one(
    shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 5-frame bucket's trial step raises the out-of-memory error a GPU would: the run stops
    before its first step with a message naming that bucket (and what the 3-frame one measured)."""
    from tubelet.train.tasks import DiTTask

    real = DiTTask.loss

    def loss(self, wrapped, batch, generator):  # type: ignore[no-untyped-def]
        if batch["video"].shape[2] >= 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, wrapped, batch, generator)

    monkeypatch.setattr(DiTTask, "loss", loss)
    run = tmp_path / "run"
    with pytest.raises(
        TrainingError, match=r"bucket 5x16x16 \(batch 2\) will not fit on cpu: a trial step ran out"
    ):
        train(tiny(memory_check="on"), shapes_data, run, progress=False)
    assert ckpt.list_checkpoints(run) == []


def test_cli_reports_the_bucket_and_exits_nonzero(
    shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tubelet.cli import main
    from tubelet.train.tasks import DiTTask

    def loss(self, wrapped, batch, generator):  # type: ignore[no-untyped-def]
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(DiTTask, "loss", loss)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "memory_check: 'on'\nmax_steps: 2\ndata:\n  fps: 8.0\n  buckets: [{frames: 3, height: 16, width: 16, batch_size: 2}]\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--config",
                str(cfg),
                "--data",
                str(shapes_data),
                "--out",
                str(tmp_path / "r"),
            ]
        )
    assert exit_.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "bucket 3x16x16 (batch 2) will not fit" in err and "Traceback" not in err


def test_shortfall_counts_the_optimizer_state_still_to_come() -> None:
    gib = 2**30
    assert shortfall(None, 10 * gib, None) is None  # nothing measured (CPU): only OOM stops
    assert shortfall(-1, 0, 80 * gib) == "a trial step ran out of memory"
    assert shortfall(20 * gib, 2 * gib, 24 * gib) is None
    why = shortfall(20 * gib, 4 * gib, 24 * gib)
    assert why is not None and "20.0 GiB" in why and "4.0 GiB" in why and "24.0 GiB" in why


def test_probe_runs_smallest_bucket_first_and_drops_gradients() -> None:
    model = torch.nn.Linear(4, 1)
    seen: list[int] = []

    def step(batch: dict, gen: torch.Generator) -> torch.Tensor:
        seen.append(batch["video"].shape[2])
        return model(batch["video"].mean(dim=(1, 3, 4))[:, :1].expand(-1, 4)).sum()

    template = {"caption": ["a", "b"], "video": torch.zeros(2, 3, 5, 8, 8)}
    buckets = [Bucket(9, 8, 8, 2), Bucket(5, 8, 8, 2)]
    torch.manual_seed(3)
    expect = torch.rand(1)
    torch.manual_seed(3)
    peaks = probe_buckets(
        step, model, buckets, lambda b: synthetic_batch(template, b, None), torch.device("cpu")
    )
    assert seen == [5, 9] and [p.bucket.frames for p in peaks] == [5, 9]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.rand(1), expect)  # the global RNG is where it was


def test_synthetic_batch_follows_the_template() -> None:
    class Codec:
        spatial_factor = 8

        @staticmethod
        def latent_frames(t: int) -> int:
            return 1 + (t - 1) // 4

    template = {
        "caption": ["x", "y"],
        "latents": torch.zeros(2, 16, 2, 4, 4, dtype=torch.float16),
        "context": torch.randn(2, 7, 32),
        "mask": torch.ones(2, 7, dtype=torch.bool),
    }
    b = synthetic_batch(template, Bucket(81, 480, 832, 3), Codec())
    assert b["latents"].shape == (3, 16, 21, 60, 104) and b["latents"].dtype == torch.float16
    assert b["context"].shape == (3, 7, 32) and torch.equal(b["context"][2], template["context"][0])
    assert b["caption"] == ["x", "y", "x"]


def test_bucket_shapes_the_vae_cannot_take_are_named_with_the_nearest_that_work() -> None:
    from tubelet.errors import ConfigError
    from tubelet.train.tasks import check_bucket_shapes

    class WanLike:  # Wan's VAE: 4x in time (causal), 8x in space
        temporal_factor, spatial_factor = 4, 8

        @staticmethod
        def latent_frames(t: int) -> int:
            return 1 + (t - 1) // 4

    check_bucket_shapes(
        [Bucket(81, 480, 832, 1), Bucket(33, 480, 832, 1), Bucket(1, 480, 832, 4)], WanLike(), (1, 2, 2)
    )
    with pytest.raises(
        ConfigError, match=r"data.buckets\[1\] \(80x480x832\): frames must be 1 \+ 4k.*nearest: 77 or 81"
    ):
        check_bucket_shapes([Bucket(81, 480, 832, 1), Bucket(80, 480, 832, 1)], WanLike(), (1, 2, 2))
    with pytest.raises(ConfigError, match=r"width must be a multiple of 16; nearest: 816 or 832"):
        check_bucket_shapes([Bucket(81, 480, 830, 1)], WanLike(), (1, 2, 2))
    with pytest.raises(
        ConfigError, match=r"multiple of 4 latent frames.*nearest: 13 or 29"
    ):  # patch 4 in time
        check_bucket_shapes([Bucket(16, 64, 64, 1)], WanLike(), (4, 2, 2))
