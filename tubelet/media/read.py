"""Decoding videos into uint8 frames, with timestamp-exact resampling (`read_video`, `Video`)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.errors import VideoError
from tubelet.media._common import _av, _check_input_file, _check_number, _open_input, _short, _video_stream
from tubelet.media.formats import MAX_FPS, MAX_SIDE
from tubelet.media.probe import _norm_rotation, _stream_facts, _StreamFacts, _zero_frames_error

__all__ = ["MAX_DECODE_BYTES", "Video", "read_video"]

# Largest decoded request, T*H*W*3 bytes. A module variable so callers (and tests) can change it:
# set `tubelet.media.read.MAX_DECODE_BYTES` (the name re-exported by `tubelet.media` is a copy).
MAX_DECODE_BYTES = 16 * 1024**3


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


def _ends_with(path: Path, suffix: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-len(suffix), os.SEEK_END)
            return f.read() == suffix
    except OSError:
        return False


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
