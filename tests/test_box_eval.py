"""`tubelet eval boxes`: the oracle's per-frame boxes, the held-out box suite and the scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tubelet.boxes import parse_boxes
from tubelet.recipes.shapes import SUITES
from tubelet.recipes.shapes.box_eval import (
    BoxItem,
    evaluate_boxes,
    format_box_table,
    make_box_suite,
    read_box_suite,
    score_boxes,
)


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_the_oracle_finds_every_objects_box_to_a_fraction_of_a_pixel() -> None:
    from tubelet.recipes.shapes.oracle import _match, analyse_clip
    from tubelet.recipes.shapes.render import make_clip, scene_boxes

    ious = []
    for i in range(12):
        clip = make_clip((9, i), frames=16, size=64)
        analysis = analyse_clip(clip.frames)
        match = _match(clip.scene.spec, analysis.tracks)
        for t in parse_boxes(scene_boxes(clip.scene, frames=16, size=64)):
            found = analysis.tracks[match[t.object]].boxes
            ious += [_iou(t.box_at(f), found[f]) for f in range(16)]
    assert np.mean(ious) > 0.97 and min(ious) > 0.9  # triangles' thin apexes included


def render_following(item: BoxItem, frames: int = 16, size: int = 64) -> np.ndarray:
    """What a perfect box-following model makes: each object drawn at its requested box centre."""
    from tubelet.recipes.shapes.grammar import parse_caption
    from tubelet.recipes.shapes.render import render
    from tubelet.recipes.shapes.scene import Scene, SceneObject

    spec = parse_caption(item.prompt)
    tracks = {t.object: t for t in item.tracks}
    out = []
    for f in range(frames):
        objs = []
        for i, o in enumerate(spec.objects):
            b = tracks[i].box_at(f)
            assert b is not None
            if not tracks[i].hard:  # a soft region: stay at its centre
                pass
            c = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
            objs.append(SceneObject(o, c, c))
        scene = Scene(spec, spec.background or "gray", tuple(objs))
        out.append(render(scene, frames=1, size=size)[0])
    return np.stack(out)


class _Perfect:
    """A stand-in pipeline that follows boxes exactly and, without them, ignores motion."""

    has_box_control = True

    def __init__(self, items: list[BoxItem]) -> None:
        self.by_prompt = {it.prompt: it for it in items}

    def generate(self, request: Any, progress: bool = False) -> Any:
        item = self.by_prompt[request.prompt]

        class R:
            frames = render_following(item) if request.boxes is not None else render_still(item)

        return R()


def render_still(item: BoxItem) -> np.ndarray:
    frames = render_following(item)
    return np.repeat(frames[:1], len(frames), axis=0)


def test_the_shipped_box_suite_is_valid_and_balanced() -> None:
    items = read_box_suite(SUITES / "boxes-heldout.jsonl")
    assert len(items) == 48
    assert {it.path for it in items} == {"straight", "diagonal", "curved"}
    assert {it.lang for it in items} == {"en", "zh"}
    assert {len(it.tracks) for it in items} == {1, 2}
    assert any(not t.hard for it in items for t in it.tracks)
    # it is what make_box_suite writes (regenerate with the same defaults to update it)
    assert [it.prompt for it in items] == [line["prompt"] for line in make_box_suite()]
    from tubelet.recipes.shapes import suite_path

    assert suite_path("boxes-heldout") == SUITES / "boxes-heldout.jsonl"


def test_scores_of_a_perfect_follower_and_of_a_clip_that_ignores_the_boxes() -> None:
    items = read_box_suite(SUITES / "boxes-heldout.jsonl")[::3]
    report = evaluate_boxes(_Perfect(items), items, progress=False)
    good, bad = report["with_boxes"]["all"], report["without_boxes"]["all"]
    assert good["mean_iou"] > 0.9 and good["frac_iou50"] == 1.0 and good["ap50"] == 1.0
    assert good["soft_containment"] is not None and good["soft_containment"] > 0.95
    assert good["color"] == 1.0
    assert bad["mean_iou"] < 0.5 and bad["ap50"] < good["ap50"]
    table = format_box_table(report)
    assert "with boxes" in table and "path curved" in table and "lang zh" in table


def test_a_missing_object_scores_zero_and_bad_suites_are_errors(tmp_path: Path) -> None:
    from tubelet.errors import DataError

    (item,) = read_box_suite(SUITES / "boxes-heldout.jsonl")[:1]
    empty = np.full((16, 64, 64, 3), 128, np.uint8)
    s = score_boxes(empty, item)
    assert s["ious"] and max(s["ious"]) == 0.0
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"prompt": "a red circle moving right", "seed": 1, "path": "zigzag", "boxes": []}\n')
    with pytest.raises(DataError, match=r"s\.jsonl:1: 'lang' must be en or zh and 'path' one of"):
        read_box_suite(bad)
    bad.write_text(
        '{"prompt": "a red circle moving right", "seed": 1, "boxes": [{"object": 1, "keyframes": [[0, 0, 0, 1, 1]]}]}\n'
    )
    with pytest.raises(DataError, match="binds to object 1, but the prompt names 1 object"):
        read_box_suite(bad)
    with pytest.raises(Exception, match="no box control"):
        evaluate_boxes(type("P", (), {"has_box_control": False})(), [item])


def test_eval_boxes_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tubelet.cli import main
    from tubelet.models.box_adapter import BoxAdapter, BoxAdapterConfig, BoxedDiT
    from tubelet.pipelines import default_model_dir, load_pipeline

    pipe = load_pipeline()
    pipe.transformer = BoxedDiT(
        pipe.transformer, BoxAdapter(BoxAdapterConfig.for_dit(pipe.transformer.config))
    )
    model = pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "eval",
                "boxes",
                "--model",
                str(model),
                "--limit",
                "2",
                "--steps",
                "2",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
    assert e.value.code == 0
    report = json.loads(out.read_text())
    assert report["clips"] == 2 and report["with_boxes"]["all"]["clips"] == 2 and "without_boxes" in report
    assert "mean_iou" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(
            [
                "eval",
                "boxes",
                "--model",
                str(default_model_dir()),
                "--limit",
                "1",
                "--out",
                str(tmp_path / "r2.json"),
            ]
        )
    assert e.value.code == 1 and "no box control" in capsys.readouterr().err
