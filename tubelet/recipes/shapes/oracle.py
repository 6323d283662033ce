"""The shapes-world oracle: exact, classical-vision prompt adherence for shapes-world clips.

Given frames (uint8 (T, H, W, 3)) and a shapes-world prompt (English or Chinese), every attribute
the prompt names is checked: per object its colour, shape, motion and (only if named) size; the
background if named; and that the clip holds exactly the named number of objects.

Method (numpy / scipy / OpenCV only):
1. every pixel is labelled with its nearest palette colour (6 object + 3 background colours) when
   within `COLOR_THRESHOLD` (RGB distance); otherwise it is unlabelled (edges, noise, garbage);
2. background = the background colour covering most pixels, if it covers >= `BG_MIN_FRACTION`;
3. per frame and colour, 4-connected components of the labelled pixels (pieces at most one pixel
   apart are joined: h264 ringing can split an object), larger than a third of the smallest object;
4. geometry comes from the anti-aliased coverage, not the hard mask: around each component,
   coverage = projection of (pixel - background) onto (object colour - background), clipped to
   [0, 1]. Sums of coverage survive anti-aliasing, h264 blur and pixel noise. From it: the area,
   the centroid, the widest row and tallest column (the box), fill = area / box (circle ~0.785,
   square 1, triangle ~0.5-0.6), the skewness of the vertical mass profile (apex-up triangle
   ~ -0.57, circle and square ~0, an upside-down triangle +0.57) and a corner measure, the
   kurtosis of the mass along the diagonals minus along the axes (square ~0.6, disc 0);
5. components of one colour are linked into tracks across frames (the per-colour object count is
   the most common per-frame count; frames with that count are linked by optimal assignment); per
   track: shape from skew (triangle) then fill + corners (square / circle), size from the box side relative to
   the frame's short side, motion from a least-squares line through the centroids (total
   displacement < `STILL_THRESHOLD` of the frame = still, else the dominant axis and its sign);
6. prompt objects are matched to tracks by optimal assignment: colour first, then shape, size and
   motion agreement (so two objects of one colour are told apart by their other attributes); a
   prompt object left without a same-colour track may take a leftover track of another colour (its
   colour then fails, its other attributes are still scored).

"no_extra_objects" passes when the number of detected objects equals the number named (so an
empty or garbage clip fails it too).

`evaluate_folder` scores a folder of videos with captions; `evaluate_model` generates a prompt
suite (`read_suite`: the engine's suite format, every prompt checked against the grammar) with a
pipeline and scores the raw frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.errors import CaptionError, DataError
from tubelet.eval.suite import SuiteItem, generate_suite, generation_settings
from tubelet.eval.suite import read_suite as _read_suite
from tubelet.recipes.shapes.grammar import (
    BACKGROUNDS,
    COLORS,
    SIZES,
    PromptSpec,
    detect_language,
    parse_caption,
)

__all__ = [
    "ATTRIBUTES",
    "AttributeResult",
    "ClipAnalysis",
    "ClipResult",
    "Track",
    "aggregate",
    "analyse_clip",
    "detect_background",
    "detect_objects",
    "evaluate_folder",
    "evaluate_model",
    "format_table",
    "read_suite",
    "score_analysis",
    "score_clip",
]

ATTRIBUTES = ("color", "shape", "motion", "size", "background", "no_extra_objects")
COLOR_THRESHOLD = 60.0  # max RGB distance from a palette colour for a pixel to count as that colour
BG_MIN_FRACTION = 0.35  # the background colour must cover at least this share of all pixels
STILL_THRESHOLD = 0.08  # total displacement (fraction of the frame) below which an object is still
MIN_AREA_FACTOR = 0.35  # components smaller than this times a small triangle's area are ignored
SIZE_EDGES = (0.195, 0.29)  # box side / short side: small < 0.195 <= medium < 0.29 <= big
FILL_MIN = 0.66  # symmetric shapes filling less of their box than this: "other"
SKEW_TRIANGLE = 0.2  # skew below -0.2: an apex-up triangle; above +0.2: not a shapes-world shape
ASPECT_RANGE = (0.6, 1.6)  # widest row / tallest column outside this range: "other"

_OBJ_NAMES = tuple(COLORS)
_BG_NAMES = tuple(BACKGROUNDS)
_PALETTE = np.asarray([*COLORS.values(), *BACKGROUNDS.values()], np.float32)  # (9, 3)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class AttributeResult:
    """One checked attribute. `object_index` is the prompt object (None for clip-level checks)."""

    object_index: int | None
    attribute: str  # "color" | "shape" | "motion" | "size" | "background" | "no_extra_objects"
    expected: str
    observed: str | None
    passed: bool


@dataclass
class ClipResult:
    """All attribute checks for one (clip, prompt) pair."""

    prompt: str
    lang: str
    attributes: list[AttributeResult]
    accuracy: float
    whole_prompt: bool
    video: str | None = None
    detected: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "prompt": self.prompt,
            "lang": self.lang,
            "accuracy": self.accuracy,
            "whole_prompt": self.whole_prompt,
            "attributes": [asdict(a) for a in self.attributes],
            "detected": self.detected,
        }


@dataclass
class Track:
    """One detected object followed over the clip."""

    color: str
    shape: str
    size: str
    motion: str
    displacement: tuple[float, float]  # (dx, dy) over the clip, fractions of the frame width / height
    frames: int  # frames in which it was seen
    fill: float  # soft area / (widest row x tallest column): circle ~0.785, square 1, triangle 0.5
    skew: float  # skewness of the vertical mass profile: apex-up triangle ~ -0.57, circle / square 0
    corner: float  # diagonal minus axis kurtosis of the mass: square ~ +0.6, circle ~ 0
    aspect: float  # widest row / tallest column
    side: float  # median box side as a fraction of the frame's short side
    # frame -> (x0, y0, x1, y1) in [0, 1] image coordinates, for the frames it was seen in
    boxes: dict[int, tuple[float, float, float, float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("boxes")  # per-frame geometry stays out of reports
        return d


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def _palette_labels(frames: np.ndarray) -> np.ndarray:
    """Nearest palette index per pixel, -1 where farther than COLOR_THRESHOLD: int8 (T, H, W)."""
    x = frames.astype(np.float32)  # (T, H, W, 3)
    # squared distances via |x|^2 - 2 x.p + |p|^2, (T, H, W, 9)
    d2 = (x * x).sum(-1, keepdims=True) - 2 * (x @ _PALETTE.T) + (_PALETTE * _PALETTE).sum(-1)
    idx = d2.argmin(-1)
    best = np.take_along_axis(d2, idx[..., None], -1)[..., 0]
    labels = idx.astype(np.int8)
    labels[best > COLOR_THRESHOLD**2] = -1
    return labels


def detect_background(frames: np.ndarray, labels: np.ndarray | None = None) -> str | None:
    """The background colour name covering most pixels, or None if none covers BG_MIN_FRACTION."""
    frames = _check_frames(frames)
    if labels is None:
        labels = _palette_labels(frames)
    counts = np.bincount(labels.reshape(-1).astype(np.int64) + 1, minlength=len(_PALETTE) + 1)[1:]
    bg_counts = counts[len(_OBJ_NAMES) :]
    k = int(bg_counts.argmax())
    if bg_counts[k] < BG_MIN_FRACTION * labels.size:
        return None
    return _BG_NAMES[k]


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
_SQUARE5 = np.ones((5, 5), np.uint8)


@dataclass
class _Detection:
    cx: float  # alpha-weighted centroid, pixels
    cy: float
    area: float  # soft area (sum of coverage), pixels
    side_x: float  # widest row (sum of coverage), pixels
    side_y: float  # tallest column, pixels
    skew: float  # skewness of the row profile (apex-up triangle ~ -0.57, symmetric shapes 0)
    corner: float  # diagonal minus axis kurtosis of the mass (square ~ +0.6, circle 0)
    var_x: float = 0.0  # variance of the mass along x / y (pixels^2): the box, given the shape
    var_y: float = 0.0


def _kurtosis(alpha: np.ndarray, p: np.ndarray, area: float) -> float:
    m2 = float((alpha * p * p).sum()) / area
    m4 = float((alpha * p**4).sum()) / area
    return m4 / (m2 * m2) if m2 > 1e-9 else 0.0


def _soft_features(
    frame: np.ndarray, support: np.ndarray, color: np.ndarray, bg: np.ndarray, y0: int, x0: int
) -> _Detection | None:
    """Geometry of one object from its anti-aliased coverage.

    frame: float32 (h, w, 3) window; support: bool (h, w) pixels that may belong to the object.
    Coverage alpha = projection of (pixel - bg) on (color - bg), kept where the pixel lies near that
    line; sums of alpha are robust to anti-aliasing, blur (h264) and pixel noise.
    """
    v = color - bg  # (3,)
    vv = float(v @ v)
    if vv < 1.0:
        return None
    d = frame - bg  # (h, w, 3)
    proj = (d @ v) / vv  # (h, w)
    resid = np.sqrt(np.maximum((d * d).sum(-1) - proj * proj * vv, 0.0))
    alpha = np.clip(proj, 0.0, 1.0)
    alpha[(resid > COLOR_THRESHOLD) | ~support] = 0.0
    area = float(alpha.sum())
    if area <= 0:
        return None
    rows = alpha.sum(1)  # (h,)
    cols = alpha.sum(0)  # (w,)
    ys = np.arange(len(rows), dtype=np.float64) + 0.5
    xs = np.arange(len(cols), dtype=np.float64) + 0.5
    my = float((rows * ys).sum() / area)
    mx = float((cols * xs).sum() / area)
    var = float((rows * (ys - my) ** 2).sum() / area)
    m3 = float((rows * (ys - my) ** 3).sum() / area)
    skew = m3 / var**1.5 if var > 1e-9 else 0.0
    # corners: a square's mass profile is flat along the axes (kurtosis 1.8) and triangular along
    # the diagonals (2.4); a disc's is the same in every direction (2.0)
    dx = (xs - mx)[None, :]  # (1, w)
    dy = (ys - my)[:, None]  # (h, 1)
    k_axes = _kurtosis(alpha, dx + 0 * dy, area) + _kurtosis(alpha, dy + 0 * dx, area)
    k_diag = _kurtosis(alpha, (dx + dy) / np.sqrt(2), area) + _kurtosis(alpha, (dx - dy) / np.sqrt(2), area)
    corner = (k_diag - k_axes) / 2
    var_x = float((cols * (xs - mx) ** 2).sum() / area)
    return _Detection(x0 + mx, y0 + my, area, float(rows.max()), float(cols.max()), skew, corner, var_x, var)


def _components(
    frame: np.ndarray,
    labels: np.ndarray,
    c: int,
    bg: np.ndarray | None,
    min_area: float,
) -> list[_Detection]:
    """Objects of palette colour `c` in one frame (frame float32 (H, W, 3), labels int8 (H, W))."""
    import cv2

    core = (labels == c).view(np.uint8)  # (H, W) 0/1
    if int(core.sum()) < min_area:
        return []
    # group core pixels that are at most one pixel apart (h264 ringing can split an object)
    n, groups = cv2.connectedComponents(cv2.dilate(core, _CROSS), connectivity=4)
    groups = groups * core
    h, w = labels.shape
    others = (labels >= 0) & (labels < len(_OBJ_NAMES)) & (labels != c)  # other colours' cores
    out = []
    for k in range(1, n):
        mask = groups == k
        area = int(mask.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(mask)
        y0, y1 = max(int(ys.min()) - 2, 0), min(int(ys.max()) + 3, h)
        x0, x1 = max(int(xs.min()) - 2, 0), min(int(xs.max()) + 3, w)
        win_core = mask[y0:y1, x0:x1].view(np.uint8)
        support = cv2.dilate(win_core, _SQUARE5).astype(bool)
        support &= ~others[y0:y1, x0:x1]
        support &= (groups[y0:y1, x0:x1] == 0) | (groups[y0:y1, x0:x1] == k)
        win = frame[y0:y1, x0:x1]
        b = bg
        if b is None:  # no palette background: use the median colour around the object
            ring = win[~support]
            b = np.median(ring, axis=0) if len(ring) else np.median(win.reshape(-1, 3), axis=0)
        det = _soft_features(win, support, _PALETTE[c], b, y0, x0)
        if det is not None:
            out.append(det)
    return out


def _box_of(d: _Detection, shape: str) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) pixels of a detection, from its mass moments and its shape.

    Sums of anti-aliased coverage locate an object to a fraction of a pixel where edges and thin
    apexes defeat thresholds: a w x h square has variance w^2/12 along x, a disc of diameter D has
    D^2/16, an apex-up triangle of base B and height H has B^2/24 along x, H^2/18 along y and its
    centroid a third of the way up from the base.
    """
    if shape == "triangle":
        w, h = math.sqrt(24 * d.var_x), math.sqrt(18 * d.var_y)
        return (d.cx - w / 2, d.cy - 2 * h / 3, d.cx + w / 2, d.cy + h / 3)
    k = 12.0 if shape == "square" else 16.0
    w, h = math.sqrt(k * d.var_x), math.sqrt(k * d.var_y)
    return (d.cx - w / 2, d.cy - h / 2, d.cx + w / 2, d.cy + h / 2)


def _classify_shape(fill: float, skew: float, corner: float, aspect: float) -> str:
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return "other"  # elongated: not a shapes-world shape
    if skew < -SKEW_TRIANGLE:
        return "triangle"
    if skew > SKEW_TRIANGLE:
        return "other"  # e.g. an upside-down triangle
    if fill < FILL_MIN:
        return "other"
    # squareness: 0 for a disc, 1 for a square, from the corner kurtosis and the fill ratio together
    squareness = 0.5 * (corner / 0.6 + (fill - np.pi / 4) / (1 - np.pi / 4))
    return "square" if squareness >= 0.5 else "circle"


def _classify_size(side: float) -> str:
    if side < SIZE_EDGES[0]:
        return "small"
    return "medium" if side < SIZE_EDGES[1] else "big"


def detect_objects(frames: np.ndarray, labels: np.ndarray | None = None) -> list[Track]:
    """Detect and track the shapes-world objects in a clip (uint8 (T, H, W, 3))."""
    from scipy.optimize import linear_sum_assignment

    frames = _check_frames(frames)
    if labels is None:
        labels = _palette_labels(frames)
    t_len, h, w = labels.shape
    short = min(h, w)
    min_area = max(4.0, MIN_AREA_FACTOR * 0.5 * (SIZES["small"] * short) ** 2)
    bg_name = detect_background(frames, labels)
    bg = None if bg_name is None else np.asarray(BACKGROUNDS[bg_name], np.float32)
    fframes = frames.astype(np.float32)
    tracks: list[Track] = []
    present = np.bincount(labels.reshape(-1).astype(np.int64) + 1, minlength=len(_PALETTE) + 1)[1:]
    for c, name in enumerate(_OBJ_NAMES):
        if present[c] < min_area:
            continue
        per_frame = [_components(fframes[t], labels[t], c, bg, min_area) for t in range(t_len)]
        counts = np.bincount([len(d) for d in per_frame])
        k = int(np.flatnonzero(counts == counts.max()).max())  # most common count (ties: the larger)
        if k == 0:
            continue
        kept = [t for t in range(t_len) if len(per_frame[t]) == k]
        # link detections frame to frame: links[j] = [(t, detection), ...]
        links: list[list[tuple[int, _Detection]]] = [[(kept[0], d)] for d in per_frame[kept[0]]]
        for t in kept[1:]:
            prev = np.array([[lk[-1][1].cx, lk[-1][1].cy] for lk in links])  # (k, 2)
            cur = np.array([[d.cx, d.cy] for d in per_frame[t]])  # (k, 2)
            cost = ((prev[:, None, :] - cur[None, :, :]) ** 2).sum(-1)
            rows, cols = linear_sum_assignment(cost)
            for r, col in zip(rows, cols):
                links[r].append((t, per_frame[t][col]))
        for lk in links:
            ts = np.array([t for t, _ in lk], np.float64)
            det = np.array(
                [[d.cx, d.cy, d.area, d.side_x, d.side_y, d.skew, d.corner] for _, d in lk]
            )  # (n, 7)
            if len(ts) >= 2 and t_len > 1:
                span = t_len - 1
                dx = float(np.polyfit(ts, det[:, 0] / w, 1)[0] * span)
                dy = float(np.polyfit(ts, det[:, 1] / h, 1)[0] * span)
            else:
                dx = dy = 0.0
            if max(abs(dx), abs(dy)) < STILL_THRESHOLD:
                motion = "still"
            elif abs(dx) >= abs(dy):
                motion = "right" if dx > 0 else "left"
            else:
                motion = "down" if dy > 0 else "up"
            fill = float(np.median(det[:, 2] / (det[:, 3] * det[:, 4])))
            skew = float(np.median(det[:, 5]))
            corner = float(np.median(det[:, 6]))
            aspect = float(np.median(det[:, 3] / det[:, 4]))
            side = float(np.median(np.maximum(det[:, 3], det[:, 4]))) / short
            shape = _classify_shape(fill, skew, corner, aspect)
            tracks.append(
                Track(
                    color=name,
                    shape=shape,
                    size=_classify_size(side),
                    motion=motion,
                    displacement=(dx, dy),
                    frames=len(ts),
                    fill=fill,
                    skew=skew,
                    corner=corner,
                    aspect=aspect,
                    side=side,
                    boxes={int(t): _normalised(_box_of(d, shape), w, h) for t, d in lk},
                )
            )
    return tracks


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _normalised(box: tuple[float, float, float, float], w: int, h: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return (max(0.0, x0 / w), max(0.0, y0 / h), min(1.0, x1 / w), min(1.0, y1 / h))


def _match(spec: PromptSpec, tracks: list[Track]) -> dict[int, int]:
    """Prompt object index -> track index, by optimal assignment: colour first, then shape, size
    (when named) and motion agreement."""
    from scipy.optimize import linear_sum_assignment

    if not tracks:
        return {}
    cost = np.zeros((len(spec.objects), len(tracks)))
    for i, o in enumerate(spec.objects):
        for j, tr in enumerate(tracks):
            # appearance identifies an object before motion: colour >> shape > size > motion
            cost[i, j] = (
                100.0 * (o.color != tr.color)
                + 4.0 * (o.shape != tr.shape)
                + 2.0 * (o.size != "medium" and o.size != tr.size)
                + 1.0 * (o.motion != tr.motion)
            )
    rows, cols = linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, cols)}


@dataclass
class ClipAnalysis:
    """What the oracle sees in a clip, independent of any prompt."""

    background: str | None
    tracks: list[Track]


def analyse_clip(frames: np.ndarray) -> ClipAnalysis:
    """Detect the background and the tracked objects of a clip (uint8 (T, H, W, 3))."""
    frames = _check_frames(frames)
    labels = _palette_labels(frames)
    return ClipAnalysis(detect_background(frames, labels), detect_objects(frames, labels))


def score_analysis(analysis: ClipAnalysis, prompt: str) -> ClipResult:
    """Score a prompt against an `analyse_clip` result (lets several prompts share one analysis)."""
    spec = parse_caption(prompt)
    tracks = analysis.tracks
    match = _match(spec, tracks)
    results: list[AttributeResult] = []
    for i, o in enumerate(spec.objects):
        tr = tracks[match[i]] if i in match else None
        checks = [("color", o.color), ("shape", o.shape), ("motion", o.motion)]
        if o.size != "medium":
            checks.append(("size", o.size))
        for attr, expected in checks:
            observed = getattr(tr, attr) if tr is not None else None
            results.append(AttributeResult(i, attr, expected, observed, observed == expected))
    if spec.background is not None:
        bg = analysis.background
        results.append(AttributeResult(None, "background", spec.background, bg, bg == spec.background))
    n_exp, n_obs = len(spec.objects), len(tracks)
    results.append(AttributeResult(None, "no_extra_objects", str(n_exp), str(n_obs), n_exp == n_obs))
    passed = sum(r.passed for r in results)
    return ClipResult(
        prompt=prompt,
        lang=detect_language(prompt),
        attributes=results,
        accuracy=passed / len(results),
        whole_prompt=passed == len(results),
        detected=[t.to_dict() for t in tracks],
    )


def score_clip(frames: np.ndarray, prompt: str) -> ClipResult:
    """Score how well `frames` (uint8 (T, H, W, 3)) realise the shapes-world `prompt`.

    Raises `CaptionError` if the prompt is not in the shapes-world grammar and ValueError for
    frames of the wrong type or shape.
    """
    frames = _check_frames(frames)
    parse_caption(prompt)  # a bad prompt fails before any work
    return score_analysis(analyse_clip(frames), prompt)


def _summary(results: list[ClipResult]) -> dict[str, Any]:
    attrs = [a for r in results for a in r.attributes]
    per_attr: dict[str, dict[str, Any]] = {}
    for name in ATTRIBUTES:
        sel = [a.passed for a in attrs if a.attribute == name]
        if sel:
            per_attr[name] = {"passed": int(sum(sel)), "total": len(sel), "accuracy": sum(sel) / len(sel)}
    return {
        "num_clips": len(results),
        "accuracy": (sum(a.passed for a in attrs) / len(attrs)) if attrs else 0.0,
        "whole_prompt": (sum(r.whole_prompt for r in results) / len(results)) if results else 0.0,
        "num_attributes": len(attrs),
        "per_attribute": per_attr,
    }


def aggregate(results: list[ClipResult]) -> dict[str, Any]:
    """Summarise clip results: overall attribute accuracy, whole-prompt rate, per attribute and
    per language, plus every clip's details under "clips"."""
    report = _summary(results)
    report["per_language"] = {
        lang: _summary([r for r in results if r.lang == lang])
        for lang in ("en", "zh")
        if any(r.lang == lang for r in results)
    }
    report["clips"] = [r.to_dict() for r in results]
    return report


def evaluate_folder(directory: Path, *, progress: bool = True) -> dict[str, Any]:
    """Score every line of `directory/captions.jsonl` against its video; returns `aggregate(...)`
    plus "directory". Each video is decoded once even when it has several captions."""
    from tqdm import tqdm

    from tubelet.data.dataset import CaptionEntry, read_captions
    from tubelet.media import read_video

    directory = Path(directory)
    captions = read_captions(directory)
    if not captions.entries:
        raise DataError(f"{captions.file}: no captions")
    by_video: dict[str, list[CaptionEntry]] = {}
    for entry in captions.entries:
        by_video.setdefault(entry.video, []).append(entry)
    for entry in captions.entries:  # every caption must parse before any video is decoded
        try:
            parse_caption(entry.caption)
        except CaptionError as e:
            raise DataError(f"{captions.file}:{entry.line}: {e}") from None
    results: list[ClipResult] = []
    for rel, group in tqdm(by_video.items(), desc="oracle", unit="video", disable=not progress):
        analysis = analyse_clip(read_video(group[0].path).frames)
        for entry in group:
            res = score_analysis(analysis, entry.caption)
            res.video = rel
            results.append(res)
    report = aggregate(results)
    report["directory"] = str(directory)
    return report


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of an `aggregate` report."""
    langs = report.get("per_language", {})
    lang_note = ", ".join(f"{k} {v['num_clips']}" for k, v in langs.items())
    lines = [
        f"shapes-world oracle: {report['num_clips']} prompts" + (f" ({lang_note})" if lang_note else ""),
        f"{'attribute':<18}{'passed':>8}{'total':>8}{'accuracy':>10}" + "".join(f"{k:>8}" for k in langs),
    ]
    for name, row in report["per_attribute"].items():
        per_lang = ""
        for v in langs.values():
            r = v["per_attribute"].get(name)
            per_lang += f"{r['accuracy']:>8.3f}" if r else f"{'-':>8}"
        lines.append(f"{name:<18}{row['passed']:>8}{row['total']:>8}{row['accuracy']:>10.3f}{per_lang}")
    passed = sum(r["passed"] for r in report["per_attribute"].values())
    total = sum(r["total"] for r in report["per_attribute"].values())
    per_lang = "".join(f"{v['accuracy']:>8.3f}" for v in langs.values())
    lines.append(f"{'all attributes':<18}{passed:>8}{total:>8}{report['accuracy']:>10.3f}{per_lang}")
    whole = round(report["whole_prompt"] * report["num_clips"])
    per_lang = "".join(f"{v['whole_prompt']:>8.3f}" for v in langs.values())
    lines.append(
        f"{'whole prompt':<18}{whole:>8}{report['num_clips']:>8}{report['whole_prompt']:>10.3f}{per_lang}"
    )
    return "\n".join(lines)


def read_suite(path: str | Path) -> list[SuiteItem]:
    """A prompt suite (`tubelet.eval.suite.read_suite`) whose every prompt parses in the grammar."""
    return _read_suite(path, check=parse_caption)


def evaluate_model(
    pipe: Any,
    suite: str | Path | Sequence[SuiteItem],
    *,
    batch_size: int = 8,
    videos_out: str | Path | None = None,
    progress: bool = True,
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """Generate every suite prompt (its own seed, the model's default settings unless overridden by
    `generate_kwargs`) and score it with the oracle.

    Returns `aggregate` over all clips (per attribute, per language, whole prompt, every clip under
    "clips" with its seed) plus "suite", "model" and "settings". With `videos_out`, clips are also
    written there as ``{n:05d}.mp4`` with a ``captions.jsonl`` (`evaluate_folder` re-scores them).
    """
    source = str(suite) if isinstance(suite, (str, Path)) else None
    items = read_suite(suite) if isinstance(suite, (str, Path)) else list(suite)
    results: list[ClipResult] = []
    settings: dict[str, Any] = {}
    for done in generate_suite(
        pipe, items, batch_size=batch_size, videos_out=videos_out, progress=progress, desc="oracle",
        **generate_kwargs,
    ):  # fmt: skip
        res = score_clip(done.output.frames, done.item.prompt)
        if done.item.lang is not None:
            res.lang = done.item.lang
        res.video = done.video
        results.append(res)
        settings = settings or generation_settings(done.output.metadata)
    report = aggregate(results)
    for clip_row, it in zip(report["clips"], items):
        clip_row["seed"] = it.seed
    report["suite"] = source
    report["model"] = settings.get("model")
    report["settings"] = settings
    if videos_out is not None:
        report["videos"] = str(videos_out)
    return report
