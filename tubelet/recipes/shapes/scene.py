"""Scenes: a `PromptSpec` realised as a layout of non-overlapping objects with linear motion.

Positions are fractions of the frame; a scene renders at any resolution with its aspect ratio
(`tubelet.recipes.shapes.render`). Everything random takes an explicit `numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tubelet.errors import CaptionError, DataError
from tubelet.recipes.shapes.grammar import (
    BACKGROUNDS,
    COLORS,
    MAX_OBJECTS,
    MOTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    PromptSpec,
    _check_word,
    caption,
)

__all__ = [
    "FREE_KINDS",
    "MIN_TRAVEL",
    "TIMINGS",
    "Scene",
    "SceneObject",
    "sample_free_scene",
    "sample_scene",
    "scene_for_spec",
]

MIN_TRAVEL = 0.30  # a moving object's displacement, as a fraction of the frame along its axis
EDGE_MARGIN = 0.02  # keep objects this far (fraction of the frame) from the border
GAP = 0.07  # minimum gap between two objects' boxes, as a fraction of the short side


@dataclass(frozen=True)
class SceneObject:
    """One placed object. Positions are the centre of its bounding box as (x, y) fractions of the
    frame width / height (y = 0 is the top row), at the first (`start`) and last (`end`) frame."""

    spec: ObjectSpec
    start: tuple[float, float]
    end: tuple[float, float]
    # Free motion (what text cannot say; box control asks for it): a curve through `via` (the
    # control point of a quadratic Bezier from start to end) and a timing along the path.
    via: tuple[float, float] | None = None
    timing: str = "linear"  # linear | accelerate | decelerate | stop_go

    def position(self, u: float) -> tuple[float, float]:
        """Centre at clip time `u` in [0, 1] (constant velocity unless `via` / `timing` say otherwise)."""
        s = _ease(u, self.timing)
        if self.via is None:
            return (
                self.start[0] + (self.end[0] - self.start[0]) * s,
                self.start[1] + (self.end[1] - self.start[1]) * s,
            )
        a, b = (1 - s) * (1 - s), 2 * (1 - s) * s
        c = s * s
        return (
            a * self.start[0] + b * self.via[0] + c * self.end[0],
            a * self.start[1] + b * self.via[1] + c * self.end[1],
        )


TIMINGS = ("linear", "accelerate", "decelerate", "stop_go")


def _ease(u: float, timing: str) -> float:
    """Progress along the path at clip time u: constant speed, speeding up, slowing down, or
    moving half way, stopping for the middle 30% of the clip and moving on."""
    if timing == "linear":
        return u
    if timing == "accelerate":
        return u * u
    if timing == "decelerate":
        return 1 - (1 - u) * (1 - u)
    if timing == "stop_go":
        if u < 0.35:
            return 0.5 * u / 0.35
        if u <= 0.65:
            return 0.5
        return 0.5 + 0.5 * (u - 0.65) / 0.35
    raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")


def _extent(size: str, aspect: float) -> tuple[float, float]:
    """Object box (width, height) as fractions of the frame for a frame of aspect W/H."""
    short = min(1.0, aspect)  # short side in units of the frame height
    s = SIZES[size] * short
    return s / aspect, s


@dataclass
class Scene:
    """A laid-out clip: the prompt it realises, the actual background, and the placed objects.

    `aspect` is the frame's width / height the layout was made for; render at any resolution with
    that aspect ratio.
    """

    spec: PromptSpec
    background: str
    objects: tuple[SceneObject, ...]
    aspect: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        objs = []
        for o in self.objects:
            w, h = _extent(o.spec.size, self.aspect)
            d = {
                **o.spec.to_dict(),
                "start": [float(o.start[0]), float(o.start[1])],
                "end": [float(o.end[0]), float(o.end[1])],
                "extent": [w, h],
            }
            if o.via is not None:
                d["via"] = [float(o.via[0]), float(o.via[1])]
            if o.timing != "linear":
                d["timing"] = o.timing
            objs.append(d)
        return {
            "spec": self.spec.to_dict(),
            "background": self.background,
            "aspect": self.aspect,
            "objects": objs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objs = tuple(
            SceneObject(
                ObjectSpec(o["color"], o["shape"], o["size"], o["motion"]),
                (float(o["start"][0]), float(o["start"][1])),
                (float(o["end"][0]), float(o["end"][1])),
                (float(o["via"][0]), float(o["via"][1])) if "via" in o else None,
                str(o.get("timing", "linear")),
            )
            for o in d["objects"]
        )
        bg = d["background"]
        _check_word("background", bg, tuple(BACKGROUNDS))
        return cls(PromptSpec.from_dict(d["spec"]), bg, objs, float(d.get("aspect", 1.0)))


def _overlap_times(a: np.ndarray, b: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Times t in [0, 1] with |a + b t| < s, per candidate: (lo, hi), empty where lo > hi."""
    moving = np.abs(b) > 1e-12
    safe_b = np.where(moving, b, 1.0)
    t0, t1 = (-s - a) / safe_b, (s - a) / safe_b
    lo = np.where(moving, np.maximum(np.minimum(t0, t1), 0.0), np.where(np.abs(a) < s, 0.0, 1.0))
    hi = np.where(moving, np.minimum(np.maximum(t0, t1), 1.0), np.where(np.abs(a) < s, 1.0, 0.0))
    return lo, hi


def _collide(start: np.ndarray, end: np.ndarray, size: str, q: SceneObject, aspect: float) -> np.ndarray:
    """Whether candidate boxes (centres start/end: (M, 2)) of `size` come closer than the gap to the
    placed object `q` at any time t in [0, 1]: bool (M,). Exact for linear motion."""
    pw, ph = _extent(size, aspect)
    qw, qh = _extent(q.spec.size, aspect)
    short = min(1.0, aspect)
    reach = ((pw + qw) / 2 + GAP * short / aspect, (ph + qh) / 2 + GAP * short)
    hit = np.ones(len(start), bool)
    lo_all, hi_all = np.zeros(len(start)), np.ones(len(start))
    for k in (0, 1):
        a = start[:, k] - q.start[k]
        b = (end[:, k] - start[:, k]) - (q.end[k] - q.start[k])
        lo, hi = _overlap_times(a, b, reach[k])
        hit &= lo <= hi
        lo_all, hi_all = np.maximum(lo_all, lo), np.minimum(hi_all, hi)
    return hit & (lo_all <= hi_all)


def _candidates(
    o: ObjectSpec, aspect: float, rng: np.random.Generator, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """`m` random placements of `o` inside the frame: start and end centres, (m, 2) each."""
    w, h = _extent(o.size, aspect)
    lo_x, hi_x = w / 2 + EDGE_MARGIN, 1 - w / 2 - EDGE_MARGIN
    lo_y, hi_y = h / 2 + EDGE_MARGIN, 1 - h / 2 - EDGE_MARGIN
    if o.motion == "still":
        pos = np.stack([rng.uniform(lo_x, hi_x, m), rng.uniform(lo_y, hi_y, m)], 1)
        return pos, pos.copy()
    horizontal = o.motion in ("left", "right")
    lo, hi = (lo_x, hi_x) if horizontal else (lo_y, hi_y)
    travel = rng.uniform(MIN_TRAVEL, max(MIN_TRAVEL, hi - lo), m)
    a = lo + rng.random(m) * (hi - lo - travel)  # the lower of the two endpoints
    cross = rng.uniform(lo_y, hi_y, m) if horizontal else rng.uniform(lo_x, hi_x, m)
    forward = o.motion in ("right", "down")  # increasing coordinate
    p0, p1 = (a, a + travel) if forward else (a + travel, a)
    if horizontal:
        return np.stack([p0, cross], 1), np.stack([p1, cross], 1)
    return np.stack([cross, p0], 1), np.stack([cross, p1], 1)


def _layout(
    spec: PromptSpec, aspect: float, rng: np.random.Generator, restarts: int = 20, tries: int = 512
) -> tuple[SceneObject, ...] | None:
    """Random non-overlapping placements for the prompt's objects, or None if none was found."""
    for o in spec.objects:
        w, h = _extent(o.size, aspect)
        span = (1 - w if o.motion in ("left", "right") else 1 - h) - 2 * EDGE_MARGIN
        if o.motion != "still" and span < MIN_TRAVEL:
            return None

    # place the most constrained objects (big movers) first; keep the prompt's order in the result
    def difficulty(i: int) -> float:
        o = spec.objects[i]
        s = SIZES[o.size]
        return s * (s + MIN_TRAVEL) if o.motion != "still" else s * s

    order = sorted(range(len(spec.objects)), key=lambda i: -difficulty(i))
    for _ in range(restarts):
        placed: dict[int, SceneObject] = {}
        for i in order:
            o = spec.objects[i]
            m = 1 if not placed else tries  # the first object can go anywhere
            start, end = _candidates(o, aspect, rng, m)
            ok = np.ones(m, bool)
            for q in placed.values():
                ok &= ~_collide(start, end, o.size, q, aspect)
            good = np.flatnonzero(ok)
            if len(good) == 0:
                break
            j = int(good[0])
            placed[i] = SceneObject(
                o, (float(start[j, 0]), float(start[j, 1])), (float(end[j, 0]), float(end[j, 1]))
            )
        if len(placed) == len(spec.objects):
            return tuple(placed[i] for i in range(len(spec.objects)))
    return None


def _check_aspect(aspect: float) -> float:
    aspect = float(aspect)
    if not 0.25 <= aspect <= 4.0:
        raise ValueError(f"frame aspect ratio (width / height) must be in [0.25, 4], got {aspect}")
    return aspect


def scene_for_spec(spec: PromptSpec, rng: np.random.Generator, *, aspect: float = 1.0) -> Scene:
    """A random non-overlapping layout realising `spec` (the background is drawn if not named).

    Raises `CaptionError` when the prompt cannot be laid out (e.g. three big objects all moving
    sideways do not fit in one frame).
    """
    aspect = _check_aspect(aspect)
    bg = spec.background
    if bg is None:
        bg = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    objects = _layout(spec, aspect, rng)
    if objects is None:
        raise CaptionError(
            f"cannot lay out {caption(spec)!r} without overlaps (moving objects travel >= "
            f"{MIN_TRAVEL:.0%} of the frame); use fewer, smaller or still objects"
        )
    return Scene(spec, bg, objects, aspect)


FREE_KINDS = ("diagonal", "curved", "crossing")


def sample_free_scene(rng: np.random.Generator, *, aspect: float = 1.0) -> Scene:
    """A scene whose motion text cannot fully say: diagonal or curved paths, speeding up, slowing
    down or stopping half way, or two objects crossing. The caption names each object's dominant
    direction (the grammar's words); its exact path is in the scene (and in its box tracks).

    One or two objects, small or medium; two objects either keep to their own half of the frame or
    (``crossing``) swap sides, passing in front of each other half way."""
    aspect = _check_aspect(aspect)
    colors = tuple(COLORS)
    kind = FREE_KINDS[int(rng.integers(len(FREE_KINDS)))]
    n = 2 if kind == "crossing" else int(rng.integers(1, 3))
    picked = rng.choice(len(colors), size=n, replace=False)
    flip = rng.random() < 0.5  # crossing: which object starts on the left
    objs = []
    for j in range(n):
        size = ("small", "medium")[int(rng.integers(2))]
        w, h = _extent(size, aspect)
        lo_x, hi_x = w / 2 + EDGE_MARGIN, 1 - w / 2 - EDGE_MARGIN
        if n == 1 or kind == "crossing":
            lo_y, hi_y = h / 2 + EDGE_MARGIN, 1 - h / 2 - EDGE_MARGIN
        else:  # one half each
            lo_y, hi_y = (
                (h / 2 + EDGE_MARGIN, 0.5 - h / 2) if j == 0 else (0.5 + h / 2, 1 - h / 2 - EDGE_MARGIN)
            )
        via = None
        if kind == "crossing":  # left <-> right through the middle, a little apart vertically
            y = 0.5 + (-1 if j == 0 else 1) * h / 2
            start, end = ((lo_x, y), (hi_x, y)) if (j == 0) != flip else ((hi_x, y), (lo_x, y))
        else:
            for _ in range(100):  # corner-ish to corner-ish: both axes travel
                start = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
                end = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
                dx, dy = abs(end[0] - start[0]), abs(end[1] - start[1])
                if max(dx, dy) >= MIN_TRAVEL and min(dx, dy) >= 0.5 * max(dx, dy) * (kind == "diagonal"):
                    break
            if kind == "curved":
                mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
                ex, ey = end[0] - start[0], end[1] - start[1]
                norm = max(1e-9, (ex * ex + ey * ey) ** 0.5)
                bulge = float(rng.choice([-1, 1])) * 0.5 * norm
                via = (
                    float(np.clip(mx - ey / norm * bulge, lo_x, hi_x)),
                    float(np.clip(my + ex / norm * bulge, lo_y, hi_y)),
                )
        timing = TIMINGS[int(rng.integers(len(TIMINGS)))]
        ex, ey = end[0] - start[0], end[1] - start[1]
        motion = ("right" if ex > 0 else "left") if abs(ex) >= abs(ey) else ("down" if ey > 0 else "up")
        spec = ObjectSpec(colors[int(picked[j])], SHAPES[int(rng.integers(len(SHAPES)))], size, motion)
        objs.append(
            SceneObject(spec, (float(start[0]), float(start[1])), (float(end[0]), float(end[1])), via, timing)
        )
    bg = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    named = rng.random() < 0.5
    return Scene(PromptSpec(tuple(o.spec for o in objs), bg if named else None), bg, tuple(objs), aspect)


def sample_scene(
    rng: np.random.Generator,
    *,
    num_objects: int | None = None,
    name_background: float = 0.5,
    aspect: float = 1.0,
) -> Scene:
    """Draw a random scene: 1-3 objects (uniform, or `num_objects`), every attribute uniform, the
    background uniform and named in the caption with probability `name_background`.

    Attribute draws that cannot be laid out (three-object scenes with several big movers, e.g. three
    big objects moving sideways) are redrawn with the same object count, so big moving objects are
    somewhat rarer in three-object scenes than a uniform draw would make them."""
    aspect = _check_aspect(aspect)
    if num_objects is not None and not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
    colors, sizes = tuple(COLORS), tuple(SIZES)
    n = num_objects if num_objects is not None else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(1000):
        objs = tuple(
            ObjectSpec(
                color=colors[int(rng.integers(len(colors)))],
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                size=sizes[int(rng.integers(len(sizes)))],
                motion=MOTIONS[int(rng.integers(len(MOTIONS)))],
            )
            for _ in range(n)
        )
        bg = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        named = rng.random() < name_background
        spec = PromptSpec(objs, bg if named else None)
        placed = _layout(spec, aspect, rng)
        if placed is not None:
            return Scene(spec, bg, placed, aspect)
    raise DataError(
        f"could not lay out a scene with {num_objects} objects at aspect {aspect}"
    )  # pragma: no cover
