"""Atomic file writes: a file appears under its name whole, or not at all.

Each write goes to a temporary file in the same folder (`.<name>.<random>.tmp`, so the final rename
stays on one file system and is atomic) that is moved onto the final name with `os.replace` once it
is complete; if writing fails the temporary file is removed and whatever was under the name before
is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "check_output_location"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; moved onto `path` when the block succeeds.

    For writers that want a file name (encoders, `safetensors.save_file`). With `fsync`, the data is
    flushed to disk before the rename (a power cut then cannot leave an empty file under `path`).
    The folder must exist.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = False
) -> Path:
    """Write `text` to `path` atomically (see the module docstring); returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, fsync: bool = False
) -> Path:
    """Write `obj` as UTF-8 JSON (non-ASCII kept as is) plus a final newline to `path`, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", fsync=fsync)


_SUFFIX_ROOM = 24  # ".<name>.json.<12 hex>.tmp": the longest name made from an output file's name


def check_output_location(path: str | os.PathLike[str], *, kind: str = "file", what: str = "output") -> Path:
    """Check, before any work, that `path` can be written as a `kind` ("file" or "folder").

    Raises `TubeletError` naming the path when: it exists as the other kind; a parent on the way is
    a file; a name is longer than the file system allows; or the nearest existing folder refuses a
    new file (read-only, no permission, a pseudo file system). Creates nothing: a probe file made
    in that folder is removed at once.
    """
    import tempfile

    from tubelet.errors import TubeletError

    p = Path(path)
    if p.exists():
        if kind == "file" and p.is_dir():
            raise TubeletError(f"{p}: is a folder; the {what} must be a file name (e.g. {p / 'out.mp4'})")
        if kind == "folder" and not p.is_dir():
            raise TubeletError(f"{p}: is a file; the {what} must be a folder")
    anchor = p if p.is_dir() else p.parent
    missing: list[str] = [] if p.exists() else [p.name]
    while not anchor.exists():
        missing.append(anchor.name)
        anchor = anchor.parent
    if not anchor.is_dir():
        raise TubeletError(f"{p}: cannot create the {what}: {anchor} is a file, not a folder")
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for name in missing if kind == "folder" else [p.name, *missing[1:]]:
        # a file's name also carries its atomic-write temporary and sidecar suffixes
        room = name_max - (_SUFFIX_ROOM if kind == "file" and name == p.name else 0)
        if len(os.fsencode(name)) > room:
            raise TubeletError(
                f"{p}: the name {name[:40]!r}... is {len(os.fsencode(name))} bytes; at most {room} fit here "
                f"(this file system allows {name_max} per name)"
            )
    try:
        fd, probe = tempfile.mkstemp(prefix=".tubelet-probe-", dir=anchor)
    except OSError as e:
        raise TubeletError(f"{p}: cannot write the {what} in {anchor} ({e.strerror or e})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return p
