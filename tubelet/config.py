"""Typed dataclass configs <-> plain dicts / YAML / JSON, strictly.

Every component has one config dataclass; presets are plain dicts of name -> config
instance living next to the component. Unknown keys are errors (ConfigError), never ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from tubelet.errors import ConfigError

T = TypeVar("T")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a JSON/YAML value to the annotated type `tp` (nested dataclasses, tuples, optionals)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # `X | None` with a value: X's own error says what is wrong
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # an annotation: a class, not an instance
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return config_from_dict(tp, value, where=where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, where: str | None = None) -> T:
    """Build dataclass `cls` from `data`. Unknown keys and wrong types raise ConfigError."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    # `cls` is a dataclass type by contract (T is unbounded so callers keep their precise type)
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls)) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:  # a value check of the dataclass: say where the value came from
        message = str(e)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None


# Upper bounds of model sizes read from configs: far above any real model (Wan2.1 14B: dim 5120,
# 40 layers, ffn 13824), low enough that a typo or a hostile file cannot make a model that takes
# hours to build or more memory than any machine has. A config beyond them is an error naming the key.
MODEL_LIMITS: dict[str, int] = {
    "dim": 65_536,
    "num_layers": 1_024,
    "num_heads": 1_024,
    "ffn_dim": 262_144,
    "text_dim": 65_536,
    "in_channels": 4_096,
    "out_channels": 4_096,
    "freq_dim": 65_536,
    "base_dim": 4_096,
    "decoder_base_dim": 4_096,
    "z_dim": 4_096,
    "num_res_blocks": 64,
    "time_kernel": 15,
    "max_length": 65_536,
    "rope_max_seq_len": 1_048_576,
    "conv_kernel": 15,
}


def check_model_limits(cfg: Any) -> None:
    """ConfigError when an integer field of a model config is above its `MODEL_LIMITS` bound."""
    name = type(cfg).__name__
    for key, limit in MODEL_LIMITS.items():
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise ConfigError(f"{name}.{key}={value} is above the limit {limit:,} (a typo?)")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> JSON-friendly dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with a clear error naming the file (`tubelet.core.parsing`)."""
    from tubelet.core.parsing import read_structured

    p = Path(path)
    data = read_structured(p, error=ConfigError)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{p}: expected a mapping (key: value lines) at the top level, got {got}")
    return data
