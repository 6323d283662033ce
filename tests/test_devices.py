"""One device resolver (`tubelet.devices.resolve_device`) for every --device flag and the trainer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tubelet.devices import resolve_device
from tubelet.errors import DeviceError, TubeletError

ROOT = Path(__file__).resolve().parents[1]


def test_auto_and_explicit_devices() -> None:
    auto = resolve_device("auto")
    if torch.cuda.is_available():
        assert auto == torch.device("cuda", 0)
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    else:
        assert auto.type in ("cpu", "mps") or auto.type != "cuda"
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["bogus", "gpu", "cuda:x", ""])
def test_unknown_devices_are_one_clear_error(bad: str) -> None:
    with pytest.raises(DeviceError, match="not a torch device"):
        resolve_device(bad)
    assert issubclass(DeviceError, TubeletError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    for dev in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="sees no CUDA device"):
            resolve_device(dev)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_without_mps_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tubelet", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_device_flags_fail_cleanly(tmp_path: Path) -> None:
    """generate and train (the trainer resolved devices on its own before) reject a bad --device
    with one line and exit 1, before any work."""
    bad = "cuda" if not torch.cuda.is_available() else "bogus"
    train = ("train", "--preset", "tiny", "--data", str(tmp_path), "--device")
    for args in (
        ("generate", "a red circle moving right", "--device", bad, "-o", str(tmp_path / "a.mp4")),
        (*train, bad, "--out", str(tmp_path / "run")),
        (*train, "bogus", "--out", str(tmp_path / "run2")),
    ):
        r = _cli(*args)
        assert r.returncode == 1, (args, r.stderr[-2000:])
        lines = [ln for ln in r.stderr.strip().splitlines() if ln]
        assert len(lines) == 1 and "device" in lines[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "a.mp4").exists()
