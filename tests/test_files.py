"""Atomic writes (`tubelet.core.files`): content, no temporary file left, old file kept on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tubelet.core.files import atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_text_and_json(tmp_path: Path) -> None:
    p = atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert p == tmp_path / "a.txt" and p.read_bytes() == "héllo\n".encode()
    obj = {"b": [1, 2], "name": "三角形"}
    atomic_write_json(tmp_path / "c.json", obj)
    assert (tmp_path / "c.json").read_text("utf-8") == json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write_json(tmp_path / "d.json", obj, indent=None, fsync=True)
    assert (tmp_path / "d.json").read_text("utf-8") == json.dumps(obj, ensure_ascii=False) + "\n"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.txt", "c.json", "d.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    p = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert p.read_text() == "old"
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()})
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left
