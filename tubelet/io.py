"""Video and image I/O: probe, decode (with timestamp-exact resampling), encode, metadata.

Everything goes through PyAV (FFmpeg linked in-process, no subprocess). Every failure a
user can cause (missing/broken/odd files, bad arguments) raises `tubelet.errors.VideoError`
naming the file and one cause; raw FFmpeg errors never escape.

Conventions:
- frames are `uint8` arrays shaped (T, H, W, 3), RGB, C-contiguous;
- times are seconds from the start of the video stream (its first timestamp is 0);
- a frame is "on screen" from its presentation timestamp until the next frame's;
- display rotation stored in the container (phone videos) is applied when decoding, and
  `probe_video` reports the rotated (displayed) size, so both agree.

Heavy libraries (av, cv2, PIL) are imported inside functions so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.errors import VideoError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DECODE_BYTES",
    "MAX_SIDE",
    "VIDEO_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "Video",
    "VideoInfo",
    "is_image_path",
    "is_video_path",
    "probe_video",
    "read_image",
    "read_metadata",
    "read_video",
    "sidecar_path",
    "write_video",
]

# Largest accepted width or height (source, requested or written), in pixels.
MAX_SIDE = 16384
# Largest decoded request, T*H*W*3 bytes. A module variable so callers (and tests) can change it.
MAX_DECODE_BYTES = 16 * 1024**3
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
_METADATA_TAGS = ("comment", "description")
_ATTACHED_PIC = 0x0400  # AV_DISPOSITION_ATTACHED_PIC: album art, not video
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
class Video:
    """Decoded frames plus their frame rate."""

    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    fps: float
    path: str | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration(self) -> float:
        """Seconds covered by the frames at `fps`."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


# ----------------------------------------------------------------------------- helpers


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


def _ends_with(path: Path, suffix: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-len(suffix), os.SEEK_END)
            return f.read() == suffix
    except OSError:
        return False


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


# ----------------------------------------------------------------------------- reading


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


def _target_size(path: Path, size: Any, src_h: int, src_w: int) -> tuple[int, int]:
    """(height, width) of the output frames."""
    if size is None:
        return src_h, src_w
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        side = int(size)
        if not 1 <= side <= MAX_SIDE:
            raise VideoError(path, f"bad size argument {size!r}: short side must be in 1..{MAX_SIDE}")
        short = min(src_h, src_w)
        h = max(1, round(src_h * side / short))
        w = max(1, round(src_w * side / short))
        if max(h, w) > MAX_SIDE:
            raise VideoError(
                path, f"size={size} would give {h}x{w} frames (beyond {MAX_SIDE}); pass a smaller size"
            )
        return h, w
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        h, w = int(size[0]), int(size[1])
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise VideoError(path, f"bad size argument {size!r}: height and width must be in 1..{MAX_SIDE}")
        return h, w
    raise VideoError(
        path, f"bad size argument {size!r}: expected an int (short side) or a (height, width) tuple"
    )


def _cap_error(path: Path, n: int, h: int, w: int) -> VideoError:
    gib = n * h * w * 3 / 1024**3
    return VideoError(
        path,
        f"request of {n} frames at {h}x{w} needs {gib:.1f} GiB, above the {MAX_DECODE_BYTES / 1024**3:g} GiB "
        "cap; pass max_frames= (fewer frames), size= (smaller frames) or fps= (lower rate)",
    )


class _FrameBuffer:
    """Growable (T, H, W, 3) uint8 array: avoids holding a list plus a stacked copy."""

    def __init__(self, path: Path, h: int, w: int, capacity: int) -> None:
        self.path, self.h, self.w = path, h, w
        self.frame_bytes = h * w * 3
        self.limit = max(1, MAX_DECODE_BYTES // self.frame_bytes)
        self.buf = np.empty((max(1, min(capacity, self.limit)), h, w, 3), np.uint8)
        self.n = 0

    def append(self, frame: np.ndarray) -> None:
        if self.n >= self.limit:
            raise _cap_error(self.path, self.n + 1, self.h, self.w)
        if self.n == len(self.buf):
            grown = np.empty(
                (min(self.limit, max(self.n + 1, int(self.n * 1.5) + 8)), self.h, self.w, 3), np.uint8
            )
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n] = frame
        self.n += 1

    def result(self) -> np.ndarray:
        if self.n == len(self.buf):
            return self.buf
        if self.n < 0.75 * len(self.buf):
            return self.buf[: self.n].copy()
        return self.buf[: self.n]


def _to_rgb(frame: Any, rotation: int, out_hw: tuple[int, int], reformatter: Any) -> np.ndarray:
    """Decoded frame -> uint8 (H, W, 3) RGB at the output size, rotation applied.

    `reformatter`: an `av.video.reformatter.VideoReformatter` reused across the frames of one video
    keeps its swscale context (~6x faster on small frames than `frame.to_ndarray(format=...)`, which
    builds a new context for every frame)."""
    rng = frame.color_range if frame.color_range in (1, 2) else None
    if frame.format.name in ("rgb24",):
        arr = frame.to_ndarray()
    else:
        arr = reformatter.reformat(frame, format="rgb24", src_color_range=rng).to_ndarray()
    if rotation:
        arr = np.rot90(arr, k=rotation // 90)
    h, w = out_hw
    if arr.shape[0] != h or arr.shape[1] != w:
        import cv2

        down = h * w < arr.shape[0] * arr.shape[1]
        arr = cv2.resize(
            np.ascontiguousarray(arr), (w, h), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR
        )
    return arr


def _timed_frames(
    container: Any, stream: Any, facts: _StreamFacts, seek_to: float | None
) -> Iterator[tuple[float, float, Any]]:
    """Yield (time, duration, frame) in decode (presentation) order; times relative to stream start."""
    tb = facts.time_base
    origin = facts.origin_pts
    if seek_to is not None and seek_to > 0:
        offset = int(seek_to / tb) + (origin or 0)
        container.seek(offset, stream=stream, backward=True, any_frame=False)
    nominal = 1.0 / facts.fps
    last_t: float | None = None
    for frame in container.decode(stream):
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            t = 0.0 if last_t is None else last_t + nominal
        else:
            if origin is None:
                origin = pts
            t = float((pts - origin) * tb)
        dur = float(frame.duration * tb) if frame.duration else nominal
        last_t = t
        yield t, dur, frame


def read_video(
    path: str | os.PathLike[str],
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    size: int | tuple[int, int] | None = None,
    start: float = 0.0,
) -> Video:
    """Decode a video into uint8 (T, H, W, 3) RGB frames.

    Args:
        path: any FFmpeg-readable video (mp4, mov, mkv, webm, avi, gif, ...).
        fps: resample to this rate by presentation timestamps: output frame i is the source frame
            on screen at time `start + i / fps` (correct for variable-frame-rate files; frames are
            repeated or dropped as needed). None keeps every source frame from `start` on, and
            `Video.fps` is then the stream's average rate.
        max_frames: stop after this many output frames (decoding stops there too).
        size: (height, width) to resize to exactly, or an int giving the short side (aspect kept).
            Area filtering when shrinking, bilinear when enlarging (OpenCV).
        start: seconds from the beginning; the first output frame is the one on screen then.

    Display rotation stored in the file is applied before resizing (so `size` is the displayed size).

    Raises:
        VideoError: bad arguments, missing/empty/corrupt/truncated file, not a video, no video
            stream, 0 decodable frames, `start` beyond the end, or a request over `MAX_DECODE_BYTES`.
    """
    p = Path(path)
    if fps is not None:
        fps = _check_number(p, "fps", fps, low=0.0, high=MAX_FPS, low_ok=False)
    start = _check_number(p, "start", start, low=0.0, high=1e9, low_ok=True)
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1
    ):
        raise VideoError(p, f"bad max_frames argument {max_frames!r}: expected an int >= 1 or None")
    _check_input_file(p)
    av = _av()
    container = _open_input(p)
    try:
        stream = _video_stream(container, p)
        stream.thread_type = "AUTO"
        try:
            facts = _stream_facts(container, stream, p)
        except av.error.FFmpegError as e:
            raise VideoError(p, f"corrupt or truncated video ({_short(e)})") from None
        frames = _decode(container, stream, facts, p, fps, max_frames, size, start)
    finally:
        container.close()
    out_fps = fps if fps is not None else facts.fps
    return Video(frames=frames, fps=float(out_fps), path=str(p))


def _decode(
    container: Any,
    stream: Any,
    facts: _StreamFacts,
    path: Path,
    fps: float | None,
    max_frames: int | None,
    size: Any,
    start: float,
) -> np.ndarray:
    av = _av()
    # Validate `size` against the stored size now (cheap errors first); rotation may swap it below.
    _target_size(path, size, facts.height, facts.width)

    # Up-front memory check from the container's estimate (the buffer re-checks while decoding).
    remaining = max(0.0, facts.duration - start) if facts.duration > 0 else None
    if fps is not None:
        estimate = math.ceil(remaining * fps) + 1 if remaining is not None else None
    else:
        estimate = math.ceil(remaining * facts.fps) + 1 if remaining is not None else None
    if max_frames is not None:
        estimate = min(estimate, max_frames) if estimate is not None else max_frames
    sh, sw = _target_size(path, size, facts.height, facts.width)
    if estimate is not None and estimate * sh * sw * 3 > MAX_DECODE_BYTES:
        raise _cap_error(path, estimate, sh, sw)

    # Half a timestamp tick of slack absorbs timebase rounding (e.g. 24 fps in a 1/1000 timebase).
    eps = max(1.5 * float(facts.time_base), 1e-6)
    eps = min(eps, 0.25 / max(fps or 0.0, facts.fps))

    seek_to: float | None = start if start > 0 else None
    for attempt in range(2):
        state = _Emitter(path, fps, max_frames, size, start, eps, estimate, facts)
        try:
            for t, dur, frame in _timed_frames(container, stream, facts, seek_to):
                if state.first_t is None and seek_to is not None and t > start + eps:
                    break  # the seek landed past `start`: redo from the beginning
                if not state.push(t, dur, frame):
                    return state.result()
            else:
                return state.finish()
        except av.error.FFmpegError as e:
            if attempt == 0 and seek_to is not None and state.first_t is None:
                pass  # seeking failed in this container; decode from the beginning instead
            else:
                got = state.decoded
                raise VideoError(
                    path, f"corrupt or truncated video: decoding failed after {got} frames ({_short(e)})"
                ) from None
        # Restart without seeking.
        seek_to = None
        try:
            container.seek(facts.origin_pts or 0, stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError as e:
            raise VideoError(
                path, f"cannot rewind the video to decode from the start ({_short(e)})"
            ) from None
    raise VideoError(path, "cannot position the decoder at the requested start")  # pragma: no cover


class _Emitter:
    """Streaming frame selection: either every frame from `start`, or a timestamp-resampled grid."""

    def __init__(
        self,
        path: Path,
        fps: float | None,
        max_frames: int | None,
        size: Any,
        start: float,
        eps: float,
        estimate: int | None,
        facts: _StreamFacts,
    ) -> None:
        self.path, self.fps, self.max_frames, self.size = path, fps, max_frames, size
        self.start, self.eps, self.estimate, self.facts = start, eps, estimate, facts
        self.buffer: _FrameBuffer | None = None
        self.rotation = 0
        self.out_hw: tuple[int, int] | None = None
        self.cur: tuple[float, float, Any] | None = None  # last frame seen, not yet emitted / on screen
        self.index = 0  # next output index (resampling grid)
        self.first_t: float | None = None
        self.last_end: float | None = None
        self.decoded = 0
        self.reformatter: Any = None  # one swscale context for the whole video

    def _emit(self, frame: Any) -> bool:
        """Append one output frame; False once max_frames is reached."""
        if self.buffer is None:
            self.rotation = _norm_rotation(frame.rotation)
            stored = (frame.height, frame.width)
            shown = (stored[1], stored[0]) if self.rotation in (90, -90) else stored
            self.out_hw = _target_size(self.path, self.size, *shown)
            h, w = self.out_hw
            if self.estimate is not None and self.estimate * h * w * 3 > MAX_DECODE_BYTES:
                raise _cap_error(self.path, self.estimate, h, w)
            self.buffer = _FrameBuffer(self.path, h, w, self.estimate or 16)
        assert self.out_hw is not None
        if self.reformatter is None:
            from av.video.reformatter import VideoReformatter

            self.reformatter = VideoReformatter()
        self.buffer.append(_to_rgb(frame, self.rotation, self.out_hw, self.reformatter))
        return self.max_frames is None or self.buffer.n < self.max_frames

    def _tau(self) -> float:
        assert self.fps is not None
        return self.start + self.index / self.fps

    def push(self, t: float, dur: float, frame: Any) -> bool:
        """Take the next decoded frame; False when enough output frames were produced."""
        self.decoded += 1
        if self.first_t is None:
            self.first_t = t
        self.last_end = t + dur if self.last_end is None else max(self.last_end, t + dur)
        if self.fps is None:
            if t <= self.start + self.eps:
                self.cur = (t, dur, frame)  # still at or before `start`: remember the on-screen frame
                return True
            if self.cur is not None:
                pending, self.cur = self.cur, None
                if not self._emit(pending[2]):
                    return False
            return self._emit(frame)
        if self.cur is not None:
            # The current frame is on screen until `t`: it answers every grid time before then.
            while self._tau() + self.eps < t:
                self.index += 1
                if not self._emit(self.cur[2]):
                    return False
        self.cur = (t, dur, frame)
        return True

    def finish(self) -> np.ndarray:
        """End of stream: flush the last frame for the time it stays on screen."""
        facts = self.facts
        if self.decoded == 0:
            raise _zero_frames_error(self.path, facts)
        # Demuxers stop quietly at a cut: compare with where the stored index/header says the stream ends.
        stored = facts.expected_end
        if stored > 0 and self.last_end is not None:
            if stored - self.last_end > max(3.0 / facts.fps, 0.02 * stored):
                raise VideoError(
                    self.path,
                    f"truncated or corrupt video: frames end at {self.last_end:.3f}s but the stream "
                    f"should last {stored:.3f}s",
                )
        if facts.codec == "gif" and not _ends_with(self.path, b"\x3b"):
            raise VideoError(self.path, "truncated GIF: the file ends before its trailer byte")
        if self.cur is not None:
            t, dur, frame = self.cur
            end = t + dur
            if self.fps is None:
                if self.start < end - self.eps or self.start <= self.eps:
                    self._emit(frame)
            else:
                while self._tau() + self.eps < end:
                    self.index += 1
                    if not self._emit(frame):
                        break
        if self.buffer is None or self.buffer.n == 0:
            raise VideoError(
                self.path,
                f"start={self.start:g}s is at or beyond the end of the video "
                f"(duration {self.facts.duration:.3f}s); no frames to return",
            )
        return self.buffer.result()

    def result(self) -> np.ndarray:
        assert self.buffer is not None
        return self.buffer.result()


# ----------------------------------------------------------------------------- images


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True if the extension is a still-image one (png, jpg/jpeg, bmp, webp, tif/tiff)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """True if the extension is a video one (mp4, mov, mkv, webm, avi, gif, ...). `.gif` is video."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any PIL-readable image as uint8 (H, W, 3) RGB.

    EXIF orientation is applied; transparency is composited over white; 16-bit images are
    scaled to 8 bits; multi-frame files (animated webp/png, tiff pages) give their first frame.

    Raises:
        VideoError: missing/empty/directory path, not an image, truncated/corrupt data, or more than
            MAX_SIDE*MAX_SIDE pixels.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    _check_input_file(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w <= 0 or h <= 0 or w * h > MAX_SIDE * MAX_SIDE:
                    raise VideoError(
                        p, f"image size {w}x{h} is outside the supported 1..{MAX_SIDE**2} pixels"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _pil_to_rgb(img)
    except VideoError:
        raise
    except Image.DecompressionBombError as e:
        raise VideoError(p, f"image too large ({_short(e)})") from None
    except UnidentifiedImageError:
        kind = _sniff(p)
        what = "the file contains plain text" if kind == "text" else "unrecognised image format"
        raise VideoError(p, f"not an image: {what}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise VideoError(p, f"corrupt or truncated image ({_short(e)})") from None


def _pil_to_rgb(img: Any) -> np.ndarray:
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)
        if mode == "I" and a.max(initial=0) <= 255:
            g = a
        else:
            g = a / 257.0
        g = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    if has_alpha or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


# ----------------------------------------------------------------------------- writing


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The metadata sidecar of a video: the full file name plus `.json` (`clip.mp4` -> `clip.mp4.json`).

    Keeping the video's extension avoids clashing with a dataset's own `clip.json` and keeps
    `clip.mp4` and `clip.gif` apart.
    """
    p = Path(path)
    return p.with_name(p.name + ".json")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _metadata_json(path: Path, metadata: Any) -> str:
    if not isinstance(metadata, dict):
        raise VideoError(path, f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.dumps(metadata, ensure_ascii=False, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise VideoError(path, f"metadata is not JSON-serialisable ({_short(e)})") from None


def _check_frames(path: Path, frames: Any) -> np.ndarray:
    arr = frames if isinstance(frames, np.ndarray) else None
    if arr is None:
        try:
            arr = np.asarray(frames)
        except Exception:
            raise VideoError(
                path, f"frames must be a uint8 array (T, H, W, 3), got {type(frames).__name__}"
            ) from None
    if arr.dtype != np.uint8:
        hint = (
            " (convert with (x * 255).round().clip(0, 255).astype(np.uint8))" if arr.dtype.kind == "f" else ""
        )
        raise VideoError(path, f"frames must have dtype uint8, got {arr.dtype}{hint}")
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise VideoError(path, f"frames must be shaped (T, H, W, 3) RGB, got shape {tuple(arr.shape)}")
    t, h, w, _ = arr.shape
    if t < 1:
        raise VideoError(path, "frames is empty (T = 0); need at least one frame")
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise VideoError(path, f"frame size {h}x{w} is outside 1..{MAX_SIDE}")
    return arr


def _pad_even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    ph, pw = h % 2, w % 2
    if not (ph or pw):
        return frame
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")


def _write_libav(
    tmp: Path, fmt: str, codec: str, frames: np.ndarray, fps: float, crf: int, comment: str | None
) -> None:
    av = _av()
    rate = Fraction(fps).limit_denominator(10000)
    options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
    with av.open(str(tmp), mode="w", format=fmt, options=options) as out:
        if comment is not None:
            out.metadata["comment"] = comment
        stream = out.add_stream(codec, rate=rate)
        h, w = frames.shape[1:3]
        if codec == "libx264":
            h, w = h + h % 2, w + w % 2  # yuv420p needs even sizes: the edge row/column is repeated
            stream.options = {"crf": str(crf), "preset": "medium"}
        else:  # libvpx-vp9: constant quality, crf mapped from the x264 scale (0..51) to vp9's (0..63)
            stream.options = {
                "crf": str(round(crf * 63 / 51)),
                "b:v": "0",
                "deadline": "good",
                "cpu-used": "4",
                "row-mt": "1",
            }
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        cc = stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, limited
        for i, frame in enumerate(frames):
            rgb = np.ascontiguousarray(_pad_even(frame) if codec == "libx264" else frame)
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf = vf.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range=1)
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))


def _global_palette(frames: np.ndarray) -> Any:
    """One adaptive 256-colour palette for the whole clip (no per-frame palette flicker)."""
    from PIL import Image

    t = frames.shape[0]
    idx = np.unique(np.linspace(0, t - 1, min(t, 16)).round().astype(int))
    sample = frames[idx]
    h, w = sample.shape[1:3]
    step = max(1, math.ceil(max(h, w) / 256))
    sample = sample[:, ::step, ::step]
    mosaic = Image.fromarray(np.ascontiguousarray(sample.reshape(-1, sample.shape[2], 3)))
    return mosaic.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def _write_gif(tmp: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    av = _av()
    pal_img = _global_palette(frames)
    pal = np.zeros((256, 4), np.uint8)  # ARGB
    rgb = np.asarray(pal_img.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
    pal[: len(rgb), 1:] = rgb
    pal[:, 0] = 255
    t = frames.shape[0]
    # GIF delays are whole centiseconds: place frame i at round(i * 100 / fps) so rounding never drifts.
    pts = [round(i * 100 / fps) for i in range(t + 1)]
    h, w = frames.shape[1:3]
    with av.open(str(tmp), mode="w", format="gif") as out:
        stream = out.add_stream("gif", rate=100)
        stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
        stream.codec_context.time_base = Fraction(1, 100)
        for i, frame in enumerate(frames):
            q = Image.fromarray(np.ascontiguousarray(frame)).quantize(
                palette=pal_img, dither=Image.Dither.FLOYDSTEINBERG
            )
            vf = av.VideoFrame.from_ndarray((np.asarray(q, np.uint8), pal), format="pal8")
            vf.pts, vf.time_base = pts[i], Fraction(1, 100)
            for packet in stream.encode(vf):
                packet.duration = pts[i + 1] - pts[i]  # the muxer takes the last frame's delay from here
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _gif_blocks(data: bytes) -> tuple[int, list[bytes]]:
    """Walk a GIF: (offset of the first frame's first block, list of comment texts)."""
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        raise ValueError("not a GIF")
    pos = 13
    packed = data[10]
    if packed & 0x80:
        pos += 3 * (2 ** ((packed & 7) + 1))
    first_frame: int | None = None
    comments: list[bytes] = []

    def skip_sub_blocks(i: int, sink: list[bytes] | None = None) -> int:
        while True:
            n = data[i]
            i += 1
            if n == 0:
                return i
            if sink is not None:
                sink.append(data[i : i + n])
            i += n

    while pos < len(data):
        b = data[pos]
        if b == 0x3B:  # trailer
            break
        if b == 0x21:
            label = data[pos + 1]
            if label in (0xF9,) and first_frame is None:
                first_frame = pos
            if label == 0xFE:
                parts: list[bytes] = []
                pos = skip_sub_blocks(pos + 2, parts)
                comments.append(b"".join(parts))
            else:
                pos = skip_sub_blocks(pos + 2)
        elif b == 0x2C:
            if first_frame is None:
                first_frame = pos
            flags = data[pos + 9]
            pos += 10
            if flags & 0x80:
                pos += 3 * (2 ** ((flags & 7) + 1))
            pos = skip_sub_blocks(pos + 1)  # +1: LZW minimum code size
        else:
            raise ValueError(f"bad GIF block 0x{b:02x} at {pos}")
    return (first_frame if first_frame is not None else pos), comments


def _add_gif_comment(tmp: Path, text: str) -> None:
    """Insert a GIF comment extension before the first frame (after header and loop extension)."""
    data = tmp.read_bytes()
    at, _ = _gif_blocks(data)
    payload = text.encode("utf-8")
    block = bytearray(b"\x21\xfe")
    for i in range(0, len(payload), 255):
        chunk = payload[i : i + 255]
        block.append(len(chunk))
        block += chunk
    block.append(0)
    tmp.write_bytes(data[:at] + bytes(block) + data[at:])


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: float,
    *,
    metadata: dict | None = None,
    sidecar: bool = True,
    crf: int = 18,
) -> Path:
    """Encode uint8 (T, H, W, 3) RGB frames to a video file, atomically.

    Formats by extension:
        .mp4 / .mov / .mkv: H.264 (libx264, `crf`, preset medium), yuv420p, BT.709 limited range
            (tagged). yuv420p needs even sizes, so an odd height/width is padded by one row/column
            repeating the edge pixels: reading back gives the padded (even) size.
            mp4/mov are written "faststart" (index first) for streaming.
        .webm: VP9 (libvpx-vp9) constant quality, `crf` mapped from 0..51 to 0..63; odd sizes kept.
        .gif: one adaptive 256-colour palette for the whole clip (Floyd-Steinberg dither), looping;
            frame i starts at round(i * 100 / fps) centiseconds (GIF delays are whole centiseconds, so
            frames are not all equally long unless 100/fps is an integer; fps must be <= 100).

    `metadata` (a JSON-able dict: prompt, seed, model, settings ...) is stored as JSON in the
    container (the "comment" tag; a GIF comment extension for .gif) and, if `sidecar`, also in
    `sidecar_path(path)` (`<file name>.json`). Without metadata or with `sidecar=False`, an old
    sidecar of that name is removed so `read_metadata` never returns stale values.

    The file is encoded to a temporary name in the same folder and renamed into place, so a crash
    never leaves a partial file under `path`. Missing parent folders are created.

    Returns:
        The written path.

    Raises:
        VideoError: unsupported extension, frames not uint8 (T, H, W, 3), bad fps/crf, metadata not
            JSON-serialisable, or the encoder/file system failing.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise VideoError(
            p,
            f"unsupported output extension {ext or '(none)'!r}; expected one of {', '.join(WRITE_EXTENSIONS)}",
        )
    fmt, codec = WRITE_EXTENSIONS[ext]
    fps = _check_number(p, "fps", fps, low=0.0, high=100.0 if ext == ".gif" else MAX_FPS, low_ok=False)
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise VideoError(p, f"bad crf argument {crf!r}: expected an int in 0..51 (lower is better quality)")
    arr = _check_frames(p, frames)
    text = _metadata_json(p, metadata) if metadata is not None else None
    if p.exists() and p.is_dir():
        raise VideoError(p, "is a directory; expected a file path to write")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(p, f"cannot create the output folder ({_short(e)})") from None

    av = _av()
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        if ext == ".gif":
            _write_gif(tmp, arr, fps)
            if text is not None:
                _add_gif_comment(tmp, text)
        else:
            _write_libav(tmp, fmt, codec, arr, fps, int(crf), text)
        _fsync_replace(tmp, p)
    except VideoError:
        raise
    except av.error.FFmpegError as e:
        raise VideoError(p, f"encoding failed ({_short(e)})") from None
    except OSError as e:
        raise VideoError(p, f"cannot write the file ({_short(e)})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()

    side = sidecar_path(p)
    if sidecar and text is not None:
        side_tmp = side.with_name(f".{side.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            side_tmp.write_text(json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n", "utf-8")
            _fsync_replace(side_tmp, side)
        except OSError as e:
            raise VideoError(side, f"cannot write the metadata sidecar ({_short(e)})") from None
        finally:
            with contextlib.suppress(OSError):
                side_tmp.unlink()
    else:
        with contextlib.suppress(OSError):
            side.unlink()  # a sidecar left by an earlier file at this path would be stale
    return p


# ----------------------------------------------------------------------------- metadata


def _parse_tag(value: Any) -> dict | None:
    if not isinstance(value, str):
        return None
    try:
        obj = json.loads(value)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def read_metadata(path: str | os.PathLike[str]) -> dict:
    """Generation metadata of a video: its sidecar JSON if present, else the container tag, else {}.

    The container tag is the JSON text written by `write_video` in the "comment" (or
    "description") tag, or a GIF comment extension; a tag that is not a JSON object is ignored.

    Raises:
        VideoError: missing/empty/unreadable video, or a sidecar that is not a JSON object.
    """
    p = Path(path)
    side = sidecar_path(p)
    if side.is_file():
        try:
            obj = json.loads(side.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise VideoError(side, f"metadata sidecar is not valid JSON ({_short(e)})") from None
        if not isinstance(obj, dict):
            raise VideoError(side, f"metadata sidecar holds a {type(obj).__name__}, expected a JSON object")
        return obj
    _check_input_file(p)
    if p.suffix.lower() == ".gif" or _sniff(p) == "GIF":
        try:
            _, comments = _gif_blocks(p.read_bytes())
        except (ValueError, IndexError):
            raise VideoError(p, "corrupt or truncated GIF file (cannot walk its blocks)") from None
        for c in comments:
            obj = _parse_tag(c.decode("utf-8", errors="replace"))
            if obj is not None:
                return obj
        return {}
    container = _open_input(p)
    try:
        tags = {str(k).lower(): v for k, v in container.metadata.items()}
        for s in container.streams.video:
            for k, v in s.metadata.items():
                tags.setdefault(str(k).lower(), v)
    finally:
        container.close()
    for key in _METADATA_TAGS:
        obj = _parse_tag(tags.get(key))
        if obj is not None:
            return obj
    return {}
