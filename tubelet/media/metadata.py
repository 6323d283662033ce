"""Generation metadata of a video: JSON in the container (comment tag / GIF comment) and a sidecar file.

`write` stores it (`_metadata_json`, `_add_gif_comment`, `_write_sidecar`); `read_metadata` reads it back.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.core.files import atomic_write_json
from tubelet.errors import VideoError
from tubelet.media._common import _check_input_file, _open_input, _short, _sniff

__all__ = ["read_metadata", "sidecar_path"]

_METADATA_TAGS = ("comment", "description")


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The metadata sidecar of a video: the full file name plus `.json` (`clip.mp4` -> `clip.mp4.json`).

    Keeping the video's extension avoids clashing with a dataset's own `clip.json` and keeps
    `clip.mp4` and `clip.gif` apart.
    """
    p = Path(path)
    return p.with_name(p.name + ".json")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _metadata_json(path: Path, metadata: Any) -> str:
    if not isinstance(metadata, dict):
        raise VideoError(path, f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.dumps(metadata, ensure_ascii=False, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise VideoError(path, f"metadata is not JSON-serialisable ({_short(e)})") from None


def _gif_blocks(data: bytes) -> tuple[int, list[bytes]]:
    """Walk a GIF: (offset of the first frame's first block, list of comment texts)."""
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        raise ValueError("not a GIF")
    pos = 13
    packed = data[10]
    if packed & 0x80:
        pos += 3 * (2 ** ((packed & 7) + 1))
    first_frame: int | None = None
    comments: list[bytes] = []

    def skip_sub_blocks(i: int, sink: list[bytes] | None = None) -> int:
        while True:
            n = data[i]
            i += 1
            if n == 0:
                return i
            if sink is not None:
                sink.append(data[i : i + n])
            i += n

    while pos < len(data):
        b = data[pos]
        if b == 0x3B:  # trailer
            break
        if b == 0x21:
            label = data[pos + 1]
            if label in (0xF9,) and first_frame is None:
                first_frame = pos
            if label == 0xFE:
                parts: list[bytes] = []
                pos = skip_sub_blocks(pos + 2, parts)
                comments.append(b"".join(parts))
            else:
                pos = skip_sub_blocks(pos + 2)
        elif b == 0x2C:
            if first_frame is None:
                first_frame = pos
            flags = data[pos + 9]
            pos += 10
            if flags & 0x80:
                pos += 3 * (2 ** ((flags & 7) + 1))
            pos = skip_sub_blocks(pos + 1)  # +1: LZW minimum code size
        else:
            raise ValueError(f"bad GIF block 0x{b:02x} at {pos}")
    return (first_frame if first_frame is not None else pos), comments


def _add_gif_comment(tmp: Path, text: str) -> None:
    """Insert a GIF comment extension before the first frame (after header and loop extension)."""
    data = tmp.read_bytes()
    at, _ = _gif_blocks(data)
    payload = text.encode("utf-8")
    block = bytearray(b"\x21\xfe")
    for i in range(0, len(payload), 255):
        chunk = payload[i : i + 255]
        block.append(len(chunk))
        block += chunk
    block.append(0)
    tmp.write_bytes(data[:at] + bytes(block) + data[at:])


def _write_sidecar(video: Path, text: str | None) -> None:
    """Write `text` (metadata JSON) to the sidecar of `video`, indented, atomically and flushed to disk;
    with None, remove an old sidecar of that name (it would describe an earlier file)."""
    side = sidecar_path(video)
    if text is None:
        with contextlib.suppress(OSError):
            side.unlink()
        return
    try:
        atomic_write_json(side, json.loads(text), fsync=True)
    except OSError as e:
        raise VideoError(side, f"cannot write the metadata sidecar ({_short(e)})") from None


def _parse_tag(value: Any) -> dict | None:
    if not isinstance(value, str):
        return None
    try:
        obj = json.loads(value)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def read_metadata(path: str | os.PathLike[str]) -> dict:
    """Generation metadata of a video: its sidecar JSON if present, else the container tag, else {}.

    The container tag is the JSON text written by `write_video` in the "comment" (or
    "description") tag, or a GIF comment extension; a tag that is not a JSON object is ignored.

    Raises:
        VideoError: missing/empty/unreadable video, or a sidecar that is not a JSON object.
    """
    p = Path(path)
    side = sidecar_path(p)
    if side.is_file():
        try:
            obj = json.loads(side.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise VideoError(side, f"metadata sidecar is not valid JSON ({_short(e)})") from None
        if not isinstance(obj, dict):
            raise VideoError(side, f"metadata sidecar holds a {type(obj).__name__}, expected a JSON object")
        return obj
    _check_input_file(p)
    if p.suffix.lower() == ".gif" or _sniff(p) == "GIF":
        try:
            _, comments = _gif_blocks(p.read_bytes())
        except (ValueError, IndexError):
            raise VideoError(p, "corrupt or truncated GIF file (cannot walk its blocks)") from None
        for c in comments:
            obj = _parse_tag(c.decode("utf-8", errors="replace"))
            if obj is not None:
                return obj
        return {}
    container = _open_input(p)
    try:
        tags = {str(k).lower(): v for k, v in container.metadata.items()}
        for s in container.streams.video:
            for k, v in s.metadata.items():
                tags.setdefault(str(k).lower(), v)
    finally:
        container.close()
    for key in _METADATA_TAGS:
        obj = _parse_tag(tags.get(key))
        if obj is not None:
            return obj
    return {}
