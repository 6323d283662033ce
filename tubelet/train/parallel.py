"""Distributed set-up and parallelism applied to a built model, from outside it.

Launch with PyTorch's own launcher, e.g. ``torchrun --nproc_per_node 8 -m tubelet train ...``.
Nothing here is needed for a single process: ``init_distributed()`` then returns a trivial
context and ``apply_parallelism`` returns the model unchanged.

Order of wrappers (torchtitan's order, each optional):
  1. activation checkpointing per block (`apply_activation_checkpointing`: the block's class gets a
     forward that runs under non-reentrant ``torch.utils.checkpoint``; names and state dicts unchanged)
  2. ``torch.compile`` per block (keeps graph breaks local and compile time short)
  3. FSDP2 ``fully_shard`` per transformer block, then on the root (so each block's
     parameters are gathered just in time and freed after), with a ``MixedPrecisionPolicy``
     (bf16 parameters for compute and communication, fp32 gradient reduction and master weights)
     when the run trains in bf16; or DDP on the root.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from tubelet.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, local_rank=local, world_size=world, device=dev)


def shutdown_distributed(wait: bool = True) -> None:
    """Leave the process group, after freeing what still holds it.

    FSDP2 modules, their device mesh and pending gloo work objects sit in reference cycles, so they
    would otherwise be freed during interpreter finalisation, after the group is destroyed, where
    gloo's threads can abort the process ("terminate called without an active exception": rare, but
    seen in this project's CI; pytorch/pytorch#179291 describes the same teardown race).
    `wait=False` skips the closing barrier (after an error, when the other ranks may never arrive).
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if wait:
            dist.barrier()  # no rank tears down while another still talks to it
        dist.destroy_process_group()
    gc.collect()


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks a model declares (the checkpoint / compile / FSDP units).

    A model lists the names of its `nn.ModuleList`s of repeated blocks in the class attribute
    `repeated_blocks` (e.g. `VideoDiT.repeated_blocks = ("blocks",)`); a model without it has none.
    """
    out: list[nn.Module] = []
    for name in getattr(model, "repeated_blocks", ()):
        blocks = getattr(model, name)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(
                f"{type(model).__name__}.{name} is declared in repeated_blocks but is not a ModuleList"
            )
        out.extend(blocks)
    return out


class _Checkpointed:
    """Mixin: the module's forward runs under activation checkpointing while gradients are on."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        run = super().forward  # type: ignore[misc]
        if torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        return run(*args, **kwargs)


_CHECKPOINTED: dict[type, type] = {}


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute each declared block's activations in the backward pass instead of storing them.

    Applied from outside: each block's class is swapped for a subclass whose forward wraps the
    original in `torch.utils.checkpoint` (parameter names, state dicts and hooks unchanged).
    Idempotent; returns `model`.
    """
    for block in blocks_of(model):
        cls = type(block)
        if issubclass(cls, _Checkpointed):
            continue
        if cls not in _CHECKPOINTED:
            _CHECKPOINTED[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {})
        block.__class__ = _CHECKPOINTED[cls]
    return model


def apply_parallelism(
    model: nn.Module,
    info: DistInfo,
    *,
    mode: str = "none",
    compile: bool = False,
    activation_checkpointing: bool = False,
    submodules: list[nn.Module] | None = None,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Wrap `model` for training. `submodules` are the modules whose declared blocks get
    checkpointed / compiled / sharded (default: `model` itself).

    mode: "none" (single process or replicated without sync: only valid with world size 1),
    "ddp" (replicated, gradients all-reduced) or "fsdp" (FSDP2 fully_shard per block + root).
    param_dtype (fsdp): FSDP2's `MixedPrecisionPolicy` — parameters are all-gathered and computed
    in this dtype (e.g. bfloat16: half the communication), gradients reduced in float32, and the
    sharded master weights and optimizer state stay float32 (torchtitan's policy).
    """
    if mode not in ("none", "ddp", "fsdp"):
        raise ValueError(f"parallel mode must be none, ddp or fsdp, got {mode!r}")
    if info.distributed and mode == "none":
        mode = "ddp"
    targets = submodules if submodules is not None else [model]
    if activation_checkpointing:
        for sub in targets:
            apply_activation_checkpointing(sub)
    if compile:
        for sub in targets:
            for block in blocks_of(sub):
                block.compile()
    if mode == "ddp" and info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not info.distributed:
            dist_ok = dist.is_initialized()
            if not dist_ok:
                raise ValueError("--parallel fsdp needs torchrun (WORLD_SIZE > 1)")
        mp = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype is not None else None
        )
        for sub in targets:
            for block in blocks_of(sub):
                fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    return model


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Average a python float over ranks (for logging)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size
