"""Uploaded images and clips: checked by decoding them (never by their name), stored under the job.

The client's file name is never used: a file is stored as ``<field><ext>`` where the extension comes
from the format found by decoding. Nothing uploaded is executed or unpickled; images go through PIL
(with its pixel limit), clips through FFmpeg (PyAV) with tubelet's own size limits.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tubelet.errors import TubeletError, VideoError

IMAGE_FIELDS = ("image", "last_image")
VIDEO_FIELDS = ("video", "video_b")
_PIL_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
_AV_EXT = {"mov,mp4,m4a,3gp,3g2,mj2": ".mp4", "matroska,webm": ".mkv", "gif": ".gif", "avi": ".avi"}


class UploadError(TubeletError, ValueError):
    """An uploaded file is not what its field needs (names the field and the reason)."""


def store_upload(field: str, data: bytes, folder: Path) -> str:
    """Check `data` for `field` by decoding it and write it under `folder`; returns the file name."""
    if field not in IMAGE_FIELDS + VIDEO_FIELDS:
        raise UploadError(
            f"unknown upload field {field!r}; files go in {', '.join(IMAGE_FIELDS + VIDEO_FIELDS)}"
        )
    if not data:
        raise UploadError(f"{field}: the uploaded file is empty")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{field}.upload"
    tmp.write_bytes(data)
    try:
        ext = _image_ext(tmp, field) if field in IMAGE_FIELDS else _video_ext(tmp, field)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    name = field + ext
    os.replace(tmp, folder / name)
    return name


def _image_ext(path: Path, field: str) -> str:
    from PIL import Image

    from tubelet.media import read_image

    try:
        read_image(path)  # decodes every pixel (truncated and oversized files fail here)
        with Image.open(path) as img:
            fmt = img.format or ""
    except VideoError as e:
        raise UploadError(f"{field}: {_reason(e)}") from None
    if fmt not in _PIL_EXT:
        raise UploadError(
            f"{field}: {fmt or 'this'} images are not accepted; send PNG, JPEG, WebP, BMP or TIFF"
        )
    return _PIL_EXT[fmt]


def _video_ext(path: Path, field: str) -> str:
    import av

    from tubelet.media import probe_video, read_video

    try:
        probe_video(path)
        read_video(path, max_frames=2)
        with av.open(str(path)) as c:
            fmt = c.format.name
    except VideoError as e:
        raise UploadError(f"{field}: {_reason(e)}") from None
    except Exception as e:  # FFmpeg's own errors on odd input
        raise UploadError(f"{field}: not a video the server can decode ({type(e).__name__})") from None
    if fmt not in _AV_EXT:
        raise UploadError(f"{field}: {fmt} is not a video container; send MP4, MOV, MKV, WebM, AVI or GIF")
    return _AV_EXT[fmt]


def _reason(e: VideoError) -> str:
    """A VideoError's cause without the server's temporary path."""
    text = str(e)
    head, sep, tail = text.partition(": ")
    return tail if sep and ".upload" in head else text
