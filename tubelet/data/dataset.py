"""Training data from a folder of videos and images with captions.

Layout of a dataset directory::

    root/
      captions.jsonl        # {"video": "clips/a.mp4", "caption": "a red ball", ...extra keys ignored}
      clips/a.mp4 ...       # any container PyAV reads: mp4, webm, mkv, avi, mov, gif
      stills/b.png ...      # images (png, jpg, webp) are 1-frame clips

or ``captions.csv`` with the columns ``video,caption``. A file may be named on several
lines (several captions, e.g. one English and one Chinese): it is one sample and every draw
picks one of its captions at random. Paths are relative to ``root`` (absolute paths work too).

Per-sample random choices (which caption, the start frame with ``random_start``, which sample
replaces an unreadable one) are pure functions of (seed, epoch, sample index): see `SampleKey`
and `sample_rng`. They never come from a process's RNG stream, so which process or loader worker
produces a sample does not change what the sample is (a run on N processes sees exactly the
samples of a run on one process with the same global batch).

Samples are grouped in *buckets* (frames, height, width, batch size). A sample goes to the
bucket whose aspect ratio is closest to its own and, among the buckets of that aspect, to the
one with the most frames it can fill at the target frame rate. Frames are cropped to the
bucket's aspect ratio around the centre and then resized (never stretched). Clips too short
for every bucket of their aspect are skipped and counted (not an error).

Files that cannot be read never stop training: a file that fails to probe is left out of the
index, and a sample that fails to decode is replaced by another sample of the same bucket. Both
are counted in ``VideoDataset.stats()`` with their paths and logged once (WARNING, logger
``tubelet.data``). With DataLoader workers the failures found in workers travel back inside the
batches (key ``skipped``) and are recorded in the main process by the loader of ``make_loader``.

This module holds `DataConfig`, `Sample` and `VideoDataset`; the other parts live in their own
modules and are re-exported here: `tubelet.data.captions` (captions files),
`tubelet.data.media_index` (finding and probing media files), `tubelet.data.buckets` (buckets,
frame selection, crop + resize), `tubelet.data.sampling` (per-sample draws), `tubelet.data.loader`
(batch sampler and DataLoader) and `tubelet.data.check` (`tubelet data check`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from tubelet.data.buckets import (
    Bucket,
    center_crop_box,
    choose_bucket,
    clip_boxes,
    frames_available,
    frames_to_tensor,
    source_indices,
)
from tubelet.data.captions import CAPTION_FILES, CaptionEntry, Captions, find_captions_file, read_captions
from tubelet.data.check import CheckReport, check_dataset
from tubelet.data.filters import parse_filters
from tubelet.data.loader import BucketBatchSampler, BucketLoader, collate, make_loader
from tubelet.data.media_index import MediaInfo, _map_files, _try_probe, list_media, probe_media
from tubelet.data.sampling import DRAW_CAPTION, DRAW_REPLACEMENT, DRAW_START, SampleKey, as_key, sample_rng
from tubelet.errors import ConfigError, DataError
from tubelet.media import is_image_path, is_video_path, read_image, read_video

__all__ = [
    "CAPTION_FILES",
    "DRAW_CAPTION",
    "DRAW_REPLACEMENT",
    "DRAW_START",
    "Bucket",
    "BucketBatchSampler",
    "BucketLoader",
    "CaptionEntry",
    "Captions",
    "CheckReport",
    "DataConfig",
    "MediaInfo",
    "Sample",
    "SampleKey",
    "VideoDataset",
    "as_key",
    "center_crop_box",
    "check_dataset",
    "choose_bucket",
    "collate",
    "find_captions_file",
    "frames_available",
    "frames_to_tensor",
    "list_media",
    "make_loader",
    "probe_media",
    "read_captions",
    "sample_rng",
    "source_indices",
]

logger = logging.getLogger("tubelet.data")


@dataclass
class DataConfig:
    """How a folder dataset is sampled.

    fps: target frame rate; clips are sampled at it (frames are dropped, or repeated when the
        source is slower).
    buckets: training shapes; in YAML either mappings or ``[frames, height, width, batch_size]``.
        ``batch_size`` is per rank (a global batch holds ``batch_size * world_size`` samples).
    random_start: start each clip at a random frame (else at the first frame).
    video_key / caption_key: keys (jsonl) or column names (csv) of the captions file.
    include_uncaptioned: also train on media files no caption names (with caption "").
    videos_as_images: a video too short for every multi-frame bucket of its aspect goes to a
        1-frame bucket of that aspect (one frame) when there is one, instead of being skipped.
    num_workers: DataLoader worker processes.
    seed: seed of a batch sampler built from the dataset without a seed of its own, and of the
        per-sample draws of ``dataset[i]`` for a plain index (the trainer seeds both with
        ``TrainConfig.seed``; see `SampleKey`).
    max_replacements: how many other samples of the bucket are tried before giving up on a batch slot.
    filters: comparisons on the other values of each captions line, e.g. ``["motion >= 1.5",
        "border < 0.2"]`` (the scores `tubelet data prepare` writes); a line is used when it
        passes all of them (see `tubelet.data.filters`). A filter whose key no line has is an error.
    """

    fps: float = 8.0
    buckets: list[Bucket | tuple[int, int, int, int]] = field(
        default_factory=lambda: [Bucket(17, 64, 64, 32), Bucket(1, 64, 64, 64)]
    )
    random_start: bool = True
    video_key: str = "video"
    caption_key: str = "caption"
    include_uncaptioned: bool = False
    videos_as_images: bool = True
    num_workers: int = 4
    seed: int = 0
    max_replacements: int = 32
    filters: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        buckets: list[Bucket | tuple[int, int, int, int]] = []
        for i, b in enumerate(self.buckets):
            if isinstance(b, Bucket):
                buckets.append(b)
            elif isinstance(b, (list, tuple)) and len(b) == 4:
                buckets.append(Bucket(*b))
            elif isinstance(b, dict):
                buckets.append(Bucket(**b))
            else:
                raise ConfigError(
                    f"DataConfig.buckets[{i}]: expected (frames, height, width, batch_size), got {b!r}"
                )
        if not buckets:
            raise ConfigError("DataConfig.buckets: at least one bucket is needed")
        self.buckets = buckets
        if not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ConfigError(f"DataConfig.fps: expected a positive number, got {self.fps!r}")
        if self.num_workers < 0:
            raise ConfigError(f"DataConfig.num_workers: expected >= 0, got {self.num_workers}")
        if self.max_replacements < 1:
            raise ConfigError(f"DataConfig.max_replacements: expected >= 1, got {self.max_replacements}")
        if isinstance(self.filters, str):
            self.filters = [self.filters]
        parse_filters(self.filters)  # syntax errors now, not at the first dataset

    @property
    def bucket_list(self) -> list[Bucket]:
        """`buckets`, typed as what `__post_init__` made of it: a list of `Bucket` (the field's
        annotation also admits the tuples a config file may give)."""
        for b in self.buckets:
            assert isinstance(b, Bucket), f"DataConfig.buckets holds {b!r}; build the config anew"
        return cast(list[Bucket], self.buckets)


# --------------------------------------------------------------------------------------------
# The dataset


@dataclass
class Sample:
    """One indexed training sample."""

    path: str
    kind: str
    captions: list[str]
    width: int
    height: int
    fps: float
    num_frames: int
    bucket: int
    boxes: list[Any] | None = None  # per caption: its box tracks or None (parallel to `captions`)


class VideoDataset(torch.utils.data.Dataset):
    """Map-style dataset over a folder of captioned videos and images.

    ``dataset[key]`` -> dict(video=float tensor (3, F, H, W) in [-1, 1], caption=str, path=str,
    bucket=int, skipped=list of (path, cause) found unreadable while producing this item), where
    `key` is a `SampleKey` (what `BucketLoader` passes) or a plain index (= epoch 0 of
    ``cfg.seed``). The item is a function of the key (and the files): see `draws`.
    A sample that cannot be decoded is replaced by another sample of the same bucket.
    """

    def __init__(self, root: str | Path, cfg: DataConfig | None = None, *, progress: bool = True) -> None:
        self.root = Path(root)
        self.cfg = cfg or DataConfig()
        buckets = self.buckets = self.cfg.bucket_list
        captions = read_captions(self.root, video_key=self.cfg.video_key, caption_key=self.cfg.caption_key)
        self.captions_file = captions.file
        self.filtered_out: dict[str, int] = {}  # filter text -> captions lines it removed
        self.filtered_files: set[Path] = set()  # files whose every line a filter removed
        by_path = self._apply_filters(captions)
        media = list_media(self.root)
        media_set = {p for p in media}
        self.num_caption_lines = len(captions.entries)
        uncaptioned = [p for p in media if p not in by_path and p not in self.filtered_files]
        self.uncaptioned = [str(p) for p in uncaptioned]
        files: list[tuple[Path, list[CaptionEntry]]] = list(by_path.items())
        if self.cfg.include_uncaptioned:
            files += [(p, []) for p in uncaptioned]

        self.samples: list[Sample] = []
        self.unreadable: dict[str, str] = {}
        self.too_short: list[str] = []
        self._bad: set[int] = set()
        todo: list[tuple[Path, list[CaptionEntry]]] = []
        for path, entries in files:
            where = f" (named at {captions.file.name} line {entries[0].line})" if entries else ""
            if path not in media_set and not path.is_file():
                self._record(str(path), f"file not found{where}")
            elif not (is_video_path(path) or is_image_path(path)):
                self._record(str(path), f"not a video or image file extension{where}")
            else:
                todo.append((path, entries))
        probed = _map_files(_try_probe, [p for p, _ in todo], "indexing", progress)
        for (path, entries), info in zip(todo, probed):
            if isinstance(info, str):
                self._record(str(path), info)
                continue
            if info.kind == "image":
                available = 1
            else:
                available = frames_available(info.num_frames, info.fps, self.cfg.fps)
            b = choose_bucket(
                info.width,
                info.height,
                available,
                buckets,
                is_image=info.kind == "image",
                videos_as_images=self.cfg.videos_as_images,
            )
            if b is None:
                self.too_short.append(str(path))
                continue
            self.samples.append(
                Sample(
                    str(path),
                    info.kind,
                    [e.caption for e in entries] or [""],
                    info.width,
                    info.height,
                    info.fps,
                    info.num_frames,
                    b,
                    [e.boxes for e in entries] if any(e.boxes for e in entries) else None,
                )
            )
        self.bucket_members: list[list[int]] = [[] for _ in buckets]
        for i, s in enumerate(self.samples):
            self.bucket_members[s.bucket].append(i)

    def _apply_filters(self, captions: Captions) -> dict[Path, list[CaptionEntry]]:
        """Caption lines by media path, without the lines that fail `cfg.filters` (counted per
        filter, first failing filter only, in `filtered_out`). A file whose lines all fail is
        left out entirely (it is not "uncaptioned")."""
        by_path = captions.by_path()
        filters = parse_filters(self.cfg.filters)
        if not filters:
            return by_path
        keys = set().union(*(e.meta for e in captions.entries)) if captions.entries else set()
        for i, f in enumerate(filters):
            if f.key not in keys:
                raise ConfigError(
                    f"DataConfig.filters[{i}] {f.text!r}: no line of {captions.file.name} has the key "
                    f"{f.key!r}; the lines have {sorted(keys)[:12] or 'no other keys'}"
                )
        kept: dict[Path, list[CaptionEntry]] = {}
        for path, entries in by_path.items():
            ok = []
            for e in entries:
                failed = next((f for f in filters if not f.passes(e.meta)), None)
                if failed is None:
                    ok.append(e)
                else:
                    self.filtered_out[failed.text] = self.filtered_out.get(failed.text, 0) + 1
            if ok:
                kept[path] = ok
            else:
                self.filtered_files.add(path)
        logger.info(
            "filters %s removed %d of %d captions lines",
            [f.text for f in filters],
            sum(self.filtered_out.values()),
            len(captions.entries),
        )
        return kept

    # -- bookkeeping ---------------------------------------------------------------------------

    def _record(self, path: str, cause: str) -> None:
        """Count an unreadable file once and log it once (in this process)."""
        if path not in self.unreadable:
            self.unreadable[path] = cause
            logger.warning("skipping unreadable file %s: %s", path, cause)

    def record_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
        """Record unreadable files reported by worker processes (see `make_loader`)."""
        for path, cause in skipped:
            self._record(path, cause)
            for i in self._indices_of(path):
                self._bad.add(i)

    def _indices_of(self, path: str) -> list[int]:
        return [i for i, s in enumerate(self.samples) if s.path == path]

    def stats(self) -> dict[str, Any]:
        """Counts for the end-of-training report: samples per bucket, skipped files with causes."""
        per_bucket = [len(m) for m in self.bucket_members]
        return {
            "root": str(self.root),
            "samples": len(self.samples),
            "videos": sum(s.kind == "video" for s in self.samples),
            "images": sum(s.kind == "image" for s in self.samples),
            "caption_lines": self.num_caption_lines,
            "per_bucket": per_bucket,
            "uncaptioned": len(self.uncaptioned),
            "filtered_out": dict(self.filtered_out),
            "skipped_too_short": len(self.too_short),
            "too_short": list(self.too_short),
            "skipped_unreadable": len(self.unreadable),
            "unreadable": dict(self.unreadable),
        }

    def summary(self) -> str:
        """One line for logs."""
        s = self.stats()
        return (
            f"{s['samples']} samples ({s['videos']} videos, {s['images']} images) in buckets {s['per_bucket']}; "
            f"skipped {s['skipped_too_short']} too short, {s['skipped_unreadable']} unreadable"
            + (
                f", {sum(self.filtered_out.values())} captions lines filtered out"
                if self.filtered_out
                else ""
            )
            + (
                f", {s['uncaptioned']} uncaptioned files unused"
                if s["uncaptioned"] and not self.cfg.include_uncaptioned
                else ""
            )
        )

    def bucket_table(self) -> str:
        """What training would see, as lines for `tubelet data check --config`: samples per bucket
        (with the aspect ratios and sizes of their sources), files too short for every bucket,
        captions lines removed by each filter and files left out as unreadable."""
        from collections import Counter

        lines = ["", f"training view ({len(self.samples)} samples at {self.cfg.fps:g} fps):"]
        for b, members in zip(self.buckets, self.bucket_members):
            sizes = Counter(f"{self.samples[i].width}x{self.samples[i].height}" for i in members)
            top = ", ".join(f"{k} ({v})" for k, v in sizes.most_common(3)) + (
                " ..." if len(sizes) > 3 else ""
            )
            lines.append(
                f"  bucket {b.frames}x{b.height}x{b.width} (aspect {b.aspect:.2f}, batch {b.batch_size}): "
                f"{len(members)} samples" + (f" from {top}" if members else "")
            )
        if self.too_short:
            lines.append(f"  too short for every bucket of their aspect: {len(self.too_short)}")
            lines += [f"    {p}" for p in self.too_short[:10]] + (
                ["    ..."] if len(self.too_short) > 10 else []
            )
        for text, n in self.filtered_out.items():
            lines.append(f"  filtered out by {text!r}: {n} captions lines")
        if self.filtered_files:
            lines.append(f"  files with no line left after the filters: {len(self.filtered_files)}")
        if self.unreadable:
            lines.append(f"  unreadable (left out): {len(self.unreadable)}")
        if self.uncaptioned and not self.cfg.include_uncaptioned:
            lines.append(
                f"  uncaptioned files not used: {len(self.uncaptioned)} (data.include_uncaptioned: true uses them)"
            )
        return "\n".join(lines)

    def bucket_of(self, index: int) -> int:
        """Bucket index of sample `index`."""
        return self.samples[index].bucket

    def __len__(self) -> int:
        return len(self.samples)

    # -- loading -------------------------------------------------------------------------------

    def last_start(self, index: int) -> int:
        """The last source frame a clip of sample `index` can start at (0 for images and for
        clips just long enough for their bucket)."""
        s = self.samples[index]
        if s.kind == "image":
            return 0
        span = source_indices(0, self.buckets[s.bucket].frames, s.fps, self.cfg.fps)[-1] + 1
        return max(0, s.num_frames - span)

    def draws(self, key: int | SampleKey, loaded: int | None = None) -> dict[str, int]:
        """The random choices for `key` when sample `loaded` (default: ``key.index``) is decoded:
        {"caption_index", "start"}, each from its own `sample_rng` stream. The start frame is 0
        unless `random_start`; one caption means caption 0. Pure: the same in every process."""
        key = as_key(key, self.cfg.seed)
        loaded = key.index if loaded is None else loaded
        s = self.samples[loaded]
        caption = 0
        if len(s.captions) > 1:
            caption = int(sample_rng(key, DRAW_CAPTION, loaded).integers(len(s.captions)))
        start = 0
        last = self.last_start(loaded)
        if self.cfg.random_start and last > 0:
            start = int(sample_rng(key, DRAW_START, loaded).integers(last + 1))
        return {"caption_index": caption, "start": start}

    def load(
        self,
        index: int,
        *,
        start: int | None = None,
        caption_index: int | None = None,
        key: SampleKey | None = None,
    ) -> dict[str, Any]:
        """Decode sample `index` into its bucket's shape. Raises TubeletError if the file is unreadable.

        `start` (source frame) and `caption_index` default to the draws of `key` (default: epoch 0
        of ``cfg.seed`` for `index`) for sample `index` (see `draws`).
        """
        s = self.samples[index]
        b = self.buckets[s.bucket]
        if start is None or caption_index is None:
            drawn = self.draws(key if key is not None else as_key(index, self.cfg.seed), index)
            start = drawn["start"] if start is None else start
            caption_index = drawn["caption_index"] if caption_index is None else caption_index
        if s.kind == "image":
            img = read_image(s.path)
            frames = np.asarray(img)[None]  # (1, H, W, 3)
        else:
            frames = self._read_clip(s, b.frames, start, b.height, b.width)
        if (
            frames.dtype != np.uint8
            or frames.ndim != 4
            or frames.shape[0] != b.frames
            or frames.shape[-1] != 3
        ):
            raise DataError(f"{s.path}: decoded frames have shape {tuple(frames.shape)} {frames.dtype}")
        video = frames_to_tensor(frames, b.height, b.width)  # (3, F, H, W)
        item = {"video": video, "caption": s.captions[caption_index], "path": s.path, "bucket": s.bucket}
        boxes = self.boxes_of(index, start, caption_index)
        if boxes is not None:
            item["boxes"] = boxes
        return item

    def boxes_of(self, index: int, start: int, caption_index: int = 0) -> dict[str, torch.Tensor] | None:
        """The box tracks of sample `index`'s caption line at the clip taken from source frame
        `start`, in the output's coordinates (`clip_boxes`); None when the line has none."""
        s = self.samples[index]
        b = self.buckets[s.bucket]
        tracks = s.boxes[caption_index] if s.boxes is not None else None
        if not tracks:
            return None
        if s.kind == "image":
            times = [0.0]
        else:
            steps = source_indices(0, b.frames, s.fps, self.cfg.fps)
            first = min(max(0, start), max(0, s.num_frames - (steps[-1] + 1)))
            times = [float(first + k) for k in steps]
        return clip_boxes(tracks, times, (s.height, s.width), (b.height, b.width))

    def _read_clip(self, s: Sample, frames: int, start: int, out_h: int, out_w: int) -> np.ndarray:
        """`frames` frames at the target fps from source frame `start` on (uint8 (F, h, w, 3)).

        Resampling is by presentation timestamps (tubelet.media): output frame k is the source frame on
        screen at (start / src_fps + k / fps), i.e. source frame start + floor(k * src_fps / fps) for
        constant-rate files. Large sources are shrunk while decoding (short side just covering the bucket).
        """
        from tubelet.errors import VideoError

        span = source_indices(0, frames, s.fps, self.cfg.fps)[-1] + 1
        last_start = max(0, s.num_frames - span)
        start = min(max(0, start), last_start)
        scale = max(out_h / s.height, out_w / s.width)
        short = math.ceil(min(s.height, s.width) * scale) if scale < 1 else None
        for attempt in range(2):
            video = read_video(s.path, fps=self.cfg.fps, start=start / s.fps, max_frames=frames, size=short)
            got = np.asarray(video.frames)
            n = got.shape[0] if got.ndim == 4 else 0
            if n >= frames:
                return got[:frames]
            # The container promised more frames than it holds (an estimated count): retry earlier once.
            if attempt == 0 and n > 0 and start > 0:
                start = max(0, start - math.ceil((frames - n) * s.fps / self.cfg.fps) - 1)
                continue
            raise VideoError(s.path, f"decoded {n} frames from frame {start}, expected {frames}")
        raise AssertionError("unreachable")

    def replacements(self, key: int | SampleKey) -> list[int]:
        """The samples tried, in order, when sample ``key.index`` cannot be decoded: up to
        `max_replacements` other samples of its bucket, distinct, drawn from the key alone (not
        from which files this process already knows to be unreadable), so every process replaces
        a sample by the same one."""
        key = as_key(key, self.cfg.seed)
        others = [m for m in self.bucket_members[self.samples[key.index].bucket] if m != key.index]
        n = min(self.cfg.max_replacements, len(others))
        picks = sample_rng(key, DRAW_REPLACEMENT).choice(len(others), size=n, replace=False)
        return [others[int(j)] for j in picks]

    def __getitem__(self, index: int | SampleKey) -> dict[str, Any]:
        key = as_key(index, self.cfg.seed)
        index = key.index
        skipped: list[tuple[str, str]] = []
        in_worker = torch.utils.data.get_worker_info() is not None
        tried: list[int] | None = None
        current = index
        for attempt in range(self.cfg.max_replacements + 1):
            if attempt:
                if tried is None:  # only drawn when a sample fails
                    tried = self.replacements(key)
                if attempt > len(tried):
                    break
                current = tried[attempt - 1]
            if current in self._bad:  # known unreadable here: fails anywhere, skip the decode
                continue
            try:
                item = self.load(current, key=key)
                item["skipped"] = skipped
                return item
            except Exception as e:  # any failure to read one file must not stop training
                path = self.samples[current].path
                cause = getattr(e, "cause", None) or f"{type(e).__name__}: {e}"
                self._bad.add(current)
                skipped.append((path, cause))
                if not in_worker:
                    self._record(path, cause)
        raise DataError(
            f"{self.root}: bucket {self.samples[index].bucket} {self.buckets[self.samples[index].bucket]}: "
            f"no readable sample found after {len(skipped)} unreadable files "
            f"(e.g. {skipped[0] if skipped else '?'}); run `tubelet data check {self.root}`"
        )
