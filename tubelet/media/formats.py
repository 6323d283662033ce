"""Which files are media: extension lists, and the size / frame-rate limits of every media function."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FPS",
    "MAX_SIDE",
    "VIDEO_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "is_image_path",
    "is_video_path",
]

# Largest accepted width or height (source, requested or written), in pixels.
MAX_SIDE = 16384
# Highest frame rate accepted as an argument (read resampling or write).
MAX_FPS = 1000.0

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
# .gif counts as video (animated); a one-frame gif reads as a one-frame video.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
)
# Output extension -> (FFmpeg muxer, encoder).
WRITE_EXTENSIONS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
}


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True if the extension is a still-image one (png, jpg/jpeg, bmp, webp, tif/tiff)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """True if the extension is a video one (mp4, mov, mkv, webm, avi, gif, ...). `.gif` is video."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS
