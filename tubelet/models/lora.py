"""LoRA for `VideoDiT`: low-rank updates of its linear layers, saved in the formats the ecosystem loads.

    attach_lora(dit, LoRAConfig(rank=32, targets=["attn", "ffn"]))   # trainable adapters, base untouched
    save_lora(dit, "style.safetensors")                               # diffusers / PEFT keys
    load_lora(dit, "style.safetensors", scale=0.8)                    # any supported format
    merge_lora(dit)                                                   # fold every adapter into the weights

**How an adapter attaches.** Each targeted `nn.Linear` gets a child module ``lora`` (a `LoRASlot`)
and a forward hook that adds the slot's output to the layer's: ``y = W x + b + sum_a s_a B_a A_a
drop(x)``. The layer itself, its class, parameters and state-dict keys are untouched, so the CPU
kernels, activation checkpointing, FSDP2 and `torch.compile` see the same model, and the base
weights load as before. Several adapters may sit on one layer (several LoRA files at inference,
each with its scale).

**Parts.** tubelet fuses q/k/v of self-attention into one ``qkv`` linear and k/v of cross-attention
into ``kv``. A LoRA is named by the *logical* projections the ecosystem uses (q, k, v, o, ffn...);
on a fused layer each part updates its own rows (an adapter on ``self_attn.k`` touches only the k
rows of ``qkv``), which is exactly what a LoRA on diffusers' separate ``to_k`` does.

**Formats** (`read_lora_file` recognises each; `save_lora(fmt=...)` writes the first two):

* ``diffusers``: ``transformer.blocks.N.attn1.to_q.lora_A.weight`` / ``lora_B.weight`` (PEFT keys,
  as `diffusers.WanPipeline.load_lora_weights` loads them). PEFT files carry no alpha, so the
  ``alpha / rank`` factor is folded into ``lora_B`` on save (the file then means scale 1).
* ``comfyui``: the original Wan names, ``diffusion_model.blocks.N.self_attn.q.lora_A.weight`` /
  ``lora_B.weight`` + ``.alpha`` (ComfyUI, musubi-tuner, the Wan repository; diffusers reads them
  too). Layers outside the blocks get their scale folded into ``lora_B`` and no alpha, since
  diffusers' reader of this format takes no alpha there.
* read only: ``lora_down`` / ``lora_up`` instead of ``lora_A`` / ``lora_B``; kohya-style flat names
  (``lora_unet_blocks_0_self_attn_q.lora_down.weight`` + ``.alpha``); no prefix or PEFT's
  ``base_model.model.``; diffusers' or Wan's module names under any of these; ``.diff`` /
  ``.diff_b`` full weight / bias deltas (some distillation LoRAs).

A key that names no layer of the model, or a tensor of the wrong shape, is an error that lists
it: a LoRA never loads partly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from tubelet.errors import ConfigError, ModelLoadError

__all__ = [
    "COMFYUI_FILE",
    "DIFFUSERS_FILE",
    "LORA_FORMATS",
    "LoRAConfig",
    "LoRAError",
    "LoRAFile",
    "LoRASlot",
    "attach_lora",
    "convert_lora_file",
    "detach_lora",
    "export_lora_dir",
    "load_lora",
    "lora_file",
    "lora_parameters",
    "lora_path",
    "lora_state",
    "merge_lora",
    "read_lora_file",
    "save_lora",
    "write_lora_file",
]


class LoRAError(ModelLoadError):
    """A LoRA file or request that does not fit the model."""


# ---- names ---------------------------------------------------------------------------------

# logical part of a block -> (tubelet linear inside the block, row slice, number of slices)
BLOCK_PARTS: dict[str, tuple[str, int, int]] = {
    "self_attn.q": ("self_attn.qkv", 0, 3),
    "self_attn.k": ("self_attn.qkv", 1, 3),
    "self_attn.v": ("self_attn.qkv", 2, 3),
    "self_attn.o": ("self_attn.out", 0, 1),
    "cross_attn.q": ("cross_attn.q", 0, 1),
    "cross_attn.k": ("cross_attn.kv", 0, 2),
    "cross_attn.v": ("cross_attn.kv", 1, 2),
    "cross_attn.o": ("cross_attn.out", 0, 1),
    "ffn.0": ("ffn.fc1", 0, 1),
    "ffn.2": ("ffn.fc2", 0, 1),
}
# logical parts outside the blocks (named as in the original Wan code) -> tubelet linear
GLOBAL_PARTS: dict[str, tuple[str, int, int]] = {
    "text_embedding.0": ("text_embed.fc1", 0, 1),
    "text_embedding.2": ("text_embed.fc2", 0, 1),
    "time_embedding.0": ("time_embed.fc1", 0, 1),
    "time_embedding.2": ("time_embed.fc2", 0, 1),
    "time_projection.1": ("time_mod", 0, 1),
    "head.head": ("proj_out", 0, 1),
}
# the same parts in diffusers' WanTransformer3DModel
_DIFFUSERS_BLOCK = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_DIFFUSERS_GLOBAL = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
# target groups a config may name (besides single parts)
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "self_attn": ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o"),
    "cross_attn": ("cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o"),
    "attn": tuple(p for p in BLOCK_PARTS if "attn" in p),
    "ffn": ("ffn.0", "ffn.2"),
    "blocks": tuple(BLOCK_PARTS),
    "embeddings": tuple(GLOBAL_PARTS),
}
# diffusers-style aliases users type for single parts
_ALIASES = {
    **{v: k for k, v in _DIFFUSERS_BLOCK.items()},
    **{v: k for k, v in _DIFFUSERS_GLOBAL.items()},
    "self_attn.out": "self_attn.o",
    "cross_attn.out": "cross_attn.o",
    "ffn.fc1": "ffn.0",
    "ffn.fc2": "ffn.2",
}
LORA_FORMATS = ("diffusers", "comfyui")


def _resolve_targets(targets: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for t in targets:
        if not isinstance(t, str):
            raise ConfigError(f"lora.targets: expected names, got {t!r}")
        names = TARGET_GROUPS.get(t) or (
            (_ALIASES.get(t, t),) if _ALIASES.get(t, t) in {**BLOCK_PARTS, **GLOBAL_PARTS} else None
        )
        if names is None:
            known = sorted(TARGET_GROUPS) + sorted(BLOCK_PARTS) + sorted(GLOBAL_PARTS)
            raise ConfigError(f"lora.targets: unknown target {t!r}; known: {', '.join(known)}")
        out.extend(n for n in names if n not in out)
    if not out:
        raise ConfigError("lora.targets is empty: name at least one layer (e.g. attn, ffn)")
    return tuple(out)


@dataclass
class LoRAConfig:
    """A LoRA to attach: its rank, alpha (scale = alpha / rank), dropout and target layers.

    targets: groups (``attn``, ``self_attn``, ``cross_attn``, ``ffn``, ``blocks``, ``embeddings``) or
    single parts (``self_attn.q``, ``cross_attn.o``, ``ffn.0`` ..., diffusers' names accepted too).
    blocks: which blocks (None: all).
    """

    rank: int = 16
    alpha: float | None = None  # None: alpha = rank (scale 1)
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn", "ffn"])
    blocks: list[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank <= 4096:
            raise ConfigError(f"lora.rank must be an integer in [1, 4096], got {self.rank!r}")
        if self.alpha is not None and (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
            or self.alpha <= 0
        ):
            raise ConfigError(f"lora.alpha must be a positive number (or null: = rank), got {self.alpha!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0 <= self.dropout < 1
        ):
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        self.targets = list(self.targets)
        _resolve_targets(self.targets)
        if self.blocks is not None and (
            not isinstance(self.blocks, list)
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in self.blocks)
        ):
            raise ConfigError(
                f"lora.blocks must be a list of block indices (or null: all), got {self.blocks!r}"
            )

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    @property
    def parts(self) -> tuple[str, ...]:
        return _resolve_targets(self.targets)


# ---- the modules ---------------------------------------------------------------------------


class LoRAPart(nn.Module):
    """One low-rank update ``scale * B A drop(x)`` of `out_features` rows, and optional full deltas."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        scale: float = 1.0,
        dropout: float = 0.0,
        *,
        weight_delta: bool = False,
        bias_delta: bool = False,
    ) -> None:
        super().__init__()
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.Linear(in_features, rank, bias=False) if rank else None
        self.lora_B = nn.Linear(rank, out_features, bias=False) if rank else None
        if self.lora_A is not None and self.lora_B is not None:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
            nn.init.zeros_(self.lora_B.weight)  # a new adapter changes nothing
        self.diff = nn.Parameter(torch.zeros(out_features, in_features)) if weight_delta else None
        self.diff_b = nn.Parameter(torch.zeros(out_features)) if bias_delta else None

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor | None = None
        if self.lora_A is not None and self.lora_B is not None:
            a = self.lora_A.weight
            out = self.lora_B(self.lora_A(self.dropout(x).to(a.dtype)))
            if self.scale != 1.0:
                out = out * self.scale
        if self.diff is not None:
            d = torch.nn.functional.linear(x.to(self.diff.dtype), self.diff)
            out = d if out is None else out + d
        if self.diff_b is not None:
            out = self.diff_b.expand(*x.shape[:-1], -1) if out is None else out + self.diff_b
        assert out is not None
        return out

    def delta_weight(self) -> tuple[Tensor | None, Tensor | None]:
        """(dW (out, in), db (out,)) in float32: what merging adds to the layer."""
        dw = None
        if self.lora_A is not None and self.lora_B is not None:
            dw = self.scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())
        if self.diff is not None:
            dw = self.diff.float() if dw is None else dw + self.diff.float()
        db = self.diff_b.float() if self.diff_b is not None else None
        return dw, db


class LoRASlot(nn.Module):
    """The adapters of one linear layer: ``adapters[name][slice]``; output (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, slices: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.slices = in_features, out_features, slices
        self.adapters = nn.ModuleDict()
        self.enabled = True

    @property
    def rows(self) -> int:
        return self.out_features // self.slices

    def add(self, adapter: str, index: int, part: LoRAPart) -> None:
        if adapter not in self.adapters:
            self.adapters[adapter] = nn.ModuleDict()
        cast(nn.ModuleDict, self.adapters[adapter])[str(index)] = part

    def forward(self, x: Tensor) -> Tensor | None:
        pieces: list[Tensor | None] = [None] * self.slices
        for parts in self.adapters.values():
            for key, part in cast(nn.ModuleDict, parts).items():
                i = int(key)
                d = cast(LoRAPart, part)(x)
                pieces[i] = d if pieces[i] is None else pieces[i] + d
        if all(p is None for p in pieces):
            return None
        if self.slices == 1:
            return pieces[0]
        ref = next(p for p in pieces if p is not None)
        zeros = ref.new_zeros(*ref.shape[:-1], self.rows)
        return torch.cat([p if p is not None else zeros for p in pieces], dim=-1)


def _lora_hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
    slot = cast(LoRASlot, module.lora)
    if not slot.enabled:
        return output
    delta = slot(args[0])
    return output if delta is None else output + delta.to(output.dtype)


def _linear_of(model: nn.Module, path: str) -> nn.Linear:
    m = model.get_submodule(path)
    if not isinstance(m, nn.Linear):
        raise LoRAError(f"{path} is a {type(m).__name__}, not a linear layer")
    return m


def _slot(linear: nn.Linear, slices: int) -> LoRASlot:
    slot = getattr(linear, "lora", None)
    if isinstance(slot, LoRASlot):
        return slot
    slot = LoRASlot(linear.in_features, linear.out_features, slices)
    slot.to(device=linear.weight.device)
    linear.lora = slot
    linear._lora_handle = linear.register_forward_hook(_lora_hook)  # type: ignore[assignment]
    return slot


def _num_blocks(model: nn.Module) -> int:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise LoRAError(f"{type(model).__name__} has no `blocks`: LoRA targets a VideoDiT")
    return len(blocks)


def _layer(model: nn.Module, logical: str) -> tuple[str, int, int]:
    """A logical name (``blocks.3.self_attn.k`` / ``head.head``) -> (tubelet linear path, slice, slices)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", logical)
    if m:
        i, part = int(m.group(1)), m.group(2)
        if part not in BLOCK_PARTS or i >= _num_blocks(model):
            raise KeyError(logical)
        path, idx, n = BLOCK_PARTS[part]
        return f"blocks.{i}.{path}", idx, n
    if logical not in GLOBAL_PARTS:
        raise KeyError(logical)
    return GLOBAL_PARTS[logical]


def attach_lora(model: nn.Module, config: LoRAConfig, name: str = "default") -> list[nn.Parameter]:
    """Add a new (zero-effect) trainable adapter `name` to the targeted layers; returns its parameters."""
    n = _num_blocks(model)
    blocks = range(n) if config.blocks is None else config.blocks
    bad = [b for b in blocks if b >= n]
    if bad:
        raise ConfigError(f"lora.blocks: the model has {n} blocks (0..{n - 1}), got {bad}")
    logical = [f"blocks.{b}.{p}" for b in blocks for p in config.parts if p in BLOCK_PARTS]
    logical += [p for p in config.parts if p in GLOBAL_PARTS]
    params: list[nn.Parameter] = []
    for ln in logical:
        path, idx, slices = _layer(model, ln)
        linear = _linear_of(model, path)
        slot = _slot(linear, slices)
        if name in slot.adapters and str(idx) in cast(nn.ModuleDict, slot.adapters[name]):
            raise LoRAError(f"{ln} already has an adapter named {name!r}")
        part = LoRAPart(linear.in_features, slot.rows, config.rank, config.scale, config.dropout)
        part.to(device=linear.weight.device)
        slot.add(name, idx, part)
        params.extend(part.parameters())
    return params


def _slots(model: nn.Module) -> list[tuple[str, nn.Linear, LoRASlot]]:
    return [
        (path, m, cast(LoRASlot, m.lora))
        for path, m in model.named_modules()
        if isinstance(m, nn.Linear) and isinstance(getattr(m, "lora", None), LoRASlot)
    ]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every LoRA parameter of `model` (what a LoRA run trains)."""
    return [p for _, _, slot in _slots(model) for p in slot.parameters()]


def detach_lora(model: nn.Module, name: str | None = None) -> None:
    """Remove adapter `name` (None: every adapter) from `model`; the base weights are as before."""
    for _, linear, slot in _slots(model):
        for a in list(slot.adapters):
            if name is None or a == name:
                del slot.adapters[a]
        if not slot.adapters:
            cast(Any, linear)._lora_handle.remove()
            del linear._lora_handle
            del linear.lora


@torch.no_grad()
def merge_lora(model: nn.Module, name: str | None = None) -> None:
    """Fold adapter `name` (None: all) into the layers' weights (in float32) and remove it."""
    for _, linear, slot in _slots(model):
        rows = slot.rows
        for a, parts in list(slot.adapters.items()):
            if name is not None and a != name:
                continue
            for key, part in cast(nn.ModuleDict, parts).items():
                i = int(key)
                dw, db = cast(LoRAPart, part).delta_weight()
                w = linear.weight[i * rows : (i + 1) * rows]
                if dw is not None:
                    w.copy_((w.float() + dw.to(w.device)).to(w.dtype))
                if db is not None:
                    if linear.bias is None:
                        raise LoRAError("a bias delta on a layer without a bias cannot be merged")
                    b = linear.bias[i * rows : (i + 1) * rows]
                    b.copy_((b.float() + db.to(b.device)).to(b.dtype))
    detach_lora(model, name)


# ---- files ---------------------------------------------------------------------------------


def _diffusers_name(logical: str) -> str:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", logical)
    if m:
        return f"blocks.{m.group(1)}.{_DIFFUSERS_BLOCK[m.group(2)]}"
    return _DIFFUSERS_GLOBAL[logical]


def _logical_of(model: nn.Module, path: str, index: int) -> str:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", path)
    table = BLOCK_PARTS if m else GLOBAL_PARTS
    inner = m.group(2) if m else path
    for part, (p, i, _) in table.items():
        if p == inner and i == index:
            return f"blocks.{m.group(1)}.{part}" if m else part
    raise LoRAError(f"{path} (slice {index}) has no name in the LoRA formats")


def lora_state(model: nn.Module, name: str = "default") -> dict[str, LoRAPart]:
    """Adapter `name` of `model` by logical layer name (``blocks.0.self_attn.q`` ...)."""
    out: dict[str, LoRAPart] = {}
    for path, _, slot in _slots(model):
        parts = cast(nn.ModuleDict, slot.adapters[name]) if name in slot.adapters else nn.ModuleDict()
        for key, part in parts.items():
            out[_logical_of(model, path, int(key))] = cast(LoRAPart, part)
    return out


def lora_file(model: nn.Module, name: str = "default") -> LoRAFile:
    """Adapter `name` of `model` as a `LoRAFile` (float32 tensors, alpha = scale * rank)."""
    parts = lora_state(model, name)
    if not parts:
        raise LoRAError(f"the model has no LoRA adapter named {name!r} to save")
    layers: dict[str, dict[str, Tensor]] = {}
    for logical, part in parts.items():
        t: dict[str, Tensor] = {}
        if part.lora_A is not None and part.lora_B is not None:
            t["A"] = part.lora_A.weight.detach().float().cpu()
            t["B"] = part.lora_B.weight.detach().float().cpu()
            t["alpha"] = torch.tensor(part.scale * t["A"].shape[0])
        if part.diff is not None:
            t["diff"] = part.diff.detach().float().cpu()
        if part.diff_b is not None:
            t["diff_b"] = part.diff_b.detach().float().cpu()
        layers[logical] = t
    return LoRAFile(layers, "tubelet")


def write_lora_file(
    lf: LoRAFile, path: str | Path, *, fmt: str = "diffusers", metadata: dict[str, Any] | None = None
) -> Path:
    """Write a `LoRAFile` as one safetensors file in `fmt` (see the module doc)."""
    from tubelet.models.hub import save_state_dict

    if fmt not in LORA_FORMATS:
        raise ConfigError(f"unknown LoRA format {fmt!r}; choose one of {', '.join(LORA_FORMATS)}")
    tensors: dict[str, Tensor] = {}
    for logical, t in sorted(lf.layers.items(), key=lambda kv: _natural(kv[0])):
        key = (
            ("transformer." + _diffusers_name(logical))
            if fmt == "diffusers"
            else ("diffusion_model." + logical)
        )
        if "A" in t:
            a, b = t["A"].float(), t["B"].float()
            scale = float(t["alpha"].reshape(())) / a.shape[0] if "alpha" in t else 1.0
            tensors[key + ".lora_A.weight"] = a
            # PEFT files mean alpha = rank: fold the scale into B. diffusers reads no alpha of the
            # layers outside the blocks in Wan files either: fold it there too.
            if fmt == "diffusers" or not logical.startswith("blocks."):
                tensors[key + ".lora_B.weight"] = b * scale
            else:
                tensors[key + ".lora_B.weight"] = b
                tensors[key + ".alpha"] = torch.tensor(scale * a.shape[0])
        if "diff" in t:
            tensors[key + ".diff"] = t["diff"].float()
        if "diff_b" in t:
            tensors[key + (".lora_B.bias" if fmt == "diffusers" else ".diff_b")] = t["diff_b"].float()
    ranks = sorted({t["A"].shape[0] for t in lf.layers.values() if "A" in t})
    meta = {"format": fmt, "tubelet": json.dumps({"ranks": ranks, **(metadata or {})})}
    out = Path(path)
    save_state_dict(tensors, out, metadata=meta)
    return out


def save_lora(
    model: nn.Module,
    path: str | Path,
    *,
    name: str = "default",
    fmt: str = "diffusers",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write adapter `name` of `model` to one safetensors file in `fmt` (see the module doc)."""
    if fmt not in LORA_FORMATS:
        raise ConfigError(f"unknown LoRA format {fmt!r}; choose one of {', '.join(LORA_FORMATS)}")
    return write_lora_file(lora_file(model, name), path, fmt=fmt, metadata=metadata)


# the files of a LoRA directory (what a LoRA run exports)
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for
COMFYUI_FILE = "lora_comfyui.safetensors"


def export_lora_dir(model: nn.Module, out: str | Path, *, name: str = "default", **info: Any) -> Path:
    """A LoRA directory: config.json + the adapter in the diffusers and in the ComfyUI format."""
    from tubelet.core.files import atomic_write_json

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    lf = lora_file(model, name)
    write_lora_file(lf, d / DIFFUSERS_FILE, fmt="diffusers", metadata=info)
    write_lora_file(lf, d / COMFYUI_FILE, fmt="comfyui", metadata=info)
    atomic_write_json(
        d / "config.json",
        {"_class": "LoRA", "files": {"diffusers": DIFFUSERS_FILE, "comfyui": COMFYUI_FILE},
         "layers": len(lf.layers), "ranks": sorted({t["A"].shape[0] for t in lf.layers.values() if "A" in t}),
         **info},
    )  # fmt: skip
    return d


def lora_path(path: str | Path) -> Path:
    """A LoRA file, or the diffusers-format file of a LoRA directory (`export_lora_dir`)."""
    p = Path(path)
    if p.is_dir():
        if (p / DIFFUSERS_FILE).is_file():
            return p / DIFFUSERS_FILE
        files = sorted(p.glob("*.safetensors"))
        if len(files) == 1:
            return files[0]
        raise LoRAError(
            f"{p}: a LoRA directory holds {DIFFUSERS_FILE} (or one .safetensors file); found "
            f"{len(files)} .safetensors files"
        )
    return p


def convert_lora_file(
    src: str | Path, dst: str | Path, *, fmt: str, num_blocks: int | None = None
) -> LoRAFile:
    """Read a LoRA in any supported format and write it in `fmt` (diffusers | comfyui)."""
    lf = read_lora_file(src, num_blocks)
    write_lora_file(lf, dst, fmt=fmt)
    return lf


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


@dataclass
class LoRAFile:
    """A LoRA read from a file: per logical layer, its tensors (float32) and alpha."""

    layers: dict[
        str, dict[str, Tensor]
    ]  # logical name -> {"A", "B", "alpha", "diff", "diff_b"} (present ones)
    source_format: str  # diffusers | comfyui | kohya | bare

    @property
    def rank(self) -> int | None:
        ranks = {t["A"].shape[0] for t in self.layers.values() if "A" in t}
        return ranks.pop() if len(ranks) == 1 else None


_SUFFIXES = (
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".lora_down.weight", "A"),
    (".lora_up.weight", "B"),
    (".lora_B.bias", "diff_b"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
    (".alpha", "alpha"),
)
_PREFIXES = (
    ("base_model.model.", "diffusers"),
    ("transformer.", "diffusers"),
    ("diffusion_model.", "comfyui"),
    ("model.diffusion_model.", "comfyui"),
    ("lora_unet_", "kohya"),
    ("lora_transformer_", "kohya"),
)


def _name_table(num_blocks: int) -> dict[str, str]:
    """Every spelling of every layer (Wan and diffusers names, dotted and kohya-flat) -> logical name."""
    table: dict[str, str] = {}
    for logical in [f"blocks.{i}.{p}" for i in range(num_blocks) for p in BLOCK_PARTS] + list(GLOBAL_PARTS):
        for spelling in (logical, _diffusers_name(logical)):
            table[spelling] = logical
            table[spelling.replace(".", "_")] = logical
    return table


def read_lora_file(path: str | Path, num_blocks: int | None = None) -> LoRAFile:
    """Read a LoRA safetensors file in any supported format (see the module doc) for a DiT of `num_blocks`
    (None: as many as the file names).

    Raises LoRAError listing the keys that name no layer, and for incomplete pairs.
    """
    from tubelet.models.hub import load_safetensors

    p = lora_path(path)
    if not p.is_file():
        raise LoRAError(f"{p}: LoRA file not found" if not p.exists() else f"{p}: not a file")
    if p.suffix != ".safetensors":
        raise LoRAError(f"{p}: LoRA files are read as .safetensors only (pickled weights are never loaded)")
    try:
        sd = load_safetensors(p)
    except (ModelLoadError, OSError, ValueError) as e:
        raise LoRAError(f"{p}: not a readable safetensors file ({e})") from None
    if not sd:
        raise LoRAError(f"{p}: holds no tensors")
    if num_blocks is None:
        found = [int(m.group(1)) for k in sd for m in [re.search(r"blocks[._](\d+)[._]", k)] if m]
        num_blocks = max(found) + 1 if found else 0
    table = _name_table(num_blocks)
    layers: dict[str, dict[str, Tensor]] = {}
    unknown: list[str] = []
    formats: set[str] = set()
    for key, value in sd.items():
        rest, fmt = key, "bare"
        for prefix, f in _PREFIXES:
            if rest.startswith(prefix):
                rest, fmt = rest[len(prefix) :], f
                break
        kind = None
        for suffix, k in _SUFFIXES:
            if rest.endswith(suffix):
                rest, kind = rest[: -len(suffix)], k
                break
        if fmt == "kohya" and rest.startswith("transformer_"):
            rest = rest[len("transformer_") :]
        logical = table.get(rest)
        if kind is None or logical is None:
            unknown.append(key)
            continue
        formats.add(fmt)
        slot = layers.setdefault(logical, {})
        if kind in slot:
            raise LoRAError(f"{p}: layer {logical} appears twice (key {key!r})")
        slot[kind] = value.float()
    if unknown:
        more = f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""
        raise LoRAError(
            f"{p}: {len(unknown)} key(s) name no layer of this model{more}: {', '.join(unknown[:8])}. "
            "A LoRA must be for this model family (a Wan2.1-layout transformer with "
            f"{num_blocks} blocks); nothing was loaded"
        )
    for logical, t in layers.items():
        if ("A" in t) != ("B" in t):
            raise LoRAError(f"{p}: layer {logical} has lora_{'A' if 'A' in t else 'B'} without its pair")
        if "alpha" in t and "A" not in t:
            raise LoRAError(f"{p}: layer {logical} has an alpha but no lora_A / lora_B")
        if "A" in t and t["A"].shape[0] != t["B"].shape[1]:
            raise LoRAError(
                f"{p}: layer {logical}: lora_A has rank {t['A'].shape[0]} but lora_B has {t['B'].shape[1]}"
            )
    fmt = formats.pop() if len(formats) == 1 else "mixed"
    return LoRAFile(layers, fmt)


def load_lora(model: nn.Module, path: str | Path, *, scale: float = 1.0, name: str | None = None) -> str:
    """Attach the LoRA in `path` (any supported format) to `model` as adapter `name`, times `scale`.

    Returns the adapter's name (default: the file's stem, made unique). Checks every shape before it
    changes anything.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise LoRAError(f"LoRA scale must be a finite number, got {scale!r}")
    path = lora_path(path)
    lf = read_lora_file(path, _num_blocks(model))
    taken = {a for _, _, slot in _slots(model) for a in slot.adapters}
    if name is None:
        base = re.sub(r"\W", "_", Path(path).stem) or "lora"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
    elif name in taken:
        raise LoRAError(f"the model already has a LoRA adapter named {name!r}")
    plan: list[tuple[nn.Linear, int, int, LoRAPart]] = []
    for logical, t in sorted(lf.layers.items(), key=lambda kv: _natural(kv[0])):
        lpath, idx, slices = _layer(model, logical)
        linear = _linear_of(model, lpath)
        rows, cols = linear.out_features // slices, linear.in_features
        rank = t["A"].shape[0] if "A" in t else 0
        want = {"A": (rank, cols), "B": (rows, rank), "diff": (rows, cols), "diff_b": (rows,), "alpha": ()}
        for field_, v in t.items():
            if field_ == "alpha":
                if v.numel() != 1:
                    raise LoRAError(
                        f"{path}: layer {logical}: alpha must be one number, got shape {tuple(v.shape)}"
                    )
                continue
            if tuple(v.shape) != want[field_]:
                raise LoRAError(
                    f"{path}: layer {logical}: {field_} has shape {tuple(v.shape)}, this model needs {want[field_]}"
                )
        alpha = float(t["alpha"].reshape(())) if "alpha" in t else float(rank or 1)
        factor = scale * (alpha / rank if rank else 1.0)
        part = LoRAPart(cols, rows, rank, factor, weight_delta="diff" in t, bias_delta="diff_b" in t)
        with torch.no_grad():
            if part.lora_A is not None and part.lora_B is not None:
                part.lora_A.weight.copy_(t["A"])
                part.lora_B.weight.copy_(t["B"])
            if part.diff is not None:
                part.diff.copy_(t["diff"] * scale)
            if part.diff_b is not None:
                part.diff_b.copy_(t["diff_b"] * scale)
        part.requires_grad_(False)
        plan.append((linear, idx, slices, part))
    for linear, idx, slices, part in plan:
        part.to(device=linear.weight.device, dtype=linear.weight.dtype)
        _slot(linear, slices).add(name, idx, part)
    return name


def merge_lora_dir(
    model_dir: str | Path,
    loras: Sequence[tuple[str | Path, float]],
    out: str | Path,
    *,
    log: Any = None,
) -> Path:
    """A copy of the pipeline (or transformer) directory `model_dir` with `loras` folded into its transformer.

    Every other component is copied as it is. Written to a staging folder next to `out` and moved
    into place when complete; an existing non-empty `out` is refused.
    """
    import shutil
    import uuid

    from tubelet.core.files import check_output_location
    from tubelet.models.dit import VideoDiT

    src, dst = Path(model_dir), Path(out)
    if not loras:
        raise LoRAError("nothing to merge: name at least one LoRA")
    if not src.is_dir():
        raise LoRAError(f"{src}: model directory not found")
    tdir_name = "transformer" if (src / "transformer").is_dir() else None
    tsrc = src / tdir_name if tdir_name else src
    if not (tsrc / "config.json").is_file():
        raise LoRAError(
            f"{src}: not a tubelet pipeline or transformer directory (no transformer/config.json)"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise LoRAError(f"{dst}: exists and is not empty; choose a new --out")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise LoRAError(f"{dst}: the output must not be inside the model directory")
    check_output_location(dst, kind="folder", what="merged model directory")
    dit = VideoDiT.from_pretrained(tsrc)
    dtype = next(dit.parameters()).dtype
    dit.float()
    for path, scale in loras:
        load_lora(dit, path, scale=scale)
        if log is not None:
            log(f"merged {lora_path(path)} (scale {scale:g})")
    merge_lora(dit)
    dit.to(dtype)
    stage = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if tdir_name:
            shutil.copytree(src, stage, ignore=lambda d, names: ["transformer"] if Path(d) == src else [])
            dit.save_pretrained(stage / "transformer")
        else:
            dit.save_pretrained(stage)
        if dst.exists():
            dst.rmdir()
        stage.rename(dst)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return dst
