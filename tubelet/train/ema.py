"""Exponential moving average of trainable parameters (kept in float32, same sharding as the model)."""

from __future__ import annotations

import typing

import torch
from torch import nn


def _full(t: torch.Tensor) -> torch.Tensor:
    """Gather a (possibly FSDP2-sharded DTensor) tensor into a plain full CPU tensor."""
    full = getattr(t, "full_tensor", None)
    return (full() if callable(full) else t).detach().cpu()


class EMA:
    """`shadow = decay * shadow + (1 - decay) * param`, with the DiT-style warm-up of the decay.

    The effective decay is min(decay, (1 + n) / (10 + n)) after n updates, so early EMA weights
    are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone().float() for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = [p for p in model.parameters() if p.requires_grad]
        for s, p in zip(self.shadow, params, strict=True):
            s.lerp_(p.detach().float(), 1.0 - d)

    def state_dict(self, prefix_strip: str = "") -> dict[str, torch.Tensor]:
        """Full (gathered) float32 tensors keyed like the model's parameters."""
        out = {}
        for n, s in zip(self.names, self.shadow, strict=True):
            out[_strip(n, prefix_strip)] = _full(s)
        return out

    def sharded_state_dict(self, prefix_strip: str = "") -> dict[str, torch.Tensor]:
        """The live shadow tensors (DTensor shards under FSDP2), keyed like `state_dict`: what
        `torch.distributed.checkpoint` saves from, and loads into in place."""
        return {_strip(n, prefix_strip): s for n, s in zip(self.names, self.shadow, strict=True)}

    @torch.no_grad()
    def load_state_dict(
        self, state: dict[str, torch.Tensor], num_updates: int, prefix_strip: str = ""
    ) -> None:
        for n, s in zip(self.names, self.shadow, strict=True):
            src = state[_strip(n, prefix_strip)]
            if hasattr(s, "full_tensor"):  # sharded: take this rank's shard
                from torch.distributed.tensor import DTensor, distribute_tensor

                d = typing.cast(DTensor, s)  # the shadow of an FSDP2 parameter is a DTensor
                s.copy_(distribute_tensor(src.to(s.device), d.device_mesh, d.placements))
            else:
                s.copy_(src)
        self.num_updates = num_updates


def _strip(name: str, prefix: str) -> str:
    for p in ("module.", "_orig_mod.", prefix):
        if p and name.startswith(p):
            name = name[len(p) :]
    return name.replace("._orig_mod", "").replace("._checkpoint_wrapped_module", "")
