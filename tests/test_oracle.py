"""The shapes-world oracle: right on generator clips (raw, noisy, through h264), and able to fail."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tubelet.errors import CaptionError, DataError
from tubelet.recipes.shapes import (
    COLORS,
    PromptSpec,
    caption,
    make_clip,
    render,
    scene_for_spec,
    write_dataset,
)
from tubelet.recipes.shapes.oracle import ClipResult, aggregate, evaluate_folder, format_table, score_clip

REVERSED = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "left"}


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _score_seeds(seeds: range, noise: float) -> dict:
    results = []
    for s in seeds:
        clip = make_clip(s, noise=noise)
        results.append(score_clip(clip.frames, clip.captions["zh" if s % 2 else "en"]))
    return aggregate(results)


@pytest.mark.parametrize(("noise", "seeds"), [(0.0, range(0, 300)), (10.0, range(1000, 1300))])
def test_oracle_agrees_with_generator(noise, seeds):
    report = _score_seeds(seeds, noise)
    assert report["num_clips"] == 300
    assert report["accuracy"] >= 0.99, format_table(report)
    assert report["whole_prompt"] >= 0.97, format_table(report)
    for name, row in report["per_attribute"].items():
        assert row["accuracy"] >= 0.98, (name, row)
    assert set(report["per_attribute"]) == {
        "color",
        "shape",
        "motion",
        "size",
        "background",
        "no_extra_objects",
    }
    assert set(report["per_language"]) == {"en", "zh"}


def test_oracle_through_mp4_round_trip(tmp_path: Path):
    out = write_dataset(tmp_path / "ds", 30, seed=11, progress=False)
    report = evaluate_folder(out, progress=False)
    assert report["num_clips"] == 60  # an English and a Chinese caption per clip
    assert report["accuracy"] >= 0.99, format_table(report)
    assert report["per_language"]["en"]["num_clips"] == report["per_language"]["zh"]["num_clips"] == 30
    assert {c["video"] for c in report["clips"]} == {f"videos/{i:06d}.mp4" for i in range(30)}
    json.dumps(report)  # JSON-able


def test_wrong_prompts_fail():
    altered = passed = 0
    for s in range(200):
        clip = make_clip(s)
        spec = clip.scene.spec
        free = [c for c in COLORS if c not in {o.color for o in spec.objects}]
        i = s % len(spec.objects)
        objs = [dataclasses.replace(o, motion=REVERSED[o.motion]) for o in spec.objects]
        objs[i] = dataclasses.replace(objs[i], color=free[s % len(free)])
        wrong = caption(PromptSpec(tuple(objs), spec.background), "zh" if s % 2 else "en")
        for a in score_clip(clip.frames, wrong).attributes:
            if a.attribute == "motion" or (a.attribute == "color" and a.object_index == i):
                altered += 1
                passed += a.passed
    assert altered > 500
    assert passed / altered < 0.05


def test_uniform_noise_passes_nothing():
    rng = _rng(0)
    for s in range(20):
        clip = make_clip(s)
        noise = rng.integers(0, 256, size=clip.frames.shape, dtype=np.uint8)
        res = score_clip(noise, clip.captions["en" if s % 2 else "zh"])
        assert sum(a.passed for a in res.attributes) == 0, res.attributes
        assert res.accuracy == 0.0 and not res.whole_prompt


def _clip_for(text: str, seed: int = 0, **kw) -> np.ndarray:
    from tubelet.recipes.shapes import parse_caption

    return render(scene_for_spec(parse_caption(text), _rng(seed)), **kw)


def _by_attr(res: ClipResult) -> dict[tuple[int | None, str], tuple[str, str | None, bool]]:
    return {(a.object_index, a.attribute): (a.expected, a.observed, a.passed) for a in res.attributes}


def test_only_named_attributes_are_checked():
    frames = _clip_for("a red circle moving right and a big blue square staying still")
    res = score_clip(frames, "a red circle moving right and a big blue square staying still")
    assert [(a.object_index, a.attribute) for a in res.attributes] == [
        (0, "color"),
        (0, "shape"),
        (0, "motion"),
        (1, "color"),
        (1, "shape"),
        (1, "motion"),
        (1, "size"),
        (None, "no_extra_objects"),
    ]
    assert res.whole_prompt and res.accuracy == 1.0
    assert res.lang == "en"
    assert score_clip(frames, "一个红色圆形向右移动和一个大的蓝色正方形静止不动").whole_prompt


def test_two_objects_of_one_colour_are_told_apart():
    text = "a red circle moving right and a red square moving down"
    for seed in range(5):
        frames = _clip_for(text, seed)
        assert score_clip(frames, text).whole_prompt
        res = _by_attr(score_clip(frames, "a red circle moving down and a red square moving right"))
        assert res[(0, "motion")] == ("down", "right", False)
        assert res[(1, "motion")] == ("right", "down", False)
        assert res[(0, "shape")][2] and res[(1, "shape")][2] and res[(0, "color")][2]


def test_each_attribute_can_fail():
    frames = _clip_for("a big blue square moving left and a red circle staying still, on a white background")
    res = _by_attr(score_clip(frames, "a small blue triangle moving left, on a black background"))
    assert res[(0, "color")] == ("blue", "blue", True)
    assert res[(0, "shape")] == ("triangle", "square", False)
    assert res[(0, "motion")] == ("left", "left", True)
    assert res[(0, "size")] == ("small", "big", False)
    assert res[(None, "background")] == ("black", "white", False)
    assert res[(None, "no_extra_objects")] == ("1", "2", False)


def test_blank_and_flipped_clips():
    blank = np.zeros((17, 64, 64, 3), np.uint8)
    res = _by_attr(score_clip(blank, "a red circle staying still, on a black background"))
    assert res[(None, "background")] == ("black", "black", True)
    assert res[(0, "color")] == ("red", None, False) and res[(0, "motion")] == ("still", None, False)
    assert res[(None, "no_extra_objects")] == ("1", "0", False)
    # an upside-down triangle is not a shapes-world triangle, and its motion flips
    text = "a big green triangle moving up"
    frames = _clip_for(text, 3)
    assert score_clip(frames, text).whole_prompt
    res = _by_attr(score_clip(np.ascontiguousarray(frames[:, ::-1]), text))
    assert res[(0, "shape")] == ("triangle", "other", False)
    assert res[(0, "motion")] == ("up", "down", False)
    assert res[(0, "color")][2] and res[(0, "size")][2]


def test_other_sizes_and_lengths():
    for seed, size, frames in ((1, (48, 80), 9), (2, 32, 5), (3, (96, 64), 33)):
        clip = make_clip(seed, size=size, frames=frames, noise=3.0)
        assert score_clip(clip.frames, clip.captions["en"]).whole_prompt


def test_bad_inputs():
    frames = make_clip(0).frames
    with pytest.raises(CaptionError, match="'pink'"):
        score_clip(frames, "a pink circle staying still")
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        score_clip(frames.astype(np.float32), "a red circle staying still")
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        score_clip(frames[0], "a red circle staying still")


def test_aggregate_and_table():
    results = [
        score_clip(make_clip(s).frames, make_clip(s).captions[lang])
        for s in range(3)
        for lang in ("en", "zh")
    ]
    results.append(score_clip(np.zeros((5, 32, 32, 3), np.uint8), "a red circle staying still"))
    report = aggregate(results)
    assert report["num_clips"] == 7 and len(report["clips"]) == 7
    n_attrs = sum(len(r.attributes) for r in results)
    assert sum(v["total"] for v in report["per_attribute"].values()) == n_attrs == report["num_attributes"]
    assert report["accuracy"] == pytest.approx(sum(a.passed for r in results for a in r.attributes) / n_attrs)
    assert report["whole_prompt"] == pytest.approx(6 / 7)
    assert report["per_language"]["zh"]["whole_prompt"] == 1.0
    assert report["per_language"]["en"]["num_clips"] == 4
    json.dumps(report, ensure_ascii=False)
    table = format_table(report)
    for word in ("color", "shape", "motion", "no_extra_objects", "whole prompt", "en", "zh"):
        assert word in table


def test_evaluate_folder_errors(tmp_path: Path):
    with pytest.raises(DataError, match=r"captions\.jsonl"):
        evaluate_folder(tmp_path, progress=False)
    (tmp_path / "captions.jsonl").write_text(
        '{"video": "a.mp4", "caption": "a red circle staying still"}\n{oops\n'
    )
    with pytest.raises(DataError, match=r"captions.jsonl:2"):
        evaluate_folder(tmp_path, progress=False)
    from tubelet.media import write_video

    write_video(tmp_path / "a.mp4", make_clip(0).frames, 8.0, sidecar=False)
    (tmp_path / "captions.jsonl").write_text('{"video": "a.mp4", "caption": "a red hexagon staying still"}\n')
    with pytest.raises(DataError, match="hexagon"):
        evaluate_folder(tmp_path, progress=False)


def test_cli_end_to_end(tmp_path: Path, capsys):
    from typer.testing import CliRunner

    from tubelet.cli import app, main

    runner = CliRunner()
    ds = tmp_path / "ds"
    r = runner.invoke(app, ["data", "shapes", "--out", str(ds), "--num", "3", "--seed", "5", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "wrote 3 clips" in r.output
    assert len((ds / "captions.jsonl").read_text(encoding="utf-8").splitlines()) == 6
    r = runner.invoke(app, ["eval", "oracle", "--videos", str(ds), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "whole prompt" in r.output and "no_extra_objects" in r.output
    report = json.loads((ds / "oracle.json").read_text(encoding="utf-8"))
    assert report["num_clips"] == 6 and report["accuracy"] >= 0.99
    out = tmp_path / "r" / "report.json"
    r = runner.invoke(app, ["eval", "oracle", "--videos", str(ds), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0 and json.loads(out.read_text(encoding="utf-8"))["num_clips"] == 6
    # a user error is one line on stderr and exit status 1, and foreign data is untouched
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as ei:
        main(["data", "shapes", "--out", str(tmp_path / "foreign"), "--num", "2", "--no-progress"])
    assert ei.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a shapes dataset" in err and err.count("\n") == 1
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["keep.txt"]
