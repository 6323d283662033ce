"""Probing: container/stream facts of a video without decoding it (`probe_video`).

The `_StreamFacts` found here are also what `read` decodes by (time base, first timestamp, where the
stream should end).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from tubelet.errors import VideoError
from tubelet.media._common import _av, _check_input_file, _frac, _open_input, _short, _video_stream
from tubelet.media.formats import MAX_SIDE

__all__ = ["VideoInfo", "probe_video"]

# Demuxers whose stored stream duration is exact (from an index/header), so a shortfall means truncation.
_INDEXED_FORMATS = ("mp4", "mov", "matroska", "webm", "avi")


@dataclass(frozen=True)
class VideoInfo:
    """Container/stream facts about a video file (see `probe_video`).

    `width`/`height` are the displayed size (after any rotation stored in the file);
    `rotation` is that rotation in degrees counter-clockwise (0, 90, 180 or -90).
    """

    path: str
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    codec: str
    rotation: int = 0


@dataclass
class _StreamFacts:
    width: int  # stored (coded) size, before rotation
    height: int
    fps: float
    num_frames: int
    duration: float
    codec: str
    time_base: Fraction
    origin_pts: int | None  # the stream's first timestamp, in time_base units
    expected_end: float  # where the stored index/header says the stream ends (0 if unknown)
    listed_frames: int  # frame count stored in the container (0 if none)


def _count_packets(path: Path) -> tuple[int, float]:
    """Demux (no decoding) to count frames and measure duration: for containers with no index.

    Uses its own container so the caller's stays at the start.
    """
    n, first, last_end = 0, None, None
    container = _open_input(path)
    try:
        stream = _video_stream(container, path)
        packets = [
            (p.pts if p.pts is not None else p.dts, p.duration or 0, p.size) for p in container.demux(stream)
        ]
        tb = stream.time_base
    finally:
        container.close()
    for ts, dur, size in packets:
        if size == 0:
            continue
        n += 1
        if ts is None:
            continue
        end = ts + dur
        first = ts if first is None else min(first, ts)
        last_end = end if last_end is None else max(last_end, end)
    duration = float((last_end - first) * tb) if first is not None and last_end else 0.0
    return n, duration


def _stream_facts(container: Any, stream: Any, path: Path) -> _StreamFacts:
    cc = stream.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise VideoError(path, f"invalid video frame size {width}x{height} in the file")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise VideoError(
            path, f"video frame size {width}x{height} is beyond the supported {MAX_SIDE}x{MAX_SIDE}"
        )
    tb = _frac(stream.time_base) or Fraction(1, 90000)
    duration = float(stream.duration * tb) if stream.duration else 0.0
    listed = int(stream.frames or 0)
    expected_end = max(duration, _parse_hms(stream.metadata.get("DURATION")))
    if duration <= 0 and container.duration:
        duration = container.duration / 1_000_000  # AV_TIME_BASE units
    frames = int(stream.frames or 0)
    rate = _frac(stream.average_rate) or _frac(stream.guessed_rate) or _frac(stream.base_rate)
    if duration <= 0 or rate is None:
        # Neither duration nor rate stored (raw streams): count packets; cheap next to decoding.
        frames, duration = _count_packets(path)
    fps = float(rate) if rate is not None else 0.0
    if frames > 0 and duration > 0 and (fps <= 0 or container.format.name == "gif"):
        fps = frames / duration  # gif has no frame rate: FFmpeg guesses one from the first delays
    if frames <= 0 and duration > 0 and fps > 0:
        frames = round(duration * fps)  # an estimate (no index in the container)
    if duration <= 0 and frames > 0 and fps > 0:
        duration = frames / fps
    if fps <= 0:
        fps = 25.0  # nothing in the file says; FFmpeg's own fallback
    origin = stream.start_time if stream.start_time is not None else None
    fmt = str(container.format.name)
    if fmt == "avi" and listed > 0 and fps > 0:
        expected_end = max(expected_end, listed / fps)  # the header counts frames the index may lack
    if not any(name in fmt for name in _INDEXED_FORMATS):
        expected_end = 0.0  # durations of other formats may be estimates (e.g. from the bit rate)
    return _StreamFacts(width, height, fps, frames, duration, str(cc.name), tb, origin, expected_end, listed)


def _parse_hms(value: Any) -> float:
    """'HH:MM:SS.fraction' (Matroska's DURATION tag) -> seconds; 0.0 if absent or malformed."""
    if not isinstance(value, str):
        return 0.0
    try:
        h, m, sec = value.strip().split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


def _zero_frames_error(path: Path, facts: _StreamFacts) -> VideoError:
    if facts.listed_frames > 0 or facts.expected_end > 0:
        listed = f"{facts.listed_frames} frames" if facts.listed_frames else f"{facts.expected_end:.3f}s"
        return VideoError(
            path, f"truncated or corrupt video: 0 decodable frames although the container lists {listed}"
        )
    return VideoError(path, "video stream has 0 decodable frames")


def _first_rotation(container: Any, stream: Any, path: Path, facts: _StreamFacts) -> int:
    """Decode the first frame to read the display rotation (the matrix lives on frames)."""
    av = _av()
    try:
        for frame in container.decode(stream):
            return _norm_rotation(frame.rotation)
    except av.error.FFmpegError as e:
        raise VideoError(path, f"corrupt video: the first frame cannot be decoded ({_short(e)})") from None
    raise _zero_frames_error(path, facts)


def _norm_rotation(rot: Any) -> int:
    try:
        r = round(float(rot or 0) / 90.0) * 90
    except (TypeError, ValueError):
        return 0
    r = ((r + 180) % 360) - 180
    return 180 if r == -180 else r


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read container/stream facts without decoding the video.

    Cheap: opens the container and decodes only the first frame (to learn the display
    rotation and prove the stream decodes). `num_frames` comes from the container index;
    when the container has none (e.g. Matroska/WebM) it is estimated as round(duration * fps),
    and when neither duration nor count is stored the packets are counted (no decoding).
    `fps` is the average frame rate (for variable-frame-rate files the mean, not a constant).

    Raises:
        VideoError: missing/empty/unreadable file, not a video, no video stream, absurd frame size,
            or a first frame that cannot be decoded.
    """
    p = Path(path)
    _check_input_file(p)
    av = _av()
    container = _open_input(p)
    try:
        stream = _video_stream(container, p)
        try:
            facts = _stream_facts(container, stream, p)
            rotation = _first_rotation(container, stream, p, facts)
        except av.error.FFmpegError as e:
            raise VideoError(p, f"corrupt or truncated video ({_short(e)})") from None
    finally:
        container.close()
    w, h = (facts.height, facts.width) if rotation in (90, -90) else (facts.width, facts.height)
    return VideoInfo(
        path=str(p),
        width=w,
        height=h,
        fps=facts.fps,
        num_frames=facts.num_frames,
        duration=facts.duration,
        codec=facts.codec,
        rotation=rotation,
    )
