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

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text"]


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
