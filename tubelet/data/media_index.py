"""Media files of a dataset folder: finding them (`list_media`), probing each once (`probe_media`,
cached per file version) and mapping a function over many files on a few threads (`_map_files`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tubelet.errors import TubeletError
from tubelet.media import is_image_path, is_video_path, probe_image, probe_video

T = TypeVar("T")

# Folders bigger than this get a progress bar while they are indexed / checked.
_PROGRESS_MIN_FILES = 64


def list_media(root: str | Path) -> list[Path]:
    """All video and image files under `root` (recursively, hidden entries skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if is_video_path(p) or is_image_path(p):
                out.append(p)
    return out


@dataclass
class MediaInfo:
    """What indexing needs to know about one file (probed once)."""

    kind: str  # "video" or "image"
    width: int
    height: int
    fps: float  # 0 for images
    num_frames: int  # 1 for images
    duration: float  # 0 for images
    codec: str = ""


_PROBE_CACHE: dict[tuple[str, int, int], MediaInfo] = {}


def probe_media(path: str | Path) -> MediaInfo:
    """Probe a video or an image (`tubelet.media.probe_video` / `probe_image`); cached per file version.

    Raises VideoError (a TubeletError) when the file cannot be read.
    """
    from tubelet.errors import VideoError

    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise VideoError(path, f"cannot access file ({e.strerror or e})") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _PROBE_CACHE.get(key)
    if cached is not None:
        return cached
    if is_image_path(path):
        width, height = probe_image(path)
        info = MediaInfo("image", width, height, 0.0, 1, 0.0, "")
    else:
        # probe_video checks the file and the frame size, falls back to 25 fps and estimates a missing
        # frame count or duration from the other facts.
        vi = probe_video(path)
        n, fps = vi.num_frames, vi.fps
        if n <= 0:
            raise VideoError(path, "no video frames")
        info = MediaInfo("video", vi.width, vi.height, fps, n, vi.duration or n / fps, vi.codec)
    _PROBE_CACHE[key] = info
    return info


def _map_files(fn: Callable[[Any], T], items: Sequence[Any], desc: str, progress: bool) -> list[T]:
    """[fn(x) for x in items] on a few threads (probing waits on disk and FFmpeg), in order,
    with a progress bar when there are many items."""
    workers = min(8, 2 * (os.cpu_count() or 1), len(items))
    bar = None
    if progress and len(items) >= _PROGRESS_MIN_FILES:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="file", leave=False)
    out: list[T] = []
    try:
        if workers <= 1 or len(items) < 8:
            results: Iterator[T] = map(fn, items)
            for r in results:
                out.append(r)
                if bar is not None:
                    bar.update(1)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="tubelet-probe") as pool:
                for r in pool.map(fn, items):
                    out.append(r)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def _try_probe(path: Path) -> MediaInfo | str:
    """MediaInfo, or the cause why `path` cannot be read."""
    try:
        return probe_media(path)
    except TubeletError as e:
        return getattr(e, "cause", None) or str(e)
    except Exception as e:  # a decoder bug must not stop indexing
        return f"{type(e).__name__}: {e}"
