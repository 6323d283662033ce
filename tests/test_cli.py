"""The CLI shell: `python -m tubelet`, the demo, and one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tubelet", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_python_m_tubelet_is_the_cli() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("demo", "train", "generate", "data", "eval", "convert"):
        assert cmd in res.stdout


def test_demo_writes_a_video_and_prints_its_path(tmp_path: Path) -> None:
    from tubelet.media import read_video

    out = tmp_path / "demo.mp4"
    res = run("demo", "--out", str(out), "--seed", "3")
    assert res.returncode == 0, res.stderr
    printed = Path(res.stdout.strip().splitlines()[-1])
    assert printed == out.resolve() and out.is_file()
    video = read_video(out)
    assert video.frames.shape[0] >= 16 and video.frames.shape[1] >= 64


def test_user_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    res = run("eval", "oracle", "--videos", str(tmp_path / "missing"))
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    res = run("train", "--preset", "nope", "--out", str(tmp_path / "r"))
    assert res.returncode == 1 and "unknown training preset" in res.stderr
    assert "Traceback" not in res.stderr


def test_set_overrides_parse_yaml_values() -> None:
    from tubelet.cli.train import _parse_set
    from tubelet.errors import ConfigError

    got = _parse_set(["optim.lr=8e-5", "data.buckets=[[5, 16, 16, 2]]", "precision=fp32", "ema_decay=null"])
    assert got == {"optim.lr": 8e-5, "data.buckets": [[5, 16, 16, 2]], "precision": "fp32", "ema_decay": None}
    import pytest

    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_set(["optim.lr"])


def test_presets_lists_the_recipes_stages_and_a_stage_names_its_missing_input(tmp_path: Path) -> None:
    res = run("presets")
    assert res.returncode == 0, res.stderr
    assert "shapes-t2v-frames-gpu" in res.stdout and "out_dir=runs/shapes-t2v-frames-gpu" in res.stdout
    assert "shapes-t2v-fine" not in res.stdout  # the unshipped comparisons are gone
    res = run("train", "--preset", "shapes-vae-frames", cwd=tmp_path)  # no --data, no --out: the preset's
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "data_dir: data/shapes does not exist" in res.stderr
    assert "make it first with `tubelet data shapes --out data/shapes --num 12000" in res.stderr
    res = run("train", "--preset", "tiny", "--data", str(tmp_path))
    assert res.returncode == 1 and "give --out DIR" in res.stderr
