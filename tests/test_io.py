"""Video/image I/O: round trips, other containers, timestamp resampling, and real broken files."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import tubelet.media.read as media_read
import tubelet.media.write as media_write
from tubelet.errors import VideoError
from tubelet.media import (
    Video,
    VideoInfo,
    is_image_path,
    is_video_path,
    probe_video,
    read_image,
    read_metadata,
    read_video,
    sidecar_path,
    write_video,
)

STEP = 12  # blue level per frame index: the index is recoverable after lossy coding


def pattern(t: int = 20, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth test clip: red = x ramp, green = y ramp, blue = STEP * frame index."""
    yy, xx = np.mgrid[0:h, 0:w]
    red = (xx * 200 // max(w - 1, 1)).astype(np.uint8)
    green = (yy * 200 // max(h - 1, 1)).astype(np.uint8)
    out = np.empty((t, h, w, 3), np.uint8)
    out[..., 0] = red
    out[..., 1] = green
    out[..., 2] = (np.arange(t) * STEP).astype(np.uint8)[:, None, None]
    return out


def noisy(t: int, h: int, w: int) -> np.ndarray:
    """`pattern` plus noise: frame data, not the index, dominates the file size."""
    noise = np.random.default_rng(0).integers(-40, 40, (t, h, w, 1))
    out = pattern(t, h, w).astype(np.int16)
    out[..., :2] += noise
    return np.clip(out, 0, 255).astype(np.uint8)


def indices(frames: np.ndarray) -> list[int]:
    """Recover each frame's source index from its mean blue level."""
    return [round(float(f[..., 2].mean()) / STEP) for f in frames]


def encode(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    fmt: str | None = None,
    pts: list[int] | None = None,
    time_base: Fraction = Fraction(1, 24),
    rate: int = 24,
    durations: list[int] | None = None,
    rotation: float | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode frames with PyAV directly (independent of tubelet's writer)."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        s = out.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.time_base = time_base
        if codec == "libvpx-vp9":
            s.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b:v": "0"}
        elif codec == "mpeg4":
            s.bit_rate = 4_000_000
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = pts[i] if pts is not None else i
            vf.time_base = time_base
            if durations is not None:
                vf.duration = durations[i]
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    return path


def audio_only(path: Path, codec: str = "aac") -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=16000)
        n = 0
        for _ in range(6):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, n
            n += 1024
            out.mux(s.encode(fr))
        out.mux(s.encode(None))
    return path


def assert_video_error(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    err = exc.value
    assert isinstance(err, VideoError)
    msg = str(err)
    assert str(path) in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), f"{w!r} not in {msg!r}"
    # Wrapped, not leaked: no FFmpeg exception type and no chained FFmpeg traceback.
    assert not isinstance(err, av.error.FFmpegError)
    assert not isinstance(err.__cause__, av.error.FFmpegError)
    assert "\n" not in msg


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = pattern()
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, 24)
    return path, frames


# ----------------------------------------------------------------------------- round trips


def test_mp4_round_trip(clip_mp4: tuple[Path, np.ndarray]) -> None:
    path, frames = clip_mp4
    info = probe_video(path)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height, info.num_frames, info.codec) == (64, 48, 20, "h264")
    assert info.fps == pytest.approx(24.0)
    assert info.duration == pytest.approx(20 / 24, abs=1e-3)
    video = read_video(path)
    assert isinstance(video, Video)
    assert video.frames.shape == (20, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.frames.flags.c_contiguous
    assert video.fps == pytest.approx(24.0)
    assert video.path == str(path)
    err = np.abs(video.frames.astype(np.int16) - frames.astype(np.int16)).mean()
    assert err < 4.0, err  # h264 crf 18 on a smooth pattern
    assert indices(video.frames) == list(range(20))


@pytest.mark.parametrize("ext", [".mkv", ".mov"])
def test_other_h264_containers_round_trip(tmp_path: Path, ext: str) -> None:
    frames = pattern(8, 32, 48)
    path = write_video(tmp_path / f"c{ext}", frames, 12)
    video = read_video(path)
    assert video.frames.shape == frames.shape and video.fps == pytest.approx(12.0)
    assert indices(video.frames) == list(range(8))
    assert np.abs(video.frames.astype(np.int16) - frames).mean() < 4.0


def test_odd_size_is_edge_padded(tmp_path: Path) -> None:
    frames = pattern(6, 33, 45)
    frames[:, -1, :, 1] = 255  # bright last row and column: the padding must repeat them
    frames[:, :, -1, 0] = 255
    path = write_video(tmp_path / "odd.mp4", frames, 24)
    video = read_video(path)
    assert video.frames.shape == (6, 34, 46, 3)
    got = video.frames.astype(np.int16)
    assert np.abs(got[:, :33, :45] - frames).mean() < 5.0
    assert got[:, 33, 10:30, 1].mean() > 230  # padded row repeats the bright last row
    assert got[:, 10:25, 45, 0].mean() > 230  # padded column repeats the bright last column


def test_webm_writer_keeps_odd_size(tmp_path: Path) -> None:
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this PyAV/FFmpeg build has no libvpx-vp9 encoder")
    frames = pattern(5, 33, 45)
    video = read_video(write_video(tmp_path / "odd.webm", frames, 10))
    assert video.frames.shape == frames.shape
    assert indices(video.frames) == list(range(5))


def test_gif_round_trip(tmp_path: Path) -> None:
    frames = np.zeros((10, 24, 32, 3), np.uint8)
    for t in range(10):
        frames[t] = (t * 25, 255 - t * 25, (t * 70) % 256)
        frames[t, :8, :8] = 255
    path = write_video(tmp_path / "a.gif", frames, 20)
    video = read_video(path)
    assert video.frames.shape == frames.shape
    assert np.array_equal(video.frames, frames)  # few colours: the palette is exact
    assert video.fps == pytest.approx(20.0)
    with Image.open(path) as im:  # an independent reader agrees on count and 50 ms delays
        delays = []
        for i in range(im.n_frames):
            im.seek(i)
            delays.append(im.info["duration"])
    assert delays == [50] * 10
    info = probe_video(path)
    assert (info.num_frames, info.codec) == (10, "gif") and info.duration == pytest.approx(0.5)


def test_gif_fractional_delays_do_not_drift(tmp_path: Path) -> None:
    frames = np.zeros((12, 16, 16, 3), np.uint8)
    frames[..., 2] = (np.arange(12) * STEP)[:, None, None]  # flat colours: the gif palette is exact
    path = write_video(tmp_path / "b.gif", frames, 24)  # 100/24 cs per frame: 4 or 5 cs each
    with Image.open(path) as im:
        total = 0
        for i in range(im.n_frames):
            im.seek(i)
            total += im.info["duration"]
    assert total == 500  # 12 frames at 24 fps = 0.5 s, no rounding drift
    assert indices(read_video(path, fps=24).frames) == list(range(12))


@pytest.mark.parametrize("ext", [".mp4", ".gif", ".mkv"])
def test_metadata_sidecar_and_container(tmp_path: Path, ext: str) -> None:
    meta = {
        "prompt": "a red ball rolls left — café",
        "seed": np.int64(7),
        "settings": {"steps": 30, "cfg": 4.5},
    }
    expected = {"prompt": meta["prompt"], "seed": 7, "settings": {"steps": 30, "cfg": 4.5}}
    path = write_video(tmp_path / f"m{ext}", pattern(4, 16, 16), 8, metadata=meta)
    side = sidecar_path(path)
    assert side == tmp_path / f"m{ext}.json"
    assert json.loads(side.read_text("utf-8")) == expected
    assert read_metadata(path) == expected
    side.unlink()
    assert read_metadata(path) == expected  # from the container tag alone
    assert len(read_video(path).frames) == 4  # the tag does not disturb decoding


def test_metadata_without_sidecar_and_stale_sidecar(tmp_path: Path) -> None:
    path = write_video(tmp_path / "s.mp4", pattern(3, 16, 16), 8, metadata={"seed": 1})
    assert sidecar_path(path).exists()
    write_video(path, pattern(3, 16, 16), 8, metadata={"seed": 2}, sidecar=False)
    assert not sidecar_path(path).exists()
    assert read_metadata(path) == {"seed": 2}
    write_video(path, pattern(3, 16, 16), 8)
    assert read_metadata(path) == {}
    sidecar_path(path).write_text("{not json")
    with pytest.raises(VideoError) as exc:
        read_metadata(path)
    assert "json" in str(exc.value).lower() and str(sidecar_path(path)) in str(exc.value)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_video(tmp_path / "keep.mp4", pattern(4, 16, 16), 8)
    before = path.read_bytes()
    calls = {"n": 0}
    real = media_write._pad_even

    def crash_midway(frame: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash while encoding")
        return real(frame)

    monkeypatch.setattr(media_write, "_pad_even", crash_midway)
    with pytest.raises(RuntimeError):
        write_video(path, pattern(6, 16, 16), 8)
    assert path.read_bytes() == before  # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]  # no temp file left over


# ----------------------------------------------------------------------------- other formats


def test_read_webm_vp9(tmp_path: Path) -> None:
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this PyAV/FFmpeg build has no libvpx-vp9 encoder")
    frames = pattern(10, 32, 48)
    path = encode(tmp_path / "a.webm", frames, codec="libvpx-vp9", time_base=Fraction(1, 24))
    video = read_video(path)
    assert video.frames.shape == frames.shape and video.fps == pytest.approx(24.0)
    assert indices(video.frames) == list(range(10))
    assert probe_video(path).codec == "vp9"


def test_read_mkv_and_avi(tmp_path: Path) -> None:
    frames = pattern(10, 32, 48)
    mkv = encode(tmp_path / "a.mkv", frames)
    avi = encode(tmp_path / "a.avi", frames, codec="mpeg4")
    for path, codec in ((mkv, "h264"), (avi, "mpeg4")):
        info = probe_video(path)
        assert (info.width, info.height, info.codec) == (48, 32, codec)
        assert info.num_frames == 10  # estimated from duration for mkv, indexed for avi
        video = read_video(path)
        assert video.frames.shape == frames.shape, path
        assert video.fps == pytest.approx(24.0)
        assert indices(video.frames) == list(range(10)), path
        assert np.abs(video.frames.astype(np.int16) - frames).mean() < 6.0


def test_variable_frame_rate_resampled_by_timestamps(tmp_path: Path) -> None:
    pts = [0, 40, 100, 110, 200, 330, 400, 500]  # milliseconds, irregular
    frames = pattern(len(pts), 32, 48)
    durs = [b - a for a, b in zip(pts, [*pts[1:], 600])]
    path = encode(tmp_path / "vfr.mp4", frames, pts=pts, time_base=Fraction(1, 1000), durations=durs)

    def on_screen(t: float) -> int:  # reference: the last source frame starting at or before t
        return max(i for i, p in enumerate(pts) if p / 1000 <= t + 1e-9)

    assert indices(read_video(path).frames) == list(range(8))  # fps=None keeps every frame
    video = read_video(path, fps=10)
    assert video.fps == 10.0
    got = indices(video.frames)
    assert got[:6] == [on_screen(i / 10) for i in range(6)] == [0, 2, 4, 4, 6, 7]
    assert all(g == 7 for g in got[6:])  # only the last frame may be held to the end
    video = read_video(path, fps=40, start=0.09, max_frames=8)
    assert indices(video.frames) == [on_screen(0.09 + i / 40) for i in range(8)]


def test_rotation_from_display_matrix(tmp_path: Path) -> None:
    frames = pattern(3, 32, 48)
    frames[:, :8, :8] = 255  # marker in the top-left corner
    path = encode(tmp_path / "rot.mp4", frames, rotation=90)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (32, 48, 90)
    video = read_video(path)
    assert video.frames.shape == (3, 48, 32, 3)
    want = np.rot90(frames, k=1, axes=(1, 2))  # 90 degrees counter-clockwise: marker goes bottom-left
    assert np.abs(video.frames.astype(np.int16) - want).mean() < 5.0
    assert read_video(path, size=(24, 16)).frames.shape == (3, 24, 16, 3)


# ----------------------------------------------------------------------------- read options


def test_fps_resampling_constant_rate(clip_mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = clip_mp4
    down = read_video(path, fps=8)
    assert down.fps == 8.0 and indices(down.frames) == [0, 3, 6, 9, 12, 15, 18]
    up = read_video(path, fps=48)
    assert len(up.frames) == 40 and indices(up.frames) == [i // 2 for i in range(40)]
    same = read_video(path, fps=24)
    assert indices(same.frames) == list(range(20))
    odd = read_video(path, fps=29.97)
    assert indices(odd.frames) == [int(i / 29.97 * 24 + 1e-9) for i in range(len(odd.frames))]
    assert len(odd.frames) == 25  # ceil(20 / 24 * 29.97)


def test_max_frames_stops_early(clip_mp4: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = clip_mp4
    assert indices(read_video(path, max_frames=5).frames) == [0, 1, 2, 3, 4]
    assert indices(read_video(path, fps=12, max_frames=3).frames) == [0, 2, 4]
    assert len(read_video(path, max_frames=1000).frames) == 20
    # A file whose tail is damaged: a full read fails, a short read never reaches the damage.
    good = encode(tmp_path / "long.mp4", noisy(20, 48, 64), options={"movflags": "+faststart"})
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    first = read_video(cut, max_frames=2).frames
    src = noisy(20, 48, 64)
    assert first.shape == (2, 48, 64, 3)
    assert np.abs(first.astype(np.int16) - src[:2]).mean() < np.abs(first.astype(np.int16) - src[2:4]).mean()
    with pytest.raises(VideoError) as exc:
        read_video(cut)
    assert_video_error(exc, cut, "truncated")


def test_size_tuple_and_short_side(clip_mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = clip_mp4
    full = read_video(path).frames
    exact = read_video(path, size=(24, 40)).frames
    assert exact.shape == (20, 24, 40, 3)
    import cv2

    ref = cv2.resize(full[3], (40, 24), interpolation=cv2.INTER_AREA)
    assert np.abs(exact[3].astype(np.int16) - ref).max() <= 1
    assert read_video(path, size=24).frames.shape == (20, 24, 32, 3)  # short side 24, aspect kept
    up = read_video(path, size=96, max_frames=2).frames
    assert up.shape == (2, 96, 128, 3)
    assert abs(float(up[0].mean()) - float(full[0].mean())) < 2.0


def test_start(clip_mp4: tuple[Path, np.ndarray]) -> None:
    path, _ = clip_mp4
    assert indices(read_video(path, start=0.5).frames) == list(range(12, 20))
    assert indices(read_video(path, start=0.51).frames) == list(range(12, 20))  # frame 12 is on screen
    assert indices(read_video(path, start=0.25, fps=12, max_frames=4).frames) == [6, 8, 10, 12]
    with pytest.raises(VideoError) as exc:
        read_video(path, start=5.0)
    assert_video_error(exc, path, "start", "beyond the end")


@pytest.mark.parametrize("ext", [".gif", ".mkv", ".avi", ".webm"])
def test_start_and_fps_other_containers(tmp_path: Path, ext: str) -> None:
    """Seeking differs per demuxer (gif cannot seek); the selected frames must not."""
    if ext == ".webm" and "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this PyAV/FFmpeg build has no libvpx-vp9 encoder")
    frames = np.zeros((40, 16, 16, 3), np.uint8)
    frames[..., 2] = (np.arange(40) * 6)[:, None, None]
    if ext == ".gif":
        path = write_video(tmp_path / "a.gif", frames, 20)
    else:
        codec = {".mkv": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9"}[ext]
        path = encode(tmp_path / f"a{ext}", frames, codec=codec, rate=20, time_base=Fraction(1, 20))
    for start in (0.0, 0.5, 1.23):
        got = [round(float(f[..., 2].mean()) / 6) for f in read_video(path, start=start, fps=10).frames]
        want = [int((start + i / 10) * 20 + 1e-6) for i in range(len(got))]
        assert len(got) == math.ceil((2.0 - start) * 10 - 1e-9)
        assert np.abs(np.subtract(got, want)).max() <= (1 if ext == ".webm" else 0), (start, got, want)


# ----------------------------------------------------------------------------- errors


def test_missing_directory_and_empty_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    for fn in (read_video, probe_video, read_image, read_metadata):
        with pytest.raises(VideoError) as exc:
            fn(missing)
        assert_video_error(exc, missing, "not found")
    with pytest.raises(VideoError) as exc:
        read_video(tmp_path)
    assert_video_error(exc, tmp_path, "directory")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError) as exc:
        read_video(empty)
    assert_video_error(exc, empty, "empty", "0 bytes")


def test_truncated_mp4(clip_mp4: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = clip_mp4  # faststart: the index is first, so the cut loses frame data
    cut = tmp_path / "trunc.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    with pytest.raises(VideoError) as exc:
        read_video(cut)
    assert_video_error(exc, cut, "truncated")
    # Index at the end (FFmpeg's default layout): the cut loses the index itself.
    tail = encode(tmp_path / "tail.mp4", pattern(10, 32, 48))
    data = tail.read_bytes()
    tail.write_bytes(data[: int(len(data) * 0.4)])
    for fn in (read_video, probe_video):
        with pytest.raises(VideoError) as exc:
            fn(tail)
        assert_video_error(exc, tail, "corrupt or truncated", "MP4")


@pytest.mark.parametrize("ext", [".mkv", ".avi", ".gif"])
def test_truncated_other_containers(tmp_path: Path, ext: str) -> None:
    """Demuxers stop quietly at a cut; the stored duration/frame count (or gif trailer) exposes it."""
    frames = noisy(20, 48, 64)
    if ext == ".gif":
        good = write_video(tmp_path / f"good{ext}", frames, 24)
    else:
        good = encode(tmp_path / f"good{ext}", frames, codec="mpeg4" if ext == ".avi" else "libx264")
    assert len(read_video(good).frames) == 20
    cut = tmp_path / f"cut{ext}"
    data = good.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoError) as exc:
        read_video(cut)
    assert_video_error(exc, cut, "truncated")
    assert len(read_video(cut, max_frames=3).frames) == 3  # the intact head still reads


def test_absurd_frame_size_in_file(tmp_path: Path) -> None:
    path = tmp_path / "wide.mkv"  # raw video, 16400 x 2: tiny on disk, wider than MAX_SIDE
    with av.open(str(path), "w") as out:
        s = out.add_stream("rawvideo", rate=1)
        s.width, s.height, s.pix_fmt = 16400, 2, "gray"
        vf = av.VideoFrame.from_ndarray(np.zeros((2, 16400), np.uint8), format="gray")
        vf.pts = 0
        out.mux(s.encode(vf))
        out.mux(s.encode(None))
    for fn in (read_video, probe_video):
        with pytest.raises(VideoError) as exc:
            fn(path)
        assert_video_error(exc, path, "16400x2", "16384")


def test_text_file_renamed_mp4(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a shopping list, not a video\n" * 20)
    for fn in (read_video, probe_video):
        with pytest.raises(VideoError) as exc:
            fn(fake)
        assert_video_error(exc, fake, "not a video", "text")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError) as exc:
        read_video(junk)
    assert_video_error(exc, junk, "not a video")


@pytest.mark.parametrize(
    ("name", "codec"), [("voice.m4a", "aac"), ("voice.mp4", "aac"), ("tone.wav", "pcm_s16le")]
)
def test_audio_only(tmp_path: Path, name: str, codec: str) -> None:
    path = audio_only(tmp_path / name, codec)
    for fn in (read_video, probe_video):
        with pytest.raises(VideoError) as exc:
            fn(path)
        assert_video_error(exc, path, "no video stream", "audio")


def test_audio_with_cover_art_is_not_video(tmp_path: Path) -> None:
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this PyAV/FFmpeg build has no libmp3lame encoder")
    path = tmp_path / "song.mp3"
    with av.open(str(path), "w") as out:
        a = out.add_stream("libmp3lame", rate=16000)
        v = out.add_stream("mjpeg", rate=1)
        v.width, v.height, v.pix_fmt = 16, 16, "yuvj420p"
        v.disposition = av.stream.Disposition.attached_pic
        pic = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        pic = pic.reformat(format="yuvj420p")
        pic.pts = 0
        out.mux(v.encode(pic) + v.encode(None))
        for i in range(4):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1152
            out.mux(a.encode(fr))
        out.mux(a.encode(None))
    with pytest.raises(VideoError) as exc:
        read_video(path)
    assert_video_error(exc, path, "no video stream", "cover picture", "audio")


def test_video_stream_with_zero_frames(tmp_path: Path) -> None:
    path = tmp_path / "zero.mkv"
    with av.open(str(path), "w") as out:  # a video stream that never gets a frame, next to audio
        v = out.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        a = out.add_stream("aac", rate=16000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate, fr.pts = 16000, 0
        out.mux(a.encode(fr))
        out.mux(a.encode(None))
    assert len(av.open(str(path)).streams.video) == 1
    for fn in (read_video, probe_video):
        with pytest.raises(VideoError) as exc:
            fn(path)
        assert_video_error(exc, path, "0 decodable frames")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"fps": 0}, ("fps",)),
        ({"fps": -5.0}, ("fps",)),
        ({"fps": float("nan")}, ("fps",)),
        ({"fps": "fast"}, ("fps", "number")),
        ({"max_frames": 0}, ("max_frames",)),
        ({"start": -1.0}, ("start",)),
        ({"size": (0, 10)}, ("size",)),
        ({"size": "big"}, ("size",)),
        ({"size": (20000, 20000)}, ("size", "16384")),
    ],
)
def test_bad_read_arguments(clip_mp4: tuple[Path, np.ndarray], kwargs: dict, words: tuple[str, ...]) -> None:
    path, _ = clip_mp4
    with pytest.raises(VideoError) as exc:
        read_video(path, **kwargs)
    assert_video_error(exc, path, *words)


def test_memory_cap(clip_mp4: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = clip_mp4
    monkeypatch.setattr(media_read, "MAX_DECODE_BYTES", 10 * 48 * 64 * 3)  # room for 10 frames
    with pytest.raises(VideoError) as exc:
        read_video(path)
    assert_video_error(exc, path, "GiB", "max_frames", "size")
    assert len(read_video(path, max_frames=10).frames) == 10
    assert len(read_video(path, size=16).frames) == 20


def test_write_rejects_bad_frames_and_extensions(tmp_path: Path) -> None:
    good = pattern(2, 8, 8)
    bad_frames = [
        (good.astype(np.float32) / 255, "uint8"),
        (good[0], "(T, H, W, 3)"),
        (good[..., :2], "(T, H, W, 3)"),
        (good[:0], "empty"),
    ]
    out = tmp_path / "x.mp4"
    for frames, word in bad_frames:
        with pytest.raises(VideoError) as exc:
            write_video(out, frames, 8)
        assert_video_error(exc, out, word)
    for bad_fps in (0, float("inf"), -1):
        with pytest.raises(VideoError) as exc:
            write_video(out, good, bad_fps)
        assert_video_error(exc, out, "fps")
    with pytest.raises(VideoError) as exc:
        write_video(tmp_path / "y.gif", good, 200)
    assert_video_error(exc, tmp_path / "y.gif", "fps", "100")
    for name in ("x.xyz", "x.avi", "noext"):
        with pytest.raises(VideoError) as exc:
            write_video(tmp_path / name, good, 8)
        assert_video_error(exc, tmp_path / name, "unsupported output extension", ".mp4")
    with pytest.raises(VideoError) as exc:
        write_video(out, good, 8, metadata={"bad": object()})
    assert_video_error(exc, out, "JSON")
    with pytest.raises(VideoError) as exc:
        write_video(out, good, 8, crf=99)
    assert_video_error(exc, out, "crf")
    assert list(tmp_path.iterdir()) == []  # nothing written by any failed call


# ----------------------------------------------------------------------------- images and paths


def test_read_image_modes(tmp_path: Path) -> None:
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:3, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (6, 5, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [200, 0, 0] and img[5, 0].tolist() == [255, 255, 255]
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    got = read_image(tmp_path / "d.png")
    assert got.shape == (3, 4, 3) and np.array_equal(got[..., 0], np.rint(deep / 257).astype(np.uint8))
    rgb = pattern(1, 10, 12)[0]
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "c.jpg").astype(np.int16) - rgb).mean() < 4.0


def test_read_image_errors(tmp_path: Path) -> None:
    text = tmp_path / "t.png"
    text.write_text("hello, not an image\n")
    with pytest.raises(VideoError) as exc:
        read_image(text)
    assert_video_error(exc, text, "not an image")
    Image.fromarray(pattern(1, 64, 64)[0]).save(tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    data = (tmp_path / "full.png").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError) as exc:
        read_image(cut)
    assert_video_error(exc, cut, "truncated")


def test_path_kinds() -> None:
    assert is_image_path("a/b.PNG") and is_image_path(Path("x.jpeg")) and not is_image_path("v.mp4")
    assert is_video_path("clip.MP4") and is_video_path("x.webm") and is_video_path("anim.gif")
    assert not is_video_path("x.png") and not is_video_path("README") and not is_image_path("x.gif")
