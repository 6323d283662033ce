"""`tubelet data prepare`: raw footage -> a training dataset (scene cuts, clips, filters, dedup, report).

    sources ─► [A] analyse each source once, small (scenes, per-clip scores; per-clip filters)
            ─► [B] across the whole set: near-duplicates (pHash), captions
            ─► [C] write each kept clip once: decode full size, crop the black border exactly,
                   re-encode (H.264 mp4) under DATASET/clips/
            ─► [D] captions.jsonl (+ scores), prepare-dropped.jsonl, prepare-summary.json,
                   prepare-report.html

Stage A lives in `tubelet.data.prepare_analysis`, the report in `tubelet.data.prepare_report`.

Resumable: the run keeps its state in DATASET/.prepare/ (the options, one analysis file per source,
one record per written clip), each file written atomically. Clips are encoded to a hidden temporary
name and renamed into place, so a killed run never leaves a half-written clip under a clip's name;
`--resume` reuses every finished analysis and clip and redoes the rest. Stages B and D are pure
functions of the analyses, so a resumed run gives the same dataset as a straight one.
Sources are only read, never written.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.core.files import atomic_write_json, atomic_write_text, check_output_location
from tubelet.core.parsing import read_jsonl, read_text
from tubelet.data.prepare_analysis import Candidate, SourceAnalysis, analyze_source, border_box, hamming
from tubelet.errors import DataError, TubeletError
from tubelet.media import is_video_path

__all__ = [
    "REASONS",
    "PrepareOptions",
    "PrepareSummary",
    "find_sources",
    "prepare_dataset",
    "read_caption_map",
]

STATE_DIR = ".prepare"
STATE_VERSION = 1

# Why a candidate clip is dropped, in the order the filters run (the first failing one is named).
REASONS: dict[str, str] = {
    "too_short": "shorter than --min-seconds (or --clip-frames): too little motion to learn from",
    "borders": "more than --max-border of the frame is black border (or the clip is black)",
    "too_small": "content (after cropping the border) has a short side below --min-size",
    "static": "motion below --min-motion: a still picture teaches no motion",
    "extreme_motion": "motion above --max-motion: whip pans, flashes, shaky footage",
    "text": "with --ocr: on-screen text (subtitles, captions, logos) covers more than --max-text of a frame",
    "duplicate": "near-duplicate (pHash within --dup-distance) of a bigger or longer kept clip",
    "no_caption": "its source has no caption (keep with --keep-uncaptioned)",
    "unreadable": "the clip could not be decoded again when it was written",
}


@dataclass
class PrepareOptions:
    """Everything that decides the dataset `prepare_dataset` writes (a resumed run must match it).

    Lengths in seconds, sizes in source pixels, `motion` in % of the content width per second,
    `border` as a fraction of the frame area, luma on the 0..255 scale. `docs/data.md` explains
    each filter and its default.
    """

    min_seconds: float = 2.0
    max_seconds: float = 10.0
    clip_frames: int = 0  # > 0: clips of exactly this many frames instead of max_seconds pieces
    fps: float | None = None  # None: each source's own rate
    min_size: int = 256
    max_size: int = 720  # clips whose short side is larger are downscaled to it (0: keep)
    detector: str = "content"  # PySceneDetect ContentDetector, or "adaptive" (AdaptiveDetector)
    threshold: float = 27.0  # ContentDetector threshold (HSV frame difference)
    adaptive_threshold: float = 3.0  # AdaptiveDetector ratio threshold
    min_scene_seconds: float = 0.5  # no two cuts closer than this
    border_luma: float = 16.0  # rows/columns whose mean luma stays at or below this are border
    max_border: float = 0.5
    min_motion: float = 0.5
    max_motion: float = 100.0
    ocr: bool = False  # the on-screen text filter (the `ocr` extra: rapidocr + onnxruntime)
    max_text: float = 0.02  # with ocr: drop clips whose legible text covers more of a frame
    dup_distance: float = 8.0  # mean Hamming distance (of 64 bits) of the 3 frame hashes
    keep_uncaptioned: bool = False
    crf: int = 18

    def validate(self) -> PrepareOptions:
        """Self, or a DataError naming the first bad value (flags are named as on the command line)."""

        def bad(name: str, why: str) -> DataError:
            value = getattr(self, name)
            return DataError(f"--{name.replace('_', '-')} {value!r}: {why}")

        def number(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise bad(name, "expected a finite number")
            return float(v)

        if number("min_seconds") <= 0:
            raise bad("min_seconds", "must be > 0")
        if number("max_seconds") < self.min_seconds:
            raise bad("max_seconds", f"must be >= --min-seconds ({self.min_seconds:g})")
        if not isinstance(self.clip_frames, int) or self.clip_frames < 0:
            raise bad("clip_frames", "must be an int >= 0 (0: cut scenes by --max-seconds)")
        if self.fps is not None and not 0 < number("fps") <= 240:
            raise bad("fps", "must be in (0, 240] (or left out: each source's own rate)")
        if not isinstance(self.min_size, int) or self.min_size < 1:
            raise bad("min_size", "must be an int >= 1")
        if not isinstance(self.max_size, int) or (self.max_size != 0 and self.max_size < self.min_size):
            raise bad("max_size", f"must be 0 (keep the size) or >= --min-size ({self.min_size})")
        if self.detector not in ("content", "adaptive"):
            raise bad("detector", "expected 'content' or 'adaptive'")
        for name in ("threshold", "adaptive_threshold", "min_scene_seconds"):
            if number(name) <= 0:
                raise bad(name, "must be > 0")
        if not 0 <= number("border_luma") < 255:
            raise bad("border_luma", "must be in [0, 255)")
        if not 0 <= number("max_border") <= 1:
            raise bad("max_border", "must be in [0, 1]")
        if number("min_motion") < 0:
            raise bad("min_motion", "must be >= 0")
        if number("max_motion") <= self.min_motion:
            raise bad("max_motion", f"must be > --min-motion ({self.min_motion:g})")
        if not 0 <= number("max_text") <= 1:
            raise bad("max_text", "must be in [0, 1] (a fraction of the frame area)")
        if self.ocr:
            from tubelet.data.prepare_analysis import ocr_engine

            ocr_engine()  # the missing extra is an error now, before any work
        if not 0 <= number("dup_distance") <= 64:
            raise bad("dup_distance", "must be in [0, 64] (bits; negative would keep duplicates: use 0)")
        if not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise bad("crf", "must be an int in 0..51")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PrepareSummary:
    """What `prepare_dataset` did (also DATASET/prepare-summary.json)."""

    out: str
    sources: int = 0
    sources_read: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, cause)
    scenes: int = 0
    candidates: int = 0
    written: int = 0  # clips in the dataset
    encoded_now: int = 0  # of which encoded by this run (the others were kept from a resumed run)
    dropped: dict[str, int] = field(default_factory=dict)
    kept_seconds: float = 0.0
    source_seconds: float = 0.0
    uncaptioned: list[str] = field(default_factory=list)  # clips whose source has no caption
    wall_seconds: float = 0.0
    analysis_cpu_seconds: float = 0.0
    write_cpu_seconds: float = 0.0
    report: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failed"] = [{"source": s, "cause": c} for s, c in self.failed]
        d["kept_hours"] = self.kept_seconds / 3600
        return d

    def format_text(self) -> str:
        """Readable summary, one fact a line."""
        drops = ", ".join(f"{k} {n}" for k, n in self.dropped.items() if n) or "none"
        an = self.candidates / self.analysis_cpu_seconds if self.analysis_cpu_seconds > 0 else 0.0
        wr = self.written / self.write_cpu_seconds if self.write_cpu_seconds > 0 else 0.0
        rows = [
            ("sources read", f"{self.sources_read} of {self.sources} ({len(self.failed)} failed)"),
            ("scenes found", str(self.scenes)),
            ("candidate clips", str(self.candidates)),
            ("clips written", f"{self.written} ({self.encoded_now} encoded by this run)"),
            ("clips dropped", f"{self.candidates - self.written}: {drops}"),
            (
                "hours kept",
                f"{self.kept_seconds / 3600:.3f} h ({self.kept_seconds:.1f} s) of "
                f"{self.source_seconds / 3600:.3f} h of footage",
            ),
            ("uncaptioned", str(len(self.uncaptioned))),
            (
                "throughput",
                f"analysis {an:.2f} clips/s per core, encoding {wr:.2f} clips/s per core "
                f"(CPU seconds; wall {self.wall_seconds:.1f} s)",
            ),
            ("report", self.report),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        for src, cause in self.failed:
            lines.append(f"failed source: {src}: {cause}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Sources and captions


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def find_sources(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> list[Path]:
    """The source videos: files as given, folders walked (sorted, hidden entries and the output
    folder skipped) for video files. DataError for a missing path or when nothing is found."""
    out_abs = Path(out).resolve()
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            found.append(r)

    if not sources:
        raise DataError("no sources given: name video files or folders of videos")
    for src in sources:
        p = Path(src).expanduser()
        if not p.exists():
            raise DataError(f"{p}: source not found")
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                here = Path(dirpath).resolve()
                dirnames[:] = sorted(
                    d for d in dirnames if not d.startswith(".") and not _inside(here / d, out_abs)
                )
                for name in sorted(filenames):
                    if not name.startswith(".") and is_video_path(name):
                        add(here / name)
        else:
            if _inside(p.resolve(), out_abs):
                raise DataError(f"{p}: the source lies inside the output folder {out_abs}")
            add(p)
    if not found:
        raise DataError(
            f"no video files in {', '.join(str(s) for s in sources)} (looked for the extensions "
            "tubelet reads, e.g. .mp4 .mov .mkv .webm .avi)"
        )
    return found


def read_caption_map(file: str | os.PathLike[str], sources: Sequence[Path]) -> dict[Path, str]:
    """Captions for sources from a CSV (columns video,caption) or JSONL ({"video", "caption"}) file.

    `video` is a path relative to the mapping file's folder (or absolute), or a bare file name that
    names exactly one source. DataError (file and line) for a malformed line or a name that matches
    two sources.
    """
    f = Path(file)
    rows: list[tuple[int, Any, Any]] = []
    if f.suffix.lower() == ".jsonl":
        for n, obj in read_jsonl(f, error=DataError, what="captions mapping"):
            if not isinstance(obj, dict) or "video" not in obj or "caption" not in obj:
                raise DataError(f'{f}:{n}: expected an object like {{"video": "a.mp4", "caption": "text"}}')
            rows.append((n, obj["video"], obj["caption"]))
    elif f.suffix.lower() == ".csv":
        reader = csv.reader(read_text(f, error=DataError, what="captions mapping").splitlines())
        try:
            header = [h.strip() for h in next(reader, [])]
            if "video" not in header or "caption" not in header:
                raise DataError(f"{f}:1: the header must name the columns video,caption; it has {header}")
            vi, ci = header.index("video"), header.index("caption")
            for row in reader:
                if row and any(c.strip() for c in row):
                    if len(row) != len(header):
                        raise DataError(
                            f"{f}:{reader.line_num}: expected {len(header)} columns, got {len(row)}"
                        )
                    rows.append((reader.line_num, row[vi], row[ci]))
        except csv.Error as e:
            raise DataError(f"{f}:{reader.line_num}: malformed CSV ({e})") from None
    else:
        raise DataError(f"{f}: captions mapping must be a .csv or .jsonl file")
    by_path = {p: p for p in sources}
    by_name: dict[str, list[Path]] = {}
    for p in sources:
        by_name.setdefault(p.name, []).append(p)
    out: dict[Path, str] = {}
    for n, video, caption in rows:
        if not isinstance(video, str) or not video.strip() or not isinstance(caption, str):
            raise DataError(f"{f}:{n}: video must be a non-empty string and caption a string")
        rel = Path(video.strip()).expanduser()
        target = by_path.get((rel if rel.is_absolute() else f.parent / rel).resolve())
        if target is None and len(rel.parts) == 1:
            named = by_name.get(rel.name, [])
            if len(named) > 1:
                raise DataError(f"{f}:{n}: {video!r} names {len(named)} sources; give its path instead")
            target = named[0] if named else None
        if target is not None:
            out[target] = caption.strip()
    return out


def source_caption(path: Path, mapping: dict[Path, str]) -> str | None:
    """The caption of a source: from the mapping, else from its sidecar (video.mp4 -> video.txt)."""
    if mapping.get(path):
        return mapping[path]
    side = path.with_suffix(".txt")
    if side.is_file():
        text = read_text(side, error=DataError, what="caption sidecar").strip()
        return " ".join(text.split()) or None
    return None


# ---------------------------------------------------------------------------------------------------
# State (resume)


def _source_key(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:48] or "video"
    return f"{stem}-{hashlib.sha1(str(path).encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _file_version(path: Path) -> list[int]:
    try:
        st = path.stat()
    except OSError:
        return [0, 0]
    return [int(st.st_size), int(st.st_mtime_ns)]


class _State:
    """DATASET/.prepare/: options.json, sources/<key>.json, clips/<key>__<frames>.json."""

    def __init__(self, out: Path, opts: PrepareOptions, resume: bool) -> None:
        self.out, self.dir = out, out / STATE_DIR
        options_file = self.dir / "options.json"
        stored = None
        if options_file.is_file():
            try:
                stored = json.loads(options_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = None
        if out.exists() and any(out.iterdir()):
            if not resume:
                hint = "continue it with --resume" if stored is not None else "pick a new folder"
                raise DataError(f"{out}: the output folder is not empty; {hint}")
            if stored is None:
                raise DataError(f"{out}: not empty and not made by `tubelet data prepare`; pick a new folder")
            if stored.get("version") != STATE_VERSION or stored.get("options") != opts.to_dict():
                old = stored.get("options") or {}
                diff = [
                    f"{k}={old.get(k)!r} (now {v!r})" for k, v in opts.to_dict().items() if old.get(k) != v
                ]
                raise DataError(
                    f"{out}: was prepared with other options ({', '.join(diff) or 'another version'}); "
                    "rerun with the same options or pick a new folder"
                )
        (self.dir / "sources").mkdir(parents=True, exist_ok=True)
        (self.dir / "clips").mkdir(parents=True, exist_ok=True)
        atomic_write_json(options_file, {"version": STATE_VERSION, "options": opts.to_dict()})
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        """Temporary files of an interrupted write (`.<name>.<hex>.tmp`, see `atomic_path`)."""
        for folder in (self.out / "clips", self.dir, self.out):
            if not folder.is_dir():
                continue
            for dirpath, _, names in os.walk(folder):
                for name in names:
                    if name.startswith(".") and name.endswith(".tmp"):
                        with contextlib.suppress(OSError):
                            (Path(dirpath) / name).unlink()
            if folder == self.out:
                break

    def analysis(self, path: Path) -> SourceAnalysis | None:
        f = self.dir / "sources" / f"{_source_key(path)}.json"
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if d.get("path") != str(path) or d.get("version") != _file_version(path):
            return None  # another file, or the source changed since: analyse again
        try:
            return SourceAnalysis.from_dict(d["analysis"])
        except (KeyError, TypeError):
            return None

    def save_analysis(self, path: Path, a: SourceAnalysis) -> None:
        f = self.dir / "sources" / f"{_source_key(path)}.json"
        atomic_write_json(
            f, {"path": str(path), "version": _file_version(path), "analysis": a.to_dict()}, indent=None
        )

    def _clip_file(self, video: str) -> Path:
        return self.dir / "clips" / (video.removeprefix("clips/").replace("/", "__") + ".json")

    def clip_record(self, video: str) -> dict[str, Any] | None:
        try:
            rec = json.loads(self._clip_file(video).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("video") != video:
            return None
        if rec.get("reason") is None and not (self.out / video).is_file():
            return None
        return rec

    def save_clip_record(self, rec: dict[str, Any]) -> None:
        atomic_write_json(self._clip_file(rec["video"]), rec, indent=None)

    def remove_stale_clips(self, keep: set[str]) -> int:
        """Delete clips this tool wrote earlier that are not in the dataset now (options or sources
        changed on a resume). Only files with a record here are touched."""
        removed = 0
        for f in sorted((self.dir / "clips").glob("*.json")):
            try:
                video = json.loads(f.read_text(encoding="utf-8")).get("video")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(video, str) and video not in keep:
                with contextlib.suppress(OSError):
                    (self.out / video).unlink(missing_ok=True)
                    f.unlink()
                    removed += 1
                with contextlib.suppress(OSError):
                    (self.out / video).parent.rmdir()  # only when empty
        return removed


# ---------------------------------------------------------------------------------------------------
# Workers (top-level functions: they run in spawned processes with --workers > 1)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def _analyze_task(job: tuple[str, PrepareOptions]) -> dict[str, Any]:
    return analyze_source(job[0], job[1]).to_dict()


def _write_task(job: tuple[dict[str, Any], PrepareOptions, str, str, int, int]) -> dict[str, Any]:
    cand_d, opts, out, video, src_h, src_w = job
    return write_clip(Candidate.from_dict(cand_d), opts, Path(out), video, (src_h, src_w))


def write_clip(
    cand: Candidate, opts: PrepareOptions, out: Path, video: str, source_hw: tuple[int, int]
) -> dict[str, Any]:
    """Decode `cand` at full size, crop its black border exactly, downscale to `max_size` and encode it
    to `out / video` (atomically). Returns the clip's record: size, crop (x, y, w, h in source pixels),
    or `reason` "too_small" / "unreadable" when it cannot be kept after all."""
    import cv2

    from tubelet.media import read_video, write_video

    t0 = time.process_time()
    rec: dict[str, Any] = {"video": video, "reason": None}
    sh, sw = source_hw
    short = min(cand.content_width, cand.content_height)
    scale = opts.max_size / short if opts.max_size and short > opts.max_size else 1.0
    size = (max(2, round(sh * scale)), max(2, round(sw * scale))) if scale < 1 else None
    try:
        v = read_video(cand.source, fps=cand.fps, size=size, start=cand.start, max_frames=cand.frames)
    except TubeletError as e:
        rec.update(reason="unreadable", error=getattr(e, "cause", None) or str(e))
        return rec
    frames = v.frames
    if len(frames) < cand.frames:
        rec.update(reason="unreadable", error=f"{len(frames)} of {cand.frames} frames decoded")
        return rec
    pick = frames[np.unique(np.linspace(0, len(frames) - 1, min(len(frames), 16)).round().astype(int))]
    luma = pick.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (k, H, W)
    x0, y0, x1, y1 = border_box(
        luma.mean(axis=2).max(axis=0), luma.mean(axis=1).max(axis=0), opts.border_luma
    )
    w, h = (x1 - x0) // 2 * 2, (y1 - y0) // 2 * 2  # H.264 (yuv420p) wants even sizes
    fh, fw = frames.shape[1:3]
    crop = [round(x0 * sw / fw), round(y0 * sh / fh), round(w * sw / fw), round(h * sh / fh)]
    rec["crop"] = crop
    if min(crop[2], crop[3]) < opts.min_size or w < 2 or h < 2:
        rec["reason"] = "too_small"
        return rec
    frames = frames[:, y0 : y0 + h, x0 : x0 + w]
    if opts.max_size and min(h, w) > opts.max_size:
        s = opts.max_size / min(h, w)
        nw, nh = round(w * s / 2) * 2, round(h * s / 2) * 2
        frames = np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA) for f in frames])
    write_video(out / video, np.ascontiguousarray(frames), cand.fps, sidecar=False, crf=opts.crf)
    rec.update(width=int(frames.shape[2]), height=int(frames.shape[1]), cpu_seconds=time.process_time() - t0)
    return rec


def _run(
    fn: Callable[[Any], dict[str, Any]],
    jobs: Sequence[Any],
    workers: int,
    desc: str,
    unit: str,
    progress: bool,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(job index, result) as jobs finish: in this process, or on `workers` spawned processes."""
    from tqdm.auto import tqdm

    if not jobs:
        return
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress, leave=False)
    try:
        if workers <= 1 or len(jobs) == 1:
            _init_worker()
            for i, job in enumerate(jobs):
                yield i, fn(job)
                bar.update(1)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            try:
                for fut in as_completed(futures):
                    yield futures[fut], fut.result()
                    bar.update(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------
# The whole run


def _dedup(cands: list[tuple[int, Candidate]], distance: float) -> None:
    """Mark near-duplicates among the clips that passed so far (in place): the bigger (content area),
    then longer, then earlier clip of each group is kept. O(n^2) hash comparisons, vectorised."""
    live = [(order, c) for order, c in cands if c.reason is None]
    live.sort(key=lambda oc: (-oc[1].content_width * oc[1].content_height, -oc[1].frames, oc[0]))
    kept_hashes = np.zeros((len(live), 3), np.uint64)
    kept_names: list[str] = []
    for _order, c in live:
        h = np.array([int(x, 16) for x in c.phash], np.uint64)
        if kept_names:
            d = hamming(kept_hashes[: len(kept_names)], h[None, :]).mean(axis=1)
            j = int(np.argmin(d))
            if d[j] <= distance:
                c.reason, c.duplicate_of = "duplicate", kept_names[j]
                continue
        kept_hashes[len(kept_names)] = h
        kept_names.append(_clip_name(c))


def _clip_name(c: Candidate) -> str:
    return f"clips/{_source_key(Path(c.source))}/{c.start_frame:06d}-{c.end_frame:06d}.mp4"


def _line(c: Candidate, caption: str | None, rec: dict[str, Any] | None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "video": _clip_name(c),
        "caption": caption if caption is not None else "",
        "source": c.source,
        "start": round(c.start, 4),
        "end": round(c.end, 4),
        "frames": c.frames,
        "fps": c.fps,
    }
    if rec is not None and rec.get("width"):
        line.update(width=rec["width"], height=rec["height"], crop=rec.get("crop"))
    line.update(
        duration=round(c.duration, 4),
        motion=round(c.motion, 3),
        border=round(c.border, 4),
        phash="-".join(c.phash),
    )
    if c.text is not None:
        line["text"] = c.text
    return line


def prepare_dataset(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    options: PrepareOptions | None = None,
    *,
    captions: str | os.PathLike[str] | None = None,
    workers: int = 1,
    resume: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Turn raw videos into a dataset folder that `tubelet train` and `tubelet data check` read.

    Args:
        sources: video files and/or folders (walked for videos; the output folder is skipped).
        out: the dataset folder: new or empty, or (with `resume`) a folder an earlier run started.
        options: the filters and clip settings (`PrepareOptions`; defaults in docs/data.md).
        captions: a CSV/JSONL mapping source -> caption; otherwise each source's `<name>.txt` sidecar.
        workers: processes analysing sources and writing clips (the output does not depend on it).
        resume: continue an interrupted run into `out` (the options must be the same).

    A source that cannot be read is reported in the summary and skipped; the others are processed.
    Raises DataError for bad options or paths, before any work.
    """
    t_wall = time.perf_counter()
    opts = (options or PrepareOptions()).validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers {workers!r}: expected an int >= 1")
    out = Path(out).expanduser()
    check_output_location(out, kind="folder", what="dataset folder")
    srcs = find_sources(sources, out)
    mapping = read_caption_map(captions, srcs) if captions is not None else {}
    source_captions = {p: source_caption(p, mapping) for p in srcs}
    state = _State(out, opts, resume)

    # [A] analysis (each finished source is saved at once: a killed run keeps it)
    analyses: dict[Path, SourceAnalysis] = {}
    todo: list[Path] = []
    for p in srcs:
        a = state.analysis(p)
        if a is None:
            todo.append(p)
        else:
            analyses[p] = a
    jobs = [(str(p), opts) for p in todo]
    for i, d in _run(_analyze_task, jobs, workers, "analysing", "source", progress):
        a = SourceAnalysis.from_dict(d)
        state.save_analysis(todo[i], a)
        analyses[todo[i]] = a

    summary = PrepareSummary(str(out), sources=len(srcs))
    ordered: list[tuple[int, Candidate]] = []
    for p in srcs:
        a = analyses[p]
        summary.analysis_cpu_seconds += a.cpu_seconds
        if a.error is not None:
            summary.failed.append((str(p), a.error))
            continue
        summary.sources_read += 1
        summary.scenes += len(a.scenes)
        summary.source_seconds += a.duration
        ordered += [(len(ordered), c) for c in a.candidates]
    summary.candidates = len(ordered)

    # [B] across the set: near-duplicates, then captions
    _dedup(ordered, opts.dup_distance)
    for _, c in ordered:
        if c.reason is None and source_captions[Path(c.source)] is None:
            summary.uncaptioned.append(_clip_name(c))
            if not opts.keep_uncaptioned:
                c.reason = "no_caption"

    # [C] write the kept clips (a clip with a record is done)
    sizes = {str(p): (a.height, a.width) for p, a in analyses.items()}
    records: dict[str, dict[str, Any]] = {}
    write: list[Candidate] = []
    for _, c in ordered:
        if c.reason is None:
            rec = state.clip_record(_clip_name(c))
            if rec is None:
                write.append(c)
            else:
                records[rec["video"]] = rec
    wjobs = [(c.to_dict(), opts, str(out), _clip_name(c), *sizes[c.source]) for c in write]
    for _, rec in _run(_write_task, wjobs, workers, "writing", "clip", progress):
        state.save_clip_record(rec)
        records[rec["video"]] = rec
        summary.encoded_now += rec.get("reason") is None
    for rec in records.values():
        summary.write_cpu_seconds += float(rec.get("cpu_seconds", 0.0))

    # [D] the dataset files
    kept_lines: list[dict[str, Any]] = []
    dropped_lines: list[dict[str, Any]] = []
    report_items: list[tuple[Candidate, dict[str, Any]]] = []
    summary.dropped = {k: 0 for k in REASONS}
    for _, c in ordered:
        rec = records.get(_clip_name(c))
        if c.reason is None and rec is not None and rec.get("reason"):
            c.reason = rec["reason"]  # found when writing: too small after the exact crop, unreadable
        line = _line(c, source_captions[Path(c.source)], rec)
        if c.reason is None:
            kept_lines.append(line)
            summary.kept_seconds += c.duration
        else:
            line["reason"] = c.reason
            if c.duplicate_of:
                line["duplicate_of"] = c.duplicate_of
            dropped_lines.append(line)
            summary.dropped[c.reason] += 1
        report_items.append((c, line))
    summary.written = len(kept_lines)
    summary.dropped = {k: n for k, n in summary.dropped.items() if n}

    def jsonl(lines: list[dict[str, Any]]) -> str:
        return "".join(json.dumps(ln, ensure_ascii=False) + "\n" for ln in lines)

    atomic_write_text(out / "prepare-dropped.jsonl", jsonl(dropped_lines))
    report = out / "prepare-report.html"
    summary.report = str(report)
    summary.wall_seconds = time.perf_counter() - t_wall
    from tubelet.data.prepare_report import render_report

    atomic_write_text(report, render_report(summary, report_items, opts))
    atomic_write_json(out / "prepare-summary.json", summary.to_dict())
    atomic_write_text(out / "captions.jsonl", jsonl(kept_lines))  # its presence means "finished"
    # after captions.jsonl: a kill in between leaves only unnamed extra files (removed next time)
    state.remove_stale_clips({ln["video"] for ln in kept_lines})
    return summary
