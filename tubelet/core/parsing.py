"""Reading user-given text files (JSON, JSON lines, YAML, CSV) with one clear error per problem.

Every reader raises the caller's error type (a `TubeletError` subclass) with a message that names
the file (and the line, for line formats) and what is wrong: missing, a folder, too big, not
UTF-8, not valid JSON/YAML, nested too deep, too many nodes (YAML alias bombs), integers with more
digits than Python converts, lone surrogates (text that cannot be written back as UTF-8). YAML is
read with `yaml.safe_load` only: tags such as ``!!python/object`` are refused.

    data = read_json(path, error=ModelLoadError)            # -> Any (the caller checks the shape)
    data = read_structured(path, error=ConfigError)          # .json -> JSON, else YAML
    for line_no, obj in read_jsonl(path, error=DataError):   # blank lines skipped
        ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tubelet.errors import ConfigError, TubeletError

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_TEXT_BYTES",
    "check_structure",
    "check_text",
    "parse_json",
    "parse_yaml",
    "read_json",
    "read_jsonl",
    "read_structured",
    "read_text",
]

MAX_TEXT_BYTES = 256 * 1024 * 1024  # config and caption files larger than this are refused
MAX_DEPTH = 64  # nesting of lists/mappings in a config or caption line
MAX_NODES = 1_000_000  # values in one document (a YAML alias bomb expands to far more)


def read_text(path: str | Path, *, error: type[TubeletError] = ConfigError, what: str = "file") -> str:
    """The UTF-8 text of `path` (a BOM is dropped); errors name the file."""
    p = Path(path)
    try:
        if not p.exists():
            raise error(f"{p}: {what} not found")
        if p.is_dir():
            raise error(f"{p}: is a folder, expected a {what}")
        size = p.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise error(
                f"{p}: {size / 2**20:.0f} MiB is too big for a {what} (limit {MAX_TEXT_BYTES >> 20} MiB)"
            )
        data = p.read_bytes()
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})") from None


def check_text(value: str, where: str, *, error: type[TubeletError] = ConfigError) -> str:
    """`value` unchanged, or an error when it holds a lone surrogate (it cannot be written as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise error(
            f"{where}: text holds a lone surrogate at character {e.start} (not valid Unicode)"
        ) from None
    return value


def check_structure(
    obj: Any, where: str, *, error: type[TubeletError] = ConfigError, max_depth: int = MAX_DEPTH
) -> Any:
    """`obj` unchanged, after checking its nesting depth, node count and strings (iteratively)."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise error(f"{where}: more than {MAX_NODES:,} values (YAML aliases expanding?)")
        if isinstance(value, str):
            check_text(value, where, error=error)
        elif isinstance(value, (list, tuple, dict)):
            if depth >= max_depth:
                raise error(f"{where}: nested deeper than {max_depth} levels")
            items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
            for k, v in items:
                if isinstance(k, str):
                    check_text(k, where, error=error)
                stack.append((v, depth + 1))
    return obj


def parse_json(text: str, where: str, *, error: type[TubeletError] = ConfigError) -> Any:
    """Parse JSON text; errors name `where` (a file, or file:line)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(f"{where}: nested too deep to read") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise error(f"{where}: not valid JSON ({e})") from None
    return check_structure(obj, where, error=error)


def parse_yaml(text: str, where: str, *, error: type[TubeletError] = ConfigError) -> Any:
    """Parse YAML with the safe loader (no Python tags); errors name `where`."""
    import yaml

    try:
        obj = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        problem = (e.problem or "unsupported tag").strip()
        raise error(f"{where}: {problem} (only plain YAML values are read; no Python tags)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{where}: not valid YAML ({problem}{at})") from None
    except RecursionError:
        raise error(f"{where}: nested too deep to read") from None
    except ValueError as e:
        raise error(f"{where}: not valid YAML ({e})") from None
    return check_structure(obj, where, error=error)


def read_json(path: str | Path, *, error: type[TubeletError] = ConfigError, what: str = "JSON file") -> Any:
    """Read and parse a JSON file (see the module doc)."""
    return parse_json(read_text(path, error=error, what=what), str(path), error=error)


def read_structured(
    path: str | Path, *, error: type[TubeletError] = ConfigError, what: str = "config file"
) -> Any:
    """Read a `.json` file as JSON and anything else as YAML."""
    text = read_text(path, error=error, what=what)
    if Path(path).suffix.lower() == ".json":
        return parse_json(text, str(path), error=error)
    return parse_yaml(text, str(path), error=error)


def read_jsonl(
    path: str | Path, *, error: type[TubeletError] = ConfigError, what: str = "JSON lines file"
) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) for every non-blank line of a JSON lines file."""
    text = read_text(path, error=error, what=what)
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield n, parse_json(line, f"{path}:{n}", error=error)
