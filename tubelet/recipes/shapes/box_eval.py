"""Measuring box control on the shapes world (`tubelet eval boxes`): a held-out suite of box tracks
and an evaluator built on the oracle's segmentation.

A box suite is a jsonl file; each line is one clip::

    {"prompt": "a red circle moving right", "seed": 7, "lang": "en", "path": "curved",
     "boxes": {"tracks": [...]}}          # tubelet.boxes format; "path": straight | diagonal | curved

`make_box_suite` writes one from seeds training never used: 1 and 2 objects, English and Chinese,
hard and soft boxes, straight paths (the prompt's own motion), diagonal and curved ones (the prompt
names the dominant direction; only the boxes say the rest).

`evaluate_boxes(pipe, items)` generates every clip with its boxes (and, as the baseline, without),
finds each object in each frame with the oracle (`analyse_clip`: per-frame boxes from the objects'
anti-aliased coverage) and reports, per path kind, language and object count:

* ``mean_iou``: mean IoU of the detected box with the requested hard box over the frames the track
  covers (a frame where the object is not found counts 0);
* ``frac_iou50``: fraction of those frames with IoU >= 0.5;
* ``ap50``: Boximator's keyframe AP@0.5: the fraction of keyframes whose object is detected with
  IoU >= 0.5 (one detection per object, so precision and recall coincide);
* ``soft_containment``: for soft boxes, the fraction of frames with the object inside its region
  (half a pixel of tolerance);
* ``color`` / ``shape``: the oracle's attribute accuracy, so control is not bought with adherence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.boxes import BoxTrack, parse_boxes
from tubelet.errors import DataError

__all__ = ["BoxItem", "evaluate_boxes", "format_box_table", "make_box_suite", "read_box_suite"]

PATHS = ("straight", "diagonal", "curved")


@dataclass
class BoxItem:
    prompt: str
    seed: int
    lang: str
    path: str
    boxes: dict[str, Any]
    line: int = 0

    @property
    def tracks(self) -> list[BoxTrack]:
        return parse_boxes(self.boxes)


def read_box_suite(path: str | Path) -> list[BoxItem]:
    """The items of a box suite file (DataError naming the line for a malformed one)."""
    from tubelet.boxes import BoxError
    from tubelet.core.parsing import read_jsonl
    from tubelet.recipes.shapes.grammar import parse_caption

    p = Path(path)
    items = []
    for n, row in read_jsonl(p, error=DataError, what="box suite"):
        where = f"{p}:{n}"
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DataError(f"{where}: expected an object with 'prompt', 'seed', 'lang', 'path', 'boxes'")
        seed, lang, kind = row.get("seed"), row.get("lang", "en"), row.get("path", "straight")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DataError(f"{where}: 'seed' must be an integer, got {seed!r}")
        if lang not in ("en", "zh") or kind not in PATHS:
            raise DataError(f"{where}: 'lang' must be en or zh and 'path' one of {list(PATHS)}")
        try:
            spec = parse_caption(row["prompt"])
            tracks = parse_boxes(row.get("boxes"), f"{where}: boxes")
            for t in tracks:
                t.check(num_objects=len(spec.objects))
        except (BoxError, ValueError) as e:
            raise DataError(f"{where}: {e}") from None
        items.append(BoxItem(row["prompt"], seed, lang, kind, row["boxes"], n))
    if not items:
        raise DataError(f"{p}: the box suite holds no clips")
    return items


# ------------------------------------------------------------------------------------------- the suite


def _path(
    kind: str, rng: np.random.Generator, half: float, band: tuple[float, float]
) -> list[tuple[float, float]]:
    """Centre positions (x, y) at t = 0, 1/4, ..., 1 for a path of `kind` inside the frame."""
    lo, hi = half + 0.02, 1 - half - 0.02
    y_lo, y_hi = max(lo, band[0] + half), min(hi, band[1] - half)
    if kind == "straight":  # along one axis: what the prompt's motion says
        if rng.random() < 0.5:
            y = rng.uniform(y_lo, y_hi)
            xs = (lo, hi) if rng.random() < 0.5 else (hi, lo)
            a, b = (xs[0], y), (xs[1], y)
        else:
            x = rng.uniform(lo, hi)
            a, b = (x, y_lo), (x, y_hi)
            if rng.random() < 0.5:
                a, b = b, a
        bend = 0.0
    else:  # corner to corner of the object's band; curved: bulging sideways by a quarter frame
        a, b = (lo, y_lo), (hi, y_hi)
        if rng.random() < 0.5:
            a, b = (hi, y_lo), (lo, y_hi)
        if rng.random() < 0.5:
            a, b = b, a
        bend = 0.0 if kind == "diagonal" else float(rng.choice([-0.25, 0.25]))
    pts = []
    for u in np.linspace(0, 1, 5):
        x = a[0] + (b[0] - a[0]) * u
        y = a[1] + (b[1] - a[1]) * u
        # a sideways bulge (perpendicular to a -> b), zero at the ends
        dx, dy = b[0] - a[0], b[1] - a[1]
        norm = math.hypot(dx, dy) or 1.0
        off = bend * 4 * u * (1 - u)
        x, y = x - dy / norm * off, y + dx / norm * off
        pts.append((float(np.clip(x, lo, hi)), float(np.clip(y, y_lo, y_hi))))
    return pts


def _motion(pts: list[tuple[float, float]]) -> str:
    dx, dy = pts[-1][0] - pts[0][0], pts[-1][1] - pts[0][1]
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def make_box_suite(per_kind: int = 8, *, seed: int = 424242, frames: int = 16) -> list[dict[str, Any]]:
    """Box suite lines: for each path kind, `per_kind` clips with 1 object and `per_kind` with 2,
    alternating English and Chinese; in 2-object clips the second track is soft."""
    from tubelet.recipes.shapes.grammar import COLORS, SHAPES, SIZES, ObjectSpec, PromptSpec, caption

    rng = np.random.default_rng(seed)
    colors, out = list(COLORS), []
    for kind in PATHS:
        for n_obj in (1, 2):
            for k in range(per_kind):
                picked = rng.choice(len(colors), size=n_obj, replace=False)
                objects, tracks = [], []
                for j in range(n_obj):
                    size = str(rng.choice(["small", "medium"]))
                    half = SIZES[size] / 2
                    band = (0.0, 1.0) if n_obj == 1 else ((0.0, 0.5) if j == 0 else (0.5, 1.0))
                    pts = _path(kind, rng, half, band)
                    objects.append(
                        ObjectSpec(colors[int(picked[j])], str(rng.choice(SHAPES)), size, _motion(pts))
                    )
                    keyframes = []
                    for i, (x, y) in enumerate(pts):
                        frame = round(i * (frames - 1) / (len(pts) - 1))
                        if kind == "straight" and i not in (0, len(pts) - 1):
                            continue  # a straight path needs its ends only
                        box = [round(v, 4) for v in (x - half, y - half, x + half, y + half)]
                        keyframes.append(
                            {"frame": frame, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}
                        )
                    soft = j == 1
                    if soft:  # a region a third wider than the object around its path
                        for kf in keyframes:
                            pad = half / 3
                            kf.update(
                                x0=round(max(0.0, kf["x0"] - pad), 4), y0=round(max(0.0, kf["y0"] - pad), 4),
                                x1=round(min(1.0, kf["x1"] + pad), 4), y1=round(min(1.0, kf["y1"] + pad), 4),
                            )  # fmt: skip
                    tracks.append({"object": j, "mode": "soft" if soft else "hard", "keyframes": keyframes})
                lang = "en" if k % 2 == 0 else "zh"
                spec = PromptSpec(tuple(objects), str(rng.choice(["gray", "black"])))
                out.append(
                    {"prompt": caption(spec, lang), "seed": int(rng.integers(10**6, 2 * 10**6)), "lang": lang,
                     "path": kind, "boxes": {"tracks": tracks}}
                )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------- scoring


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_boxes(frames: np.ndarray, item: BoxItem) -> dict[str, Any]:
    """Per-clip box scores of generated `frames` (uint8 (T, H, W, 3)) against `item`'s tracks."""
    from tubelet.recipes.shapes.grammar import parse_caption
    from tubelet.recipes.shapes.oracle import _match, analyse_clip, score_analysis

    analysis = analyse_clip(frames)
    match = _match(parse_caption(item.prompt), analysis.tracks)
    h, w = frames.shape[1:3]
    tol_x, tol_y = 0.5 / w, 0.5 / h
    ious: list[float] = []
    keys: list[bool] = []
    inside: list[bool] = []
    for track in item.tracks:
        assert isinstance(track.object, int)
        det = analysis.tracks[match[track.object]] if track.object in match else None
        key_frames = {k.frame for k in track.keyframes}
        for f in range(track.first_frame, min(track.last_frame, len(frames) - 1) + 1):
            want = track.box_at(f)
            assert want is not None
            got = det.boxes.get(f) if det is not None else None
            if track.hard:
                v = _iou(want, got) if got is not None else 0.0
                ious.append(v)
                if f in key_frames:
                    keys.append(v >= 0.5)
            else:
                inside.append(
                    got is not None
                    and got[0] >= want[0] - tol_x and got[1] >= want[1] - tol_y
                    and got[2] <= want[2] + tol_x and got[3] <= want[3] + tol_y
                )  # fmt: skip
    attrs = score_analysis(analysis, item.prompt).attributes
    per = {a: [r.passed for r in attrs if r.attribute == a] for a in ("color", "shape")}
    return {
        "ious": ious,
        "keys": keys,
        "inside": inside,
        "color": per["color"],
        "shape": per["shape"],
    }


def _summarise(scores: list[dict[str, Any]]) -> dict[str, Any]:
    ious = [v for s in scores for v in s["ious"]]
    keys = [v for s in scores for v in s["keys"]]
    inside = [v for s in scores for v in s["inside"]]
    color = [v for s in scores for v in s["color"]]
    shape = [v for s in scores for v in s["shape"]]

    def mean(xs: Sequence[float | bool]) -> float | None:
        return float(np.mean(xs)) if len(xs) else None

    return {
        "clips": len(scores),
        "mean_iou": mean(ious),
        "frac_iou50": mean([v >= 0.5 for v in ious]),
        "ap50": mean(keys),
        "soft_containment": mean(inside),
        "color": mean(color),
        "shape": mean(shape),
    }


def _groups(items: list[BoxItem], scores: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"all": _summarise(scores)}
    keys: list[tuple[str, Any]] = [
        ("path", lambda it: it.path),
        ("lang", lambda it: it.lang),
        ("objects", lambda it: str(len(it.tracks))),
    ]
    for name, key in keys:
        values = sorted({key(it) for it in items})
        out[name] = {v: _summarise([s for it, s in zip(items, scores) if key(it) == v]) for v in values}
    return out


def evaluate_boxes(
    pipe: Any, items: list[BoxItem], *, baseline: bool = True, progress: bool = True, **settings: Any
) -> dict[str, Any]:
    """Generate every item with its boxes (and without, with `baseline`) and score them (module doc)."""
    from tqdm.auto import tqdm

    from tubelet.pipelines import GenerationRequest

    if not getattr(pipe, "has_box_control", False):
        from tubelet.boxes import BoxError

        raise BoxError("this model has no box control (no box_adapter/): nothing to evaluate")
    with_boxes: list[dict[str, Any]] = []
    without: list[dict[str, Any]] = []
    for it in tqdm(items, desc="boxes", unit="clip", disable=not progress):
        r = pipe.generate(
            GenerationRequest(it.prompt, seed=it.seed, boxes=it.boxes, **settings), progress=False
        )
        with_boxes.append(score_boxes(r.frames, it))
        if baseline:
            r0 = pipe.generate(GenerationRequest(it.prompt, seed=it.seed, **settings), progress=False)
            without.append(score_boxes(r0.frames, it))
    report: dict[str, Any] = {"with_boxes": _groups(items, with_boxes)}
    if baseline:
        report["without_boxes"] = _groups(items, without)
    report["settings"] = {k: v for k, v in settings.items()}
    return report


def format_box_table(report: dict[str, Any]) -> str:
    """A plain-text table of a box report: rows = groups, columns = the metrics, with/without boxes."""

    def fmt(v: float | None) -> str:
        return "   -" if v is None else f"{v:5.3f}"

    cols = ("mean_iou", "frac_iou50", "ap50", "soft_containment", "color", "shape")
    lines = [f"{'':22s}{'clips':>6s}  " + "  ".join(f"{c:>16s}" for c in cols)]
    for run in ("with_boxes", "without_boxes"):
        if run not in report:
            continue
        lines.append(run.replace("_", " "))
        groups = report[run]
        rows = [("all", groups["all"])] + [
            (f"{g} {k}", v) for g in ("path", "lang", "objects") for k, v in groups[g].items()
        ]
        for name, s in rows:
            lines.append(f"  {name:20s}{s['clips']:6d}  " + "  ".join(f"{fmt(s[c]):>16s}" for c in cols))
    return "\n".join(lines)
