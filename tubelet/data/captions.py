"""Captions files of a dataset folder: ``captions.jsonl`` / ``captions.csv`` parsed into `Captions`.

A media file may be named on several lines (several captions). Paths are relative to the dataset
root (absolute paths work too). See `tubelet.data.dataset` for the layout of a dataset directory.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tubelet.core.parsing import check_text, read_jsonl, read_text
from tubelet.errors import DataError

CAPTION_FILES = ("captions.jsonl", "captions.csv")


@dataclass
class CaptionEntry:
    """One caption line: media path as written, resolved absolute path, caption, line number."""

    video: str
    path: Path
    caption: str
    line: int
    boxes: list[Any] | None = None  # the line's optional box tracks (`tubelet.boxes.BoxTrack`s)
    # the line's other keys (jsonl) or columns (csv) whose values are numbers, strings or booleans,
    # e.g. the scores `tubelet data prepare` writes (motion, border, ...); `DataConfig.filters` reads them
    meta: dict[str, Any] = field(default_factory=dict)


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


def _csv_value(cell: str) -> Any:
    """A CSV cell as a number when it reads as one (so that filters compare numbers), else the text."""
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        return cell


def read_captions(root: str | Path, *, video_key: str = "video", caption_key: str = "caption") -> Captions:
    """Parse ``captions.jsonl`` / ``captions.csv`` of `root`.

    Raises DataError naming the file and line number for a malformed line (bad JSON, not an
    object, missing or non-string video / caption). Whether the named media files exist is not
    checked here.
    """
    root = Path(root)
    file = find_captions_file(root)
    entries: list[CaptionEntry] = []

    def add(
        line: int, video: Any, caption: Any, boxes: Any = None, meta: dict[str, Any] | None = None
    ) -> None:
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
        tracks = None
        if boxes is not None:  # optional box tracks (tubelet.boxes), e.g. written by the shapes recipe
            from tubelet.boxes import parse_boxes

            tracks = parse_boxes(boxes, f"{where}: boxes") or None
        entries.append(CaptionEntry(video, _resolve(root, video.strip()), caption, line, tracks, meta or {}))

    if file.suffix == ".jsonl":
        for lineno, obj in read_jsonl(file, error=DataError, what="captions file"):
            if not isinstance(obj, dict):
                raise DataError(
                    f"{file}:{lineno}: expected a JSON object with {video_key!r} and {caption_key!r}"
                )
            missing = [k for k in (video_key, caption_key) if k not in obj]
            if missing:
                raise DataError(f"{file}:{lineno}: missing key(s) {missing}; the line has {sorted(obj)[:8]}")
            meta = {
                k: v
                for k, v in obj.items()
                if k not in (video_key, caption_key, "boxes") and isinstance(v, (int, float, str, bool))
            }
            add(lineno, obj[video_key], obj[caption_key], obj.get("boxes"), meta)
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
                meta = {h: _csv_value(c) for i, (h, c) in enumerate(zip(header, row)) if i not in (vi, ci)}
                add(lineno, row[vi], row[ci], None, meta)
        except csv.Error as e:
            raise DataError(f"{file}:{reader.line_num}: malformed CSV ({e})") from None
    return Captions(file, entries)
