"""Training shapes (`Bucket`) and the pure functions that fit a clip to one: frames available at
the target frame rate, source frame indices, bucket choice, centre crop and resize to a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tubelet.errors import ConfigError
from tubelet.media import frames_to_unit

# Buckets whose aspect ratios differ by less than this (in log space, ~2%) count as one aspect.
_ASPECT_TOLERANCE = 0.02


@dataclass
class Bucket:
    """One training shape: clips of `frames` frames at `height` x `width`, `batch_size` per rank."""

    frames: int
    height: int
    width: int
    batch_size: int

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Bucket.{name}: expected a positive integer, got {value!r}")

    @property
    def aspect(self) -> float:
        """Width / height."""
        return self.width / self.height


def frames_available(num_frames: int, src_fps: float, fps: float) -> int:
    """How many frames a clip of `num_frames` at `src_fps` yields when sampled at `fps`.

    Output frame k shows source frame floor(k * src_fps / fps).
    """
    if num_frames <= 0:
        return 0
    return max(1, math.ceil(num_frames * fps / src_fps - 1e-9))


def source_indices(start: int, frames: int, src_fps: float, fps: float) -> list[int]:
    """Source frame indices of a clip of `frames` frames at `fps` that starts at source frame `start`."""
    step = src_fps / fps
    return [start + math.floor(k * step + 1e-9) for k in range(frames)]


def choose_bucket(
    width: int,
    height: int,
    available: int,
    buckets: Sequence[Bucket],
    *,
    is_image: bool = False,
    videos_as_images: bool = True,
) -> int | None:
    """Index of the bucket for media of `width` x `height` that yields `available` frames; None if none fits.

    Images consider 1-frame buckets only. Otherwise the buckets whose aspect ratio is closest to
    the media's (within ~2%) are the candidates; of those, the one with the most frames that
    `available` can fill wins (1-frame buckets only when `videos_as_images`), then the largest
    resolution that needs no upscaling (else the smallest), then the closest aspect.
    """
    if width <= 0 or height <= 0:
        return None
    log_ar = math.log(width / height)
    pool = [i for i, b in enumerate(buckets) if b.frames == 1] if is_image else list(range(len(buckets)))
    if not pool:
        return None
    dist = {i: abs(math.log(buckets[i].aspect) - log_ar) for i in pool}
    best = min(dist.values())
    group = [i for i in pool if dist[i] <= best + _ASPECT_TOLERANCE]
    fits = [i for i in group if buckets[i].frames <= available]
    if not is_image and not videos_as_images:
        fits = [i for i in fits if buckets[i].frames > 1]
    if not fits:
        return None

    def key(i: int) -> tuple:
        b = buckets[i]
        no_upscale = b.width <= width and b.height <= height
        area = b.width * b.height
        return (b.frames, no_upscale, area if no_upscale else -area, -dist[i], -i)

    return max(fits, key=key)


def center_crop_box(height: int, width: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the largest centred window of `height` x `width` with aspect out_w/out_h."""
    if width * out_h > height * out_w:  # source wider than target: crop the sides
        w = max(1, min(width, round(height * out_w / out_h)))
        return 0, (width - w) // 2, height, w
    h = max(1, min(height, round(width * out_h / out_w)))
    return (height - h) // 2, 0, h, width


def frames_to_tensor(frames: np.ndarray, out_h: int, out_w: int) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> float (3, T, out_h, out_w) in [-1, 1], centre-cropped to the
    target aspect ratio and then resized (antialiased bilinear); no stretching."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got shape {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    top, left, ch, cw = center_crop_box(h, w, out_h, out_w)
    crop = np.ascontiguousarray(frames[:, top : top + ch, left : left + cw])  # (T, ch, cw, 3)
    x = torch.from_numpy(crop if crop.flags.writeable else crop.copy())
    x = x.permute(0, 3, 1, 2).float()  # (T, 3, ch, cw)
    if (ch, cw) != (out_h, out_w):
        x = torch.nn.functional.interpolate(
            x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
        )  # (T, 3, out_h, out_w)
    x = frames_to_unit(x).clamp_(-1.0, 1.0)
    return x.permute(1, 0, 2, 3).contiguous()  # (3, T, out_h, out_w)


def clip_boxes(
    tracks: list[Any], times: list[float], src_hw: tuple[int, int], out_hw: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Box tracks of a source clip at the sampled source frames `times`, in the coordinates of the
    centre-cropped output (`frames_to_tensor`): boxes (N, T, 4) float32, present (N, T) bool, hard
    (N,) bool, objects (N,) int64. A box cut off by the crop is clipped; one outside it is absent."""
    from tubelet.boxes import track_arrays

    boxes, present, hard = track_arrays(tracks, times)
    (h, w), (oh, ow) = src_hw, out_hw
    top, left, ch, cw = center_crop_box(h, w, oh, ow)
    scale = np.array([w / cw, h / ch, w / cw, h / ch], np.float32)
    shift = np.array([left / cw, top / ch, left / cw, top / ch], np.float32)
    boxes = np.clip(boxes * scale - shift, 0.0, 1.0)
    present &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    objects = np.array([int(t.object) if isinstance(t.object, int) else i for i, t in enumerate(tracks)])
    return {
        "boxes": torch.from_numpy(boxes.astype(np.float32)),
        "present": torch.from_numpy(present),
        "hard": torch.from_numpy(hard),
        "objects": torch.from_numpy(objects.astype(np.int64)),
    }
