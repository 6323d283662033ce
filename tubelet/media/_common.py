"""Plumbing shared by the media modules: PyAV import, input-file checks, opening containers, error text.

Every failure a user can cause is turned into a `VideoError` naming the file and one cause; raw FFmpeg
errors never escape.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.errors import VideoError

_ATTACHED_PIC = 0x0400  # AV_DISPOSITION_ATTACHED_PIC: album art, not video

_ffmpeg_quiet = False


def _av() -> Any:
    """Import PyAV and silence FFmpeg's own logging once (set TUBELET_FFMPEG_LOG=1 to keep it)."""
    global _ffmpeg_quiet
    import av

    if not _ffmpeg_quiet:
        if not os.environ.get("TUBELET_FFMPEG_LOG"):
            av.logging.set_level(None)  # None: FFmpeg messages are dropped entirely
        _ffmpeg_quiet = True
    return av


def _short(exc: BaseException, limit: int = 160) -> str:
    """One-line, bounded description of an exception (FFmpeg errors carry errno + path noise)."""
    msg = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _check_input_file(path: Path) -> None:
    """Fail early, with a clear cause, on paths that cannot be a media file."""
    if not path.exists():
        raise VideoError(path, "file not found")
    if path.is_dir():
        raise VideoError(path, "is a directory, expected a video or image file")
    if not path.is_file():
        raise VideoError(path, "not a regular file (device, pipe or socket); expected a video or image file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise VideoError(path, f"cannot stat file ({_short(e)})") from None
    if size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "permission denied (file is not readable)")


def _sniff(path: Path) -> str | None:
    """Name the container family from the first bytes, or 'text' for a text file, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head[4:8] == b"ftyp" or head[4:8] in (b"moov", b"mdat", b"free", b"wide"):
        return "MP4/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:4] == b"GIF8":
        return "GIF"
    if head[:1] == b"\x47" or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "MPEG"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "text"
    return None


def _open_error(path: Path, exc: BaseException) -> VideoError:
    """Turn an av.open failure into a VideoError with a cause a user can act on."""
    kind = _sniff(path)
    if kind == "text":
        return VideoError(path, "not a video: the file contains plain text")
    if kind is not None:
        return VideoError(
            path, f"corrupt or truncated {kind} file: the container cannot be parsed ({_short(exc)})"
        )
    return VideoError(path, f"not a video: FFmpeg does not recognise the file format ({_short(exc)})")


def _open_input(path: Path) -> Any:
    av = _av()
    try:
        return av.open(str(path), mode="r", metadata_errors="replace")
    except av.error.FFmpegError as e:
        raise _open_error(path, e) from None
    except (OSError, ValueError, UnicodeError) as e:
        raise _open_error(path, e) from None


def _video_stream(container: Any, path: Path) -> Any:
    """The first real video stream; cover art attached to audio files does not count."""
    videos = [s for s in container.streams.video if not int(s.disposition or 0) & _ATTACHED_PIC]
    if videos:
        return videos[0]
    others = [
        f"{'cover picture' if s.type == 'video' else s.type}:{getattr(s.codec_context, 'name', '?')}"
        for s in container.streams
    ]
    detail = f" (it has only {', '.join(others)})" if others else " (it has no streams)"
    raise VideoError(path, f"no video stream{detail}; audio-only or data file")


def _frac(x: Any) -> Fraction | None:
    try:
        f = Fraction(x)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if f > 0 else None


def _check_number(path: Path, name: str, value: Any, *, low: float, high: float, low_ok: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise VideoError(path, f"bad {name} argument {value!r}: expected a number")
    v = float(value)
    if not math.isfinite(v) or v > high or (v < low if low_ok else v <= low):
        bound = f">= {low:g}" if low_ok else f"> {low:g}"
        raise VideoError(
            path, f"bad {name} argument {value!r}: expected a finite number {bound} and <= {high:g}"
        )
    return v
