"""Generation inputs: images and clips from paths, arrays or PIL images, fitted to the output.

Inputs of another size are center-cropped to the output's aspect ratio and resized, exactly like the
training data (`tubelet.data.dataset.frames_to_tensor`); clips of another frame rate are resampled by
timestamps to the model's fps. Each such change is reported once through the call's `Notes`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tubelet.errors import TubeletError

logger = logging.getLogger("tubelet.pipelines")


class Notes:
    """Adjustments made to one call's inputs (resize, frame-rate change, trimming).

    Each message is reported once, to `on_note` (default: a logging warning), and kept for the
    result's metadata ("notes").
    """

    def __init__(self, on_note: Callable[[str], None] | None = None) -> None:
        self.on_note = on_note
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if message in self.items:
            return
        self.items.append(message)
        if self.on_note is not None:
            self.on_note(message)
        else:
            logger.warning(message)


def check_uint8_frames(frames: Any, what: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise TubeletError(
            f"{what}: expected uint8 RGB frames (T, H, W, 3) with T, H, W >= 1, got {arr.dtype} {arr.shape}"
        )
    return arr


def resample_frames(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Resample frames (T, ...) shown at `src_fps` to `dst_fps` by timestamps.

    Output frame j is the source frame on screen at time j / dst_fps (frames are dropped or repeated);
    the output covers the same duration, T / src_fps seconds.
    """
    if not (src_fps > 0 and dst_fps > 0):
        raise TubeletError(f"frame rates must be > 0, got {src_fps} and {dst_fps}")
    t = frames.shape[0]
    n = max(1, math.ceil(t * dst_fps / src_fps - 1e-9))
    idx = np.minimum(np.floor(np.arange(n) * src_fps / dst_fps + 1e-9).astype(np.int64), t - 1)
    return frames[idx]


def to_pixels(frames: np.ndarray, height: int, width: int, device: torch.device) -> torch.Tensor:
    """uint8 (T, h, w, 3) -> video (1, 3, T, height, width) in [-1, 1] on `device`.

    Centre-cropped to the output's aspect ratio, then resized: the training data's preprocessing
    (`tubelet.data.dataset.frames_to_tensor`).
    """
    from tubelet.data.dataset import frames_to_tensor

    return frames_to_tensor(frames, height, width)[None].to(device)


def _size_note(size: tuple[int, int], source: str, notes: Notes, src_hw: tuple[int, int]) -> None:
    if tuple(src_hw) != tuple(size):
        notes.add(
            f"{source}: {src_hw[1]}x{src_hw[0]} center-cropped to the aspect ratio and resized to "
            f"{size[1]}x{size[0]}"
        )


def load_image(
    image: Any, what: str, size: tuple[int, int], notes: Notes
) -> tuple[np.ndarray, dict[str, Any]]:
    """An image input -> uint8 (h, w, 3) (any size; `to_pixels` fits it), plus a description for metadata.

    image: a path (an image, or a video whose first frame is used), a uint8 (H, W, 3) array or a PIL
    image; size: the output's (height, width), for the resize note.
    """
    from tubelet.media import is_video_path, read_image, read_video

    if isinstance(image, (str, os.PathLike)):
        source = str(image)
        if is_video_path(image):
            arr = read_video(image, max_frames=1).frames[0]
        else:
            arr = read_image(image)
    elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        source, arr = f"{what} (PIL image)", np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        source, arr = f"{what} (array)", image
    else:
        raise TubeletError(
            f"{what}: expected a path, a uint8 (H, W, 3) array or a PIL image, got {type(image).__name__}"
        )
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    frames = check_uint8_frames(arr[None] if arr.ndim == 3 else arr, source)
    if frames.shape[0] != 1:
        raise TubeletError(f"{source}: expected one image (H, W, 3), got {frames.shape[0]} frames")
    src_hw = frames.shape[1:3]
    info = {"source": source, "height": int(src_hw[0]), "width": int(src_hw[1])}
    _size_note(size, source, notes, src_hw)
    return frames[0], info


def load_clip(
    video: Any, what: str, fps: float, out_size: tuple[int, int], notes: Notes
) -> tuple[np.ndarray, dict[str, Any]]:
    """A clip input -> uint8 (T, h, w, 3) at `fps` (any size; `to_pixels` fits it), plus a description.

    video: a path, a `tubelet.media.Video` / `VideoResult` (frames + fps; resampled to `fps` if needed)
    or a uint8 (T, H, W, 3) array taken to be at `fps`; out_size: the output's (height, width).
    """
    from tubelet.media import probe_video, read_video

    fps = float(fps)
    height, width = out_size
    if isinstance(video, (str, os.PathLike)):
        source = str(video)
        probe = probe_video(video)
        src_fps, src_hw = probe.fps, (probe.height, probe.width)
        if probe.num_frames <= 1:  # a still image (or a one-frame clip) has no frame rate to adapt
            src_fps = fps
        scale = max(height / probe.height, width / probe.width)
        # Shrink while decoding (less memory); `_pixels` then crops and resizes exactly.
        size = math.ceil(min(src_hw) * scale - 1e-9) if scale < 1 else None
        same_rate = abs(src_fps - fps) < 1e-3
        frames = read_video(video, fps=None if same_rate else fps, size=size).frames
    elif hasattr(video, "frames") and hasattr(video, "fps"):
        source = getattr(video, "path", None) or f"{what} ({type(video).__name__})"
        frames = check_uint8_frames(video.frames, source)
        src_fps, src_hw = float(video.fps), frames.shape[1:3]
        if abs(src_fps - fps) >= 1e-3:
            frames = resample_frames(frames, src_fps, fps)
    elif isinstance(video, np.ndarray):
        source = f"{what} (array)"
        frames = check_uint8_frames(video, source)
        src_fps, src_hw = fps, frames.shape[1:3]
    else:
        raise TubeletError(
            f"{what}: expected a path, a Video/VideoResult or a uint8 (T, H, W, 3) array, got {type(video).__name__}"
        )
    if abs(src_fps - fps) >= 1e-3:
        notes.add(f"{source}: resampled from {src_fps:g} fps to the model's {fps:g} fps")
    info = {
        "source": source,
        "height": int(src_hw[0]),
        "width": int(src_hw[1]),
        "fps": float(src_fps),
        "frames": len(frames),  # at the model's fps
    }
    _size_note(out_size, source, notes, (int(src_hw[0]), int(src_hw[1])))
    return frames, info
