"""Self-describing model directories: `config.json` + `model.safetensors`.

`PretrainedMixin` gives an `nn.Module` built from one config dataclass the pair
`save_pretrained(dir)` / `from_pretrained(dir)`. Loading never unpickles: weights are read
with safetensors only. Models are built on the meta device and the loaded tensors assigned,
so a 14B checkpoint does not need twice its size in memory. Consequently model code must not
register non-persistent buffers (compute tables like RoPE frequencies lazily in forward).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tubelet.config import config_from_dict, config_to_dict
from tubelet.core.files import atomic_path, atomic_write_json
from tubelet.errors import ConfigError, ModelLoadError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="PretrainedMixin")


def read_config_json(directory: str | Path) -> dict[str, Any]:
    """Read `<directory>/config.json` with errors that name the file."""
    d = Path(directory)
    if not d.exists():
        raise ModelLoadError(f"{d}: model directory not found")
    if not d.is_dir():
        raise ModelLoadError(f"{d}: not a directory (expected a model directory with {CONFIG_NAME})")
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelLoadError(f"{d}: missing {CONFIG_NAME}; not a tubelet model directory")
    from tubelet.core.parsing import read_json

    data = read_json(cfg_path, error=ModelLoadError, what="model config")
    if not isinstance(data, dict):
        raise ModelLoadError(f"{cfg_path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file (no pickle), with a clear error on a broken file."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: weights file not found")
    try:
        out = {}
        with safe_open(str(p), framework="pt", device=str(device)) as f:
            for k in f.keys():
                t = f.get_tensor(k)
                # Tensors read from the file may start at any byte offset; CPU kernels pick different
                # (vectorised) paths for unaligned data and round differently, so the same weights
                # loaded from float32 and float16 files would give different clips. Copy to aligned memory.
                if t.device.type == "cpu" and t.data_ptr() % 64:
                    t = t.clone()
                out[k] = t
        return out
    except Exception as e:
        raise ModelLoadError(f"{p}: cannot read safetensors file ({e})") from None


def save_state_dict(
    state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors atomically (temporary file, then rename); shared storage is cloned."""
    p = Path(path)
    seen: set[int] = set()
    clean = {}
    for k, v in state.items():
        v = v.detach()
        if v.device.type != "cpu":
            v = v.cpu()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel() > 0:
            v = v.clone()
        seen.add(ptr)
        clean[k] = v.contiguous()
    with atomic_path(p) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def name_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """A message listing missing / unexpected tensor names, or None when the names agree."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[:5]}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensor(s), e.g. {unexpected[:5]}")
    return "; ".join(parts) or None


def first_shape_mismatch(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
    """(name, shape in `state`, expected shape) of the first mis-shaped tensor, or None."""
    for k, v in expected.items():
        if tuple(v.shape) != tuple(state[k].shape):
            return k, tuple(state[k].shape), tuple(v.shape)
    return None


def assign_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Check names and shapes against `model`, then assign (works for meta-device models)."""
    expected = model.state_dict()
    names = name_mismatch(expected, state)
    if names:
        raise ModelLoadError(f"{source}: weights do not match the config: {names}")
    bad = first_shape_mismatch(expected, state)
    if bad:
        raise ModelLoadError(f"{source}: tensor {bad[0]!r} has shape {bad[1]}, the config expects {bad[2]}")
    model.load_state_dict(state, strict=True, assign=True)


class PretrainedMixin:
    """Adds save_pretrained / from_pretrained to an nn.Module with a `config` dataclass attribute."""

    config_class: ClassVar[type]
    config: Any

    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` and `model.safetensors` into `directory` (created if needed)."""
        assert isinstance(self, torch.nn.Module)
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = {"_class": type(self).__name__, **config_to_dict(self.config)}
        state = self.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_state_dict(state, d / WEIGHTS_NAME, metadata={"format": "pt", "class": type(self).__name__})
        atomic_write_json(d / CONFIG_NAME, cfg)
        return d

    @classmethod
    def config_from_directory(cls, directory: str | Path) -> Any:
        raw = read_config_json(directory)
        name = raw.pop("_class", cls.__name__)
        if name != cls.__name__:
            raise ModelLoadError(f"{directory}: holds a {name}, not a {cls.__name__}")
        where = f"{Path(directory) / CONFIG_NAME}"
        try:
            upgrade = getattr(cls, "upgrade_config", None)
            if upgrade is not None:
                raw = upgrade(raw, where)
            return config_from_dict(cls.config_class, raw, where=where)
        except ConfigError as e:
            raise ModelLoadError(str(e)) from None

    @classmethod
    def from_pretrained(
        cls: type[M],
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> M:
        """Build the model from `directory/config.json` and load `directory/model.safetensors`."""
        d = Path(directory)
        config = cls.config_from_directory(d)
        state = load_safetensors(d / WEIGHTS_NAME, device=device)
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        with torch.device("meta"):
            model = cls(config)  # type: ignore[call-arg]
        assign_state_dict(model, state, str(d / WEIGHTS_NAME))  # type: ignore[arg-type]
        leftovers = [n for n, b in model.named_buffers() if b.is_meta]  # type: ignore[attr-defined]
        if leftovers:
            raise RuntimeError(
                f"{cls.__name__} registers non-persistent buffers {leftovers}; compute them lazily"
            )
        return model.eval()  # type: ignore[attr-defined]
