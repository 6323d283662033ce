"""Encoding uint8 frames to mp4 / mov / mkv / webm / gif, atomically, with metadata (`write_video`)."""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.core.files import atomic_path
from tubelet.errors import VideoError
from tubelet.media._common import _av, _check_number, _short
from tubelet.media.formats import MAX_FPS, MAX_SIDE, WRITE_EXTENSIONS
from tubelet.media.metadata import _add_gif_comment, _metadata_json, _write_sidecar

__all__ = ["write_video"]


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
    try:
        with atomic_path(p, fsync=True) as tmp:
            if ext == ".gif":
                _write_gif(tmp, arr, fps)
                if text is not None:
                    _add_gif_comment(tmp, text)
            else:
                _write_libav(tmp, fmt, codec, arr, fps, int(crf), text)
    except VideoError:
        raise
    except av.error.FFmpegError as e:
        raise VideoError(p, f"encoding failed ({_short(e)})") from None
    except OSError as e:
        raise VideoError(p, f"cannot write the file ({_short(e)})") from None
    _write_sidecar(p, text if sidecar else None)
    return p
