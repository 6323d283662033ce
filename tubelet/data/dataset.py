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
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
import torch

from tubelet.core.parsing import check_text, read_jsonl, read_text
from tubelet.errors import ConfigError, DataError, TubeletError
from tubelet.media import (
    frames_to_unit,
    is_image_path,
    is_video_path,
    probe_image,
    probe_video,
    read_image,
    read_video,
)

logger = logging.getLogger("tubelet.data")
T = TypeVar("T")

CAPTION_FILES = ("captions.jsonl", "captions.csv")

# Buckets whose aspect ratios differ by less than this (in log space, ~2%) count as one aspect.
_ASPECT_TOLERANCE = 0.02
# Folders bigger than this get a progress bar while they are indexed / checked.
_PROGRESS_MIN_FILES = 64


@dataclass
class Bucket:
    """One training shape: clips of `frames` frames at `height` x `width`, `batch_size` per rank."""

    frames: int
    height: int
    width: int
    batch_size: int

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Bucket.{name}: expected a positive integer, got {value!r}")

    @property
    def aspect(self) -> float:
        """Width / height."""
        return self.width / self.height


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

    @property
    def bucket_list(self) -> list[Bucket]:
        """`buckets`, typed as what `__post_init__` made of it: a list of `Bucket` (the field's
        annotation also admits the tuples a config file may give)."""
        for b in self.buckets:
            assert isinstance(b, Bucket), f"DataConfig.buckets holds {b!r}; build the config anew"
        return cast(list[Bucket], self.buckets)


# --------------------------------------------------------------------------------------------
# Captions


@dataclass
class CaptionEntry:
    """One caption line: media path as written, resolved absolute path, caption, line number."""

    video: str
    path: Path
    caption: str
    line: int


@dataclass
class Captions:
    """A parsed captions file."""

    file: Path
    entries: list[CaptionEntry]

    def by_path(self) -> dict[Path, list[CaptionEntry]]:
        """Resolved media path -> its caption entries (in file order)."""
        out: dict[Path, list[CaptionEntry]] = {}
        for e in self.entries:
            out.setdefault(e.path, []).append(e)
        return out


def find_captions_file(root: str | Path) -> Path:
    """The captions file of a dataset directory; DataError when there is none or two."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    found = [root / name for name in CAPTION_FILES if (root / name).is_file()]
    if not found:
        raise DataError(
            f"{root}: no captions file; expected {' or '.join(CAPTION_FILES)} "
            '(jsonl lines like {"video": "clip.mp4", "caption": "text"}, or csv columns video,caption)'
        )
    if len(found) > 1:
        raise DataError(f"{root}: found both {found[0].name} and {found[1].name}; keep only one")
    return found[0]


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else root / p


def read_captions(root: str | Path, *, video_key: str = "video", caption_key: str = "caption") -> Captions:
    """Parse ``captions.jsonl`` / ``captions.csv`` of `root`.

    Raises DataError naming the file and line number for a malformed line (bad JSON, not an
    object, missing or non-string video / caption). Whether the named media files exist is not
    checked here.
    """
    root = Path(root)
    file = find_captions_file(root)
    entries: list[CaptionEntry] = []

    def add(line: int, video: Any, caption: Any) -> None:
        where = f"{file}:{line}"
        if not isinstance(video, str) or not video.strip():
            raise DataError(
                f"{where}: {video_key!r} must be a non-empty string (a media path), got {video!r}"
            )
        if not isinstance(caption, str):
            raise DataError(f"{where}: {caption_key!r} must be a string, got {caption!r}")
        check_text(video, where, error=DataError)
        check_text(caption, where, error=DataError)
        if "\x00" in video:
            raise DataError(f"{where}: the media path {video!r} holds a NUL character")
        if any(len(os.fsencode(part)) > 255 for part in Path(video.strip()).parts):
            raise DataError(f"{where}: the media path has a name longer than file systems allow (255 bytes)")
        entries.append(CaptionEntry(video, _resolve(root, video.strip()), caption, line))

    if file.suffix == ".jsonl":
        for lineno, obj in read_jsonl(file, error=DataError, what="captions file"):
            if not isinstance(obj, dict):
                raise DataError(
                    f"{file}:{lineno}: expected a JSON object with {video_key!r} and {caption_key!r}"
                )
            missing = [k for k in (video_key, caption_key) if k not in obj]
            if missing:
                raise DataError(f"{file}:{lineno}: missing key(s) {missing}; the line has {sorted(obj)[:8]}")
            add(lineno, obj[video_key], obj[caption_key])
    else:
        text = read_text(file, error=DataError, what="captions file")
        reader = csv.reader(text.splitlines())
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(
                    f"{file}: empty; expected a header line with columns {video_key},{caption_key}"
                )
            header = [h.strip() for h in header]
            missing = [k for k in (video_key, caption_key) if k not in header]
            if missing:
                raise DataError(f"{file}:1: header lacks column(s) {missing}; it has {header}")
            vi, ci = header.index(video_key), header.index(caption_key)
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{file}:{lineno}: expected {len(header)} columns, got {len(row)}: {row[:4]}"
                    )
                add(lineno, row[vi], row[ci])
        except csv.Error as e:
            raise DataError(f"{file}:{reader.line_num}: malformed CSV ({e})") from None
    return Captions(file, entries)


# --------------------------------------------------------------------------------------------
# Files and probing


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


# --------------------------------------------------------------------------------------------
# Frame selection, bucket choice, crop + resize (pure functions)


def frames_available(num_frames: int, src_fps: float, fps: float) -> int:
    """How many frames a clip of `num_frames` at `src_fps` yields when sampled at `fps`.

    Output frame k shows source frame floor(k * src_fps / fps).
    """
    if num_frames <= 0:
        return 0
    return max(1, math.ceil(num_frames * fps / src_fps - 1e-9))


def source_indices(start: int, frames: int, src_fps: float, fps: float) -> list[int]:
    """Source frame indices of a clip of `frames` frames at `fps` that starts at source frame `start`."""
    step = src_fps / fps
    return [start + math.floor(k * step + 1e-9) for k in range(frames)]


def choose_bucket(
    width: int,
    height: int,
    available: int,
    buckets: Sequence[Bucket],
    *,
    is_image: bool = False,
    videos_as_images: bool = True,
) -> int | None:
    """Index of the bucket for media of `width` x `height` that yields `available` frames; None if none fits.

    Images consider 1-frame buckets only. Otherwise the buckets whose aspect ratio is closest to
    the media's (within ~2%) are the candidates; of those, the one with the most frames that
    `available` can fill wins (1-frame buckets only when `videos_as_images`), then the largest
    resolution that needs no upscaling (else the smallest), then the closest aspect.
    """
    if width <= 0 or height <= 0:
        return None
    log_ar = math.log(width / height)
    pool = [i for i, b in enumerate(buckets) if b.frames == 1] if is_image else list(range(len(buckets)))
    if not pool:
        return None
    dist = {i: abs(math.log(buckets[i].aspect) - log_ar) for i in pool}
    best = min(dist.values())
    group = [i for i in pool if dist[i] <= best + _ASPECT_TOLERANCE]
    fits = [i for i in group if buckets[i].frames <= available]
    if not is_image and not videos_as_images:
        fits = [i for i in fits if buckets[i].frames > 1]
    if not fits:
        return None

    def key(i: int) -> tuple:
        b = buckets[i]
        no_upscale = b.width <= width and b.height <= height
        area = b.width * b.height
        return (b.frames, no_upscale, area if no_upscale else -area, -dist[i], -i)

    return max(fits, key=key)


def center_crop_box(height: int, width: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the largest centred window of `height` x `width` with aspect out_w/out_h."""
    if width * out_h > height * out_w:  # source wider than target: crop the sides
        w = max(1, min(width, round(height * out_w / out_h)))
        return 0, (width - w) // 2, height, w
    h = max(1, min(height, round(width * out_h / out_w)))
    return (height - h) // 2, 0, h, width


def frames_to_tensor(frames: np.ndarray, out_h: int, out_w: int) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> float (3, T, out_h, out_w) in [-1, 1], centre-cropped to the
    target aspect ratio and then resized (antialiased bilinear); no stretching."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got shape {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    top, left, ch, cw = center_crop_box(h, w, out_h, out_w)
    crop = np.ascontiguousarray(frames[:, top : top + ch, left : left + cw])  # (T, ch, cw, 3)
    x = torch.from_numpy(crop if crop.flags.writeable else crop.copy())
    x = x.permute(0, 3, 1, 2).float()  # (T, 3, ch, cw)
    if (ch, cw) != (out_h, out_w):
        x = torch.nn.functional.interpolate(
            x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
        )  # (T, 3, out_h, out_w)
    x = frames_to_unit(x).clamp_(-1.0, 1.0)
    return x.permute(1, 0, 2, 3).contiguous()  # (3, T, out_h, out_w)


# --------------------------------------------------------------------------------------------
# Per-sample draws


class SampleKey(NamedTuple):
    """What a batch sampler asks a dataset for: sample `index` (its index in the dataset, the same
    on every process) as drawn in `epoch` of a run seeded `seed`.

    Every random choice made for the sample (caption, start frame, replacement of an unreadable
    file) is a function of the key alone (`sample_rng`), so the sample does not depend on the
    process, the loader worker or the order in which samples are produced.
    """

    # a field named `index` shadows tuple.index; mypy rejects that, Python (and this API) do not
    index: int  # type: ignore[assignment]
    epoch: int = 0
    seed: int = 0


# Independent streams of one key: adding or removing one kind of draw never shifts another.
DRAW_CAPTION, DRAW_START, DRAW_REPLACEMENT = 0, 1, 2


def sample_rng(key: SampleKey, what: int, loaded: int | None = None) -> np.random.Generator:
    """The generator of draw `what` (DRAW_*) for `key`: ``np.random.default_rng([seed, epoch,
    index, what, loaded])``, a pure function of its arguments. `loaded` is the sample actually
    decoded (`key.index`, or the sample replacing it when it is unreadable)."""
    loaded = key.index if loaded is None else loaded
    words = [int(key.seed), int(key.epoch), int(key.index), int(what), int(loaded)]
    return np.random.default_rng([w % 2**64 for w in words])  # SeedSequence takes non-negative ints


def as_key(index: int | SampleKey, seed: int) -> SampleKey:
    """`index` as a SampleKey; a plain index is epoch 0 of `seed`."""
    if isinstance(index, SampleKey):
        return index
    if isinstance(index, (tuple, list)):  # a SampleKey that lost its class (e.g. default collation)
        return SampleKey(*(int(v) for v in index))
    return SampleKey(int(index), 0, seed)


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
        by_path = captions.by_path()
        media = list_media(self.root)
        media_set = {p for p in media}
        self.num_caption_lines = len(captions.entries)
        self.uncaptioned = [str(p) for p in media if p not in by_path]
        files: list[tuple[Path, list[CaptionEntry]]] = list(by_path.items())
        if self.cfg.include_uncaptioned:
            files += [(p, []) for p in media if p not in by_path]

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
                )
            )
        self.bucket_members: list[list[int]] = [[] for _ in buckets]
        for i, s in enumerate(self.samples):
            self.bucket_members[s.bucket].append(i)

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
                f", {s['uncaptioned']} uncaptioned files unused"
                if s["uncaptioned"] and not self.cfg.include_uncaptioned
                else ""
            )
        )

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
        return {"video": video, "caption": s.captions[caption_index], "path": s.path, "bucket": s.bucket}

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


# --------------------------------------------------------------------------------------------
# Batches


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of sample indices, each from one bucket, at that bucket's (per-rank) batch size.

    Every epoch the samples of each bucket are shuffled (seed, epoch), cut into global batches of
    ``batch_size * world_size`` (incomplete ones dropped), and the global batches of all buckets
    are shuffled together. Rank r takes slice r of every global batch, so all ranks train on the
    same bucket at the same step and their shares are disjoint.

    The global batches depend on (seed, epoch, the samples' buckets and the global batch size)
    only: 1 process with batch 4 and 2 processes with batch 2 see the same global batches in the
    same order, rank 0 the first half of each. `keyed_batches` yields the same batches as
    `SampleKey` lists (index, epoch, seed), which is what `BucketLoader` hands the dataset: the
    per-sample draws then follow the sample, not the process.

    Iterating yields the rest of the current epoch and then moves on to the next epoch.
    ``state_dict()`` = (epoch, position: batches already yielded in it); ``load_state_dict``
    makes the next iteration continue with exactly the batches an uninterrupted run would see.
    With a DataLoader (which prefetches) use the loader's ``state_dict()`` from `make_loader`.
    """

    def __init__(
        self,
        dataset: VideoDataset | Sequence[int],
        batch_sizes: Sequence[int] | None = None,
        *,
        seed: int | None = None,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if isinstance(dataset, VideoDataset):
            sample_buckets = [s.bucket for s in dataset.samples]
            batch_sizes = batch_sizes or [b.batch_size for b in dataset.buckets]
            seed = dataset.cfg.seed if seed is None else seed
        else:
            sample_buckets = list(dataset)
            if batch_sizes is None:
                raise ValueError(
                    "batch_sizes is needed when the sampler gets bucket ids instead of a dataset"
                )
        d_rank, d_world = _dist_rank_world()
        self.rank = d_rank if rank is None else rank
        self.world_size = d_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self.batch_sizes = list(batch_sizes)
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes}")
        self.seed = 0 if seed is None else seed
        self.shuffle = shuffle
        self.members: list[list[int]] = [[] for _ in self.batch_sizes]
        for i, b in enumerate(sample_buckets):
            if not 0 <= b < len(self.batch_sizes):
                raise ValueError(
                    f"sample {i} has bucket {b}, but there are {len(self.batch_sizes)} batch sizes"
                )
            self.members[b].append(i)
        self.epoch = 0
        self.position = 0
        self.version = 0  # bumped whenever the state is set from outside (set_epoch, load_state_dict)
        for b, m in enumerate(self.members):
            if m and len(m) < self.batch_sizes[b] * self.world_size:
                logger.warning(
                    "bucket %d has %d samples, fewer than one global batch (%d x %d ranks); it is not used",
                    b, len(m), self.batch_sizes[b], self.world_size,
                )  # fmt: skip
        self._fingerprint = [len(m) for m in self.members]

    def _global_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches: list[list[int]] = []
        for b, m in enumerate(self.members):
            size = self.batch_sizes[b] * self.world_size
            order = [m[i] for i in torch.randperm(len(m), generator=g).tolist()] if self.shuffle else list(m)
            batches += [order[i : i + size] for i in range(0, len(order) - size + 1, size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(len(m) // (self.batch_sizes[b] * self.world_size) for b, m in enumerate(self.members))

    def _epoch_batches(self) -> Iterator[tuple[int, list[int]]]:
        """(epoch, this rank's share of the next global batch) for the rest of the current epoch."""
        epoch = self.epoch
        batches = self._global_batches(epoch)
        while self.epoch == epoch and self.position < len(batches):
            gb = batches[self.position]
            per = len(gb) // self.world_size
            self.position += 1
            yield epoch, gb[self.rank * per : (self.rank + 1) * per]
        if self.epoch == epoch:
            self.epoch, self.position = epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self._epoch_batches():
            yield batch

    def keyed_batches(self) -> Iterator[list[SampleKey]]:
        """The batches of `__iter__` (same state), each sample as its `SampleKey` (index, epoch, seed)."""
        for epoch, batch in self._epoch_batches():
            yield [SampleKey(i, epoch, self.seed) for i in batch]

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch on the next iteration."""
        self.epoch, self.position = int(epoch), 0
        self.version += 1

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler stands: epoch and batches already yielded in it (+ checks)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "bucket_sizes": list(self._fingerprint),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`; warns when the data or the set-up changed since."""
        for key in ("seed", "world_size", "bucket_sizes"):
            saved, now = state.get(key), self.state_dict()[key]
            if saved is not None and saved != now:
                logger.warning(
                    "resuming the batch sampler with a different %s (%s, was %s): batches will differ",
                    key,
                    now,
                    saved,
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.version += 1


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack videos (B, 3, F, H, W); captions and paths stay lists; skipped files are merged."""
    buckets = {it["bucket"] for it in items}
    if len(buckets) != 1:
        raise ValueError(f"a batch mixes buckets {sorted(buckets)}; use BucketBatchSampler")
    return {
        "video": torch.stack([it["video"] for it in items]),  # (B, 3, F, H, W)
        "caption": [it["caption"] for it in items],
        "path": [it["path"] for it in items],
        "bucket": items[0]["bucket"],
        "skipped": [s for it in items for s in it.get("skipped", ())],
    }


class _KeyedBatchSampler:
    """A BucketBatchSampler's batches as `SampleKey` lists (the DataLoader's batch_sampler)."""

    def __init__(self, sampler: BucketBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[SampleKey]]:
        return self.sampler.keyed_batches()

    def __len__(self) -> int:
        return len(self.sampler)


class BucketLoader(torch.utils.data.DataLoader):
    """DataLoader that records unreadable files reported by workers in the dataset and counts the
    batches it handed out, so that its state is exact although workers prefetch ahead.

    The dataset gets `SampleKey`s (index, epoch, seed) from the sampler, so what each sample is
    (caption, start frame, replacement) does not depend on the process or worker that loads it.

    A new iteration continues after the last batch handed out (prefetched batches that were never
    handed out are produced again), unless the sampler was repositioned in between
    (``set_epoch`` / ``load_state_dict``).
    """

    dataset: VideoDataset  # (DataLoader types it as any Dataset)

    def __init__(
        self, dataset: VideoDataset, sampler: BucketBatchSampler, num_workers: int, **kwargs: Any
    ) -> None:
        super().__init__(
            dataset,
            batch_sampler=_KeyedBatchSampler(sampler),
            num_workers=num_workers,
            collate_fn=collate,
            **kwargs,
        )
        self._bucket_sampler = sampler
        self._epoch, self._delivered = sampler.epoch, sampler.position
        self._synced_version = sampler.version

    # a generator over the parent's batches (to count them), not a _BaseDataLoaderIter as declared
    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        sampler = self._bucket_sampler
        if sampler.version == self._synced_version:
            sampler.epoch, sampler.position = self._epoch, self._delivered
        else:
            self._epoch, self._delivered = sampler.epoch, sampler.position
            self._synced_version = sampler.version
        epoch_len = len(sampler)
        for batch in super().__iter__():
            if batch["skipped"]:
                self.dataset.record_skipped(batch["skipped"])
            self._delivered += 1
            yield batch
        if self._delivered >= epoch_len:
            self._epoch, self._delivered = self._epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch on the next iteration."""
        self._bucket_sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Sampler state counting only the batches this loader handed out."""
        state = self._bucket_sampler.state_dict()
        state.update(epoch=self._epoch, position=self._delivered)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`."""
        self._bucket_sampler.load_state_dict(state)


def make_loader(
    dataset: VideoDataset, sampler: BucketBatchSampler, num_workers: int | None = None
) -> BucketLoader:
    """DataLoader over `dataset` with bucket batches from `sampler` (num_workers defaults to the config's)."""
    workers = dataset.cfg.num_workers if num_workers is None else num_workers
    # Its own generator: creating an iterator must not consume the global RNG (exact resume).
    # (It only seeds the workers' RNGs, which no per-sample draw uses: see SampleKey.)
    kwargs: dict[str, Any] = {
        "pin_memory": torch.cuda.is_available(),
        "generator": torch.Generator().manual_seed(dataset.cfg.seed),
    }
    if workers > 0:
        kwargs.update(prefetch_factor=2, persistent_workers=False)
    return BucketLoader(dataset, sampler, workers, **kwargs)


# --------------------------------------------------------------------------------------------
# Checking a folder


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
