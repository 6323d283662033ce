"""Drawing clips: a `Scene` as anti-aliased uint8 frames, and the seeded clip of a dataset index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tubelet.recipes.shapes.grammar import BACKGROUNDS, COLORS, SIZES, caption
from tubelet.recipes.shapes.scene import Scene, SceneObject, sample_free_scene, sample_scene

__all__ = ["ShapesClip", "make_clip", "object_coverage", "render"]

SUPERSAMPLE = 4  # anti-aliasing: SUPERSAMPLE x SUPERSAMPLE samples per pixel


def _frame_size(size: int | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"frame size must be at least 8x8 pixels, got (H, W) = ({h}, {w})")
    return h, w


def _coverage_patch(o: SceneObject, u: float, h: int, w: int) -> tuple[int, int, np.ndarray] | None:
    """Anti-aliased coverage of object `o` at time u: (row0, col0, patch (h', w') float32 in [0, 1])."""
    short = min(h, w)
    r = SIZES[o.spec.size] * short / 2  # half side / radius in pixels
    fx, fy = o.position(u)
    cx, cy = fx * w, fy * h
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)), w)
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)), h)
    if x1 <= x0 or y1 <= y0:
        return None
    ss = SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss - cx  # (w' * ss,) sample offsets from the centre
    ys = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss - cy  # (h' * ss,)
    dx, dy = xs[None, :], ys[:, None]
    if o.spec.shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif o.spec.shape == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    else:  # isosceles triangle, apex up: base 2r at the bottom, height 2r
        inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    counts = inside.reshape(y1 - y0, ss, x1 - x0, ss).sum(axis=(1, 3))  # (h', w') exact integers
    return y0, x0, counts.astype(np.float32) / np.float32(ss * ss)


def _times(frames: int) -> list[float]:
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return [k / (frames - 1) if frames > 1 else 0.0 for k in range(frames)]


def _check_scene_size(scene: Scene, h: int, w: int) -> None:
    if abs(w / h - scene.aspect) > 0.02 * scene.aspect:
        raise ValueError(
            f"scene was laid out for aspect (W/H) {scene.aspect:.3f} but the frame size (H, W) = ({h}, {w}) "
            f"has aspect {w / h:.3f}; sample the scene with aspect={w / h:.3f}"
        )


def object_coverage(scene: Scene, *, frames: int = 17, size: int | tuple[int, int] = 64) -> np.ndarray:
    """Per-object anti-aliased coverage, float32 (N, T, H, W) in [0, 1] (for tests and analysis)."""
    h, w = _frame_size(size)
    _check_scene_size(scene, h, w)
    out = np.zeros((len(scene.objects), frames, h, w), np.float32)
    for t, u in enumerate(_times(frames)):
        for i, o in enumerate(scene.objects):
            patch = _coverage_patch(o, u, h, w)
            if patch is not None:
                y0, x0, a = patch
                out[i, t, y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]] = a
    return out


def render(
    scene: Scene,
    *,
    frames: int = 17,
    size: int | tuple[int, int] = 64,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render `scene` as uint8 (T, H, W, 3) frames.

    Edges are anti-aliased by 4x4 supersampling; object interiors have the exact palette colour.
    `noise` is the standard deviation of added Gaussian pixel noise in 8-bit levels (0-255), drawn
    from `rng` (a fixed-seed generator if None). `size` is an int (square) or (height, width).
    """
    h, w = _frame_size(size)
    _check_scene_size(scene, h, w)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    times = _times(frames)
    bg = np.asarray(BACKGROUNDS[scene.background], np.float32)
    video = np.empty((frames, h, w, 3), np.float32)  # (T, H, W, 3)
    video[:] = bg
    for t, u in enumerate(times):
        for o in scene.objects:
            patch = _coverage_patch(o, u, h, w)
            if patch is None:
                continue
            y0, x0, a = patch
            a = a[..., None]  # (h', w', 1)
            region = video[t, y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]]
            color = np.asarray(COLORS[o.spec.color], np.float32)
            region[:] = region * (np.float32(1) - a) + color * a
    if noise > 0:
        if rng is None:
            rng = np.random.Generator(np.random.PCG64(0))
        video += rng.standard_normal(video.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def scene_boxes(scene: Scene, *, frames: int = 17, size: int | tuple[int, int] = 64) -> dict[str, Any]:
    """Every object's exact bounding box in every frame, as box tracks (`tubelet.boxes` JSON form).

    The box is the object's geometric extent (centre +- half its side / radius) clipped to the frame,
    in [0, 1] image coordinates; track i binds to the prompt's object i; all boxes are hard.
    """
    h, w = _frame_size(size)
    _check_scene_size(scene, h, w)
    short = min(h, w)
    tracks = []
    for i, o in enumerate(scene.objects):
        r = SIZES[o.spec.size] * short / 2
        keyframes = []
        for t, u in enumerate(_times(frames)):
            fx, fy = o.position(u)
            x0, x1 = max(0.0, fx - r / w), min(1.0, fx + r / w)
            y0, y1 = max(0.0, fy - r / h), min(1.0, fy + r / h)
            if x1 > x0 and y1 > y0:
                box = [round(v, 5) for v in (x0, y0, x1, y1)]
                keyframes.append({"frame": t, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]})
        if keyframes:
            tracks.append({"object": i, "mode": "hard", "keyframes": keyframes})
    return {"tracks": tracks}


@dataclass
class ShapesClip:
    """A rendered clip with its scene and canonical captions ({"en": ..., "zh": ...})."""

    frames: np.ndarray  # uint8 (T, H, W, 3)
    scene: Scene
    captions: dict[str, str]
    fps: float = 8.0
    seed: Any = field(default=None)


def make_clip(
    seed: int | Sequence[int],
    *,
    frames: int = 17,
    size: int | tuple[int, int] = 64,
    fps: float = 8.0,
    noise: float = 0.0,
    free_motion: float = 0.0,
) -> ShapesClip:
    """The clip for `seed` (an int or a tuple of ints, e.g. (dataset_seed, index)).

    The scene depends only on the seed and the frame aspect ratio; the noise has its own stream, so
    the same seed gives the same scene with or without noise. With `free_motion` > 0 that fraction
    of clips has motion text cannot say (`sample_free_scene`); with 0 the scene stream is unchanged.
    """
    h, w = _frame_size(size)
    entropy = int(seed) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    scene_ss, noise_ss = np.random.SeedSequence(entropy).spawn(2)
    rng = np.random.Generator(np.random.PCG64(scene_ss))
    if free_motion > 0 and rng.random() < free_motion:
        scene = sample_free_scene(rng, aspect=w / h)
    else:
        scene = sample_scene(rng, aspect=w / h)
    pixels = render(
        scene, frames=frames, size=(h, w), noise=noise, rng=np.random.Generator(np.random.PCG64(noise_ss))
    )
    caps = {"en": caption(scene.spec, "en"), "zh": caption(scene.spec, "zh")}
    return ShapesClip(pixels, scene, caps, float(fps), seed)
