"""VBench normalisation, the evaluation report and `tubelet eval videos` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tubelet.errors import ConfigError, DataError
from tubelet.eval import report as R
from tubelet.eval.vbench import QUALITY_DIMENSIONS, SEMANTIC_DIMENSIONS, normalise, vbench_scores

# CogVideoX-5B's published VBench row (percent), from the VBench leaderboard.
COGVIDEOX_5B = {
    "subject_consistency": 96.23,
    "background_consistency": 96.52,
    "temporal_flickering": 98.66,
    "motion_smoothness": 96.92,
    "dynamic_degree": 70.97,
    "aesthetic_quality": 61.98,
    "imaging_quality": 62.90,
    "object_class": 85.23,
    "multiple_objects": 62.11,
    "human_action": 99.40,
    "color": 82.81,
    "spatial_relationship": 66.35,
    "scene": 53.20,
    "appearance_style": 24.91,
    "temporal_style": 25.38,
    "overall_consistency": 27.59,
}


def test_cogvideox_5b_quality_semantic_total():
    out = vbench_scores({k: v / 100 for k, v in COGVIDEOX_5B.items()})
    assert 100 * out["quality"] == pytest.approx(82.75, abs=0.02)
    assert 100 * out["semantic"] == pytest.approx(77.04, abs=0.02)
    assert 100 * out["total"] == pytest.approx(81.61, abs=0.02)
    assert out["official"] and "partial" not in out and out["missing"] == []
    assert len(out["covers"]) == 16


def test_normalise_constants():
    assert normalise("motion_smoothness", 0.9975) == pytest.approx(1.0)
    assert normalise("motion_smoothness", 0.706) == pytest.approx(0.0)
    assert normalise("dynamic_degree", 1.0) == pytest.approx(0.5)  # weight 0.5
    assert normalise("scene", 0.8222) == pytest.approx(1.0)
    assert normalise("appearance_style", 0.0009) == pytest.approx(0.0)
    assert len(QUALITY_DIMENSIONS) == 7 and len(SEMANTIC_DIMENSIONS) == 9
    with pytest.raises(KeyError, match="shapes_oracle"):
        normalise("shapes_oracle", 0.5)


def test_partial_scores_say_what_they_cover():
    raw = {
        "temporal_flickering": 0.99,
        "motion_smoothness": 0.98,
        "dynamic_degree": 1.0,
        "shapes_oracle": 0.7,
    }
    out = vbench_scores(raw, stand_ins=["temporal_flickering", "motion_smoothness", "dynamic_degree"])
    assert out["quality"] is None and out["semantic"] is None and out["total"] is None
    part = out["partial"]["quality"]
    assert part["covers"] == ["temporal_flickering", "motion_smoothness", "dynamic_degree"]
    expect = (normalise("temporal_flickering", 0.99) + normalise("motion_smoothness", 0.98) + 0.5) / 2.5
    assert part["score"] == pytest.approx(expect)
    assert "semantic" not in out["partial"]
    assert not out["official"]
    assert "partial" in out["note"] and "stand-in" in out["note"]
    assert "shapes_oracle" not in out["normalised"]
    # Stand-ins flag the result even when everything is present.
    full = vbench_scores({k: v / 100 for k, v in COGVIDEOX_5B.items()}, stand_ins=["dynamic_degree"])
    assert full["total"] is not None and not full["official"] and full["stand_ins"] == ["dynamic_degree"]


def test_prompt_from_filename_and_captions(tmp_path):
    assert R.prompt_from_filename("a cat running on the grass-3.mp4") == "a cat running on the grass"
    assert R.prompt_from_filename("x/a red ball.mp4") == "a red ball"
    (tmp_path / "captions.jsonl").write_text('{"video": "a.mp4", "caption": "a"}\nnot json\n')
    with pytest.raises(DataError, match=r"captions\.jsonl:2"):
        R.collect_videos(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        R.collect_videos(tmp_path / "nope")


# ---------------------------------------------------------------------------- CLI end to end


def _write_folder(root: Path, n: int = 3) -> list[str]:
    from tubelet.media import write_video
    from tubelet.recipes.shapes import make_clip

    root.mkdir(parents=True, exist_ok=True)
    lines, names = [], []
    for i in range(n):
        clip = make_clip(i, frames=9, size=48)
        name = f"clip_{i}.mp4"
        write_video(root / name, clip.frames, clip.fps, sidecar=False)
        lines.append(json.dumps({"video": name, "caption": clip.captions["en"]}))
        names.append(name)
    # A still clip, named the VBench way, with no captions line.
    still = np.repeat(make_clip(7, frames=1, size=48).frames, 9, axis=0)
    write_video(root / "a still scene-0.mp4", still, 8.0, sidecar=False)
    names.append("a still scene-0.mp4")
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "broken.mp4").write_bytes(b"this is not a video")
    return names


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    import tubelet.cli.eval_videos  # noqa: F401  (registers the command)
    from tubelet.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_eval_videos_end_to_end(tmp_path, capsys):
    folder = tmp_path / "videos"
    names = _write_folder(folder)
    out = tmp_path / "report"
    code, stdout, stderr = _run_cli(
        [
            "eval",
            "videos",
            str(folder),
            "--out",
            str(out),
            "--quiet",
            "--dims",
            "temporal_flickering,motion_smoothness,dynamic_degree,shapes_oracle,subject_consistency",
        ],
        capsys,
    )
    assert code == 0, stderr
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) >= {"dimensions", "vbench", "skipped", "errors", "clips"}
    assert set(rep["dimensions"]) == {
        "temporal_flickering",
        "motion_smoothness",
        "dynamic_degree",
        "shapes_oracle",
    }
    for d in rep["dimensions"].values():
        assert set(d) >= {"score", "stand_in", "method", "per_clip"}
        assert set(d["per_clip"]) == set(names)
    dd = rep["dimensions"]["dynamic_degree"]
    assert dd["stand_in"] and "RAFT" in dd["method"]
    assert dd["per_clip"]["a still scene-0.mp4"] == 0.0
    tf = rep["dimensions"]["temporal_flickering"]
    assert tf["per_clip"]["a still scene-0.mp4"] == pytest.approx(1.0, abs=1e-3)
    assert rep["clips"]["a still scene-0.mp4"]["caption"] == "a still scene"
    assert 0.0 <= rep["dimensions"]["shapes_oracle"]["score"] <= 1.0
    assert "subject_consistency" in rep["skipped"] and "dino-vitb16" in rep["skipped"]["subject_consistency"]
    assert "broken.mp4" in rep["errors"]
    assert "covers" in rep["vbench"] and "partial" in rep["vbench"]
    assert "broken.mp4" in stderr and "subject_consistency" in stderr
    assert "dynamic_degree (stand-in)" in stdout

    page = (out / "report.html").read_text()
    assert "<svg" in page and "data:image/png;base64," in page
    for name in names:
        assert name in page
    assert "stand-in" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page


def test_cli_errors_unknown_dimension_and_empty_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run_cli(["eval", "videos", str(empty), "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and "no videos found" in err and len(err.strip().splitlines()) == 1
    folder = tmp_path / "v"
    _write_folder(folder, n=1)
    code, _, err = _run_cli(["eval", "videos", str(folder), "--dims", "dynamic_degree,sharpness"], capsys)
    assert code == 1 and "sharpness" in err and "valid:" in err
    code, _, err = _run_cli(
        ["eval", "videos", str(folder), "--dims", "aesthetic_quality", "--weights", str(tmp_path)], capsys
    )
    assert code == 1 and "aesthetic_quality" in err and "clip-vit-large-patch14" in err


def test_evaluate_folder_with_local_clip_weights(tmp_path):
    """The model-backed path through the folder runner: tiny random CLIP saved in the expected layout."""
    from test_eval_dimensions import _tiny_clip

    weights = tmp_path / "weights"
    _tiny_clip(weights / "clip-vit-base-patch32")
    folder = tmp_path / "videos"
    _write_folder(folder, n=2)
    run = R.evaluate_folder(
        folder,
        "background_consistency,clip_text_alignment,dynamic_degree",
        weights=weights,
        device="cpu",
        progress=False,
    )
    rep = run.report
    bg = rep["dimensions"]["background_consistency"]
    assert not bg["stand_in"] and 0.0 < bg["score"] <= 1.0
    assert bg["per_clip"]["a still scene-0.mp4"] == pytest.approx(1.0, abs=1e-3)  # identical frames
    ta = rep["dimensions"]["clip_text_alignment"]
    assert ta["stand_in"] and all(0.0 <= v <= 1.0 for v in ta["per_clip"].values())
    assert "clip_text_alignment" not in rep["vbench"]["normalised"]
    assert rep["vbench"]["partial"]["quality"]["covers"] == ["background_consistency", "dynamic_degree"]
    assert set(run.thumbnails) == set(rep["clips"]) and all(len(v) == 4 for v in run.thumbnails.values())
    table = R.format_table(rep)
    assert "background_consistency" in table and "clip_text_alignment (stand-in)" in table


def test_evaluate_folder_rejects_unrunnable_and_unreadable(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "bad.mp4").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 videos could be read"):
        R.evaluate_folder(folder, "dynamic_degree", progress=False)
    with pytest.raises(ConfigError, match="no requested dimension can run"):
        R.evaluate_folder(folder, "subject_consistency", progress=False)
