"""Checking a dataset folder (`tubelet data check`): `check_dataset` probes and decode-tests every
file and summarises the folder in a `CheckReport` (counts, resolutions, frame rates, durations and
every unreadable file with its cause).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.data.captions import read_captions
from tubelet.data.media_index import MediaInfo, _map_files, list_media, probe_media
from tubelet.errors import TubeletError
from tubelet.media import read_image, read_video

_DURATION_BINS = [
    (1, "<1s"),
    (2, "1-2s"),
    (5, "2-5s"),
    (10, "5-10s"),
    (30, "10-30s"),
    (60, "30-60s"),
    (300, "1-5min"),
]


def _duration_bin(d: float) -> str:
    for limit, name in _DURATION_BINS:
        if d < limit:
            return name
    return ">5min"


@dataclass
class CheckReport:
    """What `check_dataset` found. `unreadable` lists (path, cause) for every unusable file."""

    root: str
    captions_file: str
    files: int = 0
    videos: int = 0
    images: int = 0
    caption_lines: int = 0
    captioned_files: int = 0
    uncaptioned_files: int = 0
    total_duration: float = 0.0
    total_frames: int = 0
    resolutions: dict[str, int] = field(default_factory=dict)
    frame_rates: dict[str, int] = field(default_factory=dict)
    durations: dict[str, int] = field(default_factory=dict)
    duration_min: float = 0.0
    duration_median: float = 0.0
    duration_max: float = 0.0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    uncaptioned: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every file could be read."""
        return not self.unreadable

    def summary_line(self) -> str:
        """E.g. ``3 of 120 files unreadable`` or ``all 120 files readable``."""
        if self.unreadable:
            return f"{len(self.unreadable)} of {self.files} files unreadable"
        return f"all {self.files} files readable"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = dataclasses.asdict(self)
        d["unreadable"] = [{"path": p, "cause": c} for p, c in self.unreadable]
        d["ok"] = self.ok
        d["summary"] = self.summary_line()
        return d

    def format_table(self) -> str:
        """Readable multi-line report ending with the summary line."""

        def hms(sec: float) -> str:
            sec = round(sec)
            return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}"

        rows = [
            ("dataset", self.root),
            ("captions file", self.captions_file),
            ("files", f"{self.files} ({self.videos} videos, {self.images} images)"),
            ("caption lines", str(self.caption_lines)),
            ("captioned files", str(self.captioned_files)),
            ("uncaptioned files", str(self.uncaptioned_files)),
            ("total duration", f"{hms(self.total_duration)} ({self.total_frames} frames)"),
        ]
        if self.videos:
            rows.append(
                (
                    "video duration",
                    f"min {self.duration_min:.2f}s  median {self.duration_median:.2f}s  max {self.duration_max:.2f}s",
                )
            )
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]

        def table(title: str, counts: dict[str, int], limit: int = 12) -> None:
            if not counts:
                return
            lines.append("")
            lines.append(f"{title:<16}{'files':>8}")
            items = list(counts.items())
            for k, n in items[:limit]:
                lines.append(f"  {k:<14}{n:>8}")
            if len(items) > limit:
                lines.append(f"  {'(others)':<14}{sum(n for _, n in items[limit:]):>8}")

        table("resolution", self.resolutions)
        table("frame rate", self.frame_rates)
        table("duration", self.durations)
        if self.unreadable:
            lines.append("")
            lines.append("unreadable files:")
            lines += [f"  {p}: {c}" for p, c in self.unreadable]
        if self.uncaptioned:
            lines.append("")
            lines.append(f"uncaptioned files (not used for training): {len(self.uncaptioned)}")
            lines += [f"  {p}" for p in self.uncaptioned[:10]]
            if len(self.uncaptioned) > 10:
                lines.append(f"  ... and {len(self.uncaptioned) - 10} more (see --json)")
        lines.append("")
        lines.append(self.summary_line())
        return "\n".join(lines)


def _decode_test(path: Path, info: MediaInfo) -> None:
    """Decode-test one file cheaply; raises TubeletError.

    Images are decoded fully. For videos, probing already decoded the first frame, so this decodes
    the last frames (seeking there): a truncated or damaged tail fails here without decoding the
    whole video.
    """
    from tubelet.errors import VideoError

    if info.kind == "image":
        img = np.asarray(read_image(path))
        if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            raise VideoError(path, f"image decoded to shape {img.shape}")
        return
    tail = min(info.num_frames, 2)
    t0 = max(0.0, (info.num_frames - tail) / info.fps)
    try:
        last = read_video(path, start=t0, max_frames=tail)
        n = len(last.frames)
    except VideoError as e:
        n, why = 0, f" ({e.cause})"
    else:
        why = ""
    if n < 1:
        raise VideoError(
            path,
            f"truncated or damaged: the last frames (from {t0:.2f}s of {info.duration:.2f}s, "
            f"{info.num_frames} frames in the index) cannot be decoded{why}",
        )


def _check_one(job: tuple[Path, str]) -> MediaInfo | str:
    """Probe + decode-test one file of `check_dataset`: MediaInfo, or the cause it is unreadable."""
    path, where = job
    if where:  # named by a caption but not among the media files
        return ("file not found" if not path.exists() else "not a video or image file extension") + where
    try:
        info = probe_media(path)
        _decode_test(path, info)
    except TubeletError as e:
        return getattr(e, "cause", None) or str(e)
    except Exception as e:  # a decoder bug must not abort the whole check
        return f"{type(e).__name__}: {e}"
    return info


def check_dataset(
    root: str | Path, *, progress: bool = True, video_key: str = "video", caption_key: str = "caption"
) -> CheckReport:
    """Check a dataset directory: count files and captions, summarise resolutions, frame rates and
    durations, and list every unreadable file with its cause.

    Each video is probed (which decodes its first frame) and its last frames are decoded (this
    catches empty, non-video and truncated files without decoding whole videos); each image is
    decoded fully. Files are checked on a few threads.
    Captions files that are missing or malformed raise DataError (file and line number);
    media files named by captions but missing are reported as unreadable.
    """
    root = Path(root)
    captions = read_captions(root, video_key=video_key, caption_key=caption_key)
    by_path = captions.by_path()
    media = list_media(root)
    media_set = set(media)
    report = CheckReport(str(root), str(captions.file), caption_lines=len(captions.entries))
    report.uncaptioned = [str(p) for p in media if p not in by_path]
    report.uncaptioned_files = len(report.uncaptioned)
    report.captioned_files = sum(1 for p in media if p in by_path)
    todo: list[tuple[Path, str]] = [(p, "") for p in media]
    for p, entries in by_path.items():
        if p not in media_set:
            todo.append((p, f" (named at {captions.file.name} line {entries[0].line})"))
    report.files = len(todo)
    resolutions: Counter[str] = Counter()
    rates: Counter[str] = Counter()
    durations: Counter[str] = Counter()
    all_durations: list[float] = []
    results = _map_files(_check_one, todo, "checking", progress)
    for (path, _), info in zip(todo, results):
        if isinstance(info, str):
            report.unreadable.append((str(path), info))
            continue
        resolutions[f"{info.width}x{info.height}"] += 1
        if info.kind == "image":
            report.images += 1
        else:
            report.videos += 1
            report.total_duration += info.duration
            report.total_frames += info.num_frames
            all_durations.append(info.duration)
            rates[f"{info.fps:.3g}"] += 1
            durations[_duration_bin(info.duration)] += 1
    report.resolutions = dict(resolutions.most_common())
    report.frame_rates = dict(rates.most_common())
    order = [name for _, name in _DURATION_BINS] + [">5min"]
    report.durations = {k: durations[k] for k in order if durations[k]}
    if all_durations:
        report.duration_min = min(all_durations)
        report.duration_median = statistics.median(all_durations)
        report.duration_max = max(all_durations)
    return report
