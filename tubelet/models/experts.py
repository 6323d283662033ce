"""Two denoisers switched by noise level: Wan2.2 A14B's mixture of experts.

Wan2.2 A14B pairs a *high-noise* expert (the early steps: layout and motion) with a *low-noise* one
(the late steps: detail), two VideoDiTs of the same architecture. A step whose timestep is at or
above ``boundary`` (in the DiT's time, [0, 1000]; diffusers: ``boundary_ratio * num_train_timesteps``,
0.875 for Wan2.2 T2V) runs the high-noise expert, every later step the low-noise one. Each expert is
called as a module (hooks, LoRA, quantization and offload apply to each), and only one runs per call.
In a pipeline directory they are ``transformer/`` (high noise) and ``transformer_2/`` (low noise),
the boundary is the pipeline config's ``boundary_ratio``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tubelet.errors import ConfigError


class TwoExpertDiT(nn.Module):
    """`model(x, t, cond)` by `high` where max(t) >= `boundary`, else by `low` (module doc)."""

    def __init__(self, high: nn.Module, low: nn.Module, boundary: float) -> None:
        super().__init__()
        if not 0.0 <= boundary <= 1000.0:
            raise ConfigError(f"the expert boundary must be a timestep in [0, 1000], got {boundary}")
        a, b = getattr(high, "config", None), getattr(low, "config", None)
        for key in ("in_channels", "out_channels", "patch_size", "text_dim"):
            if getattr(a, key, None) != getattr(b, key, None):
                raise ConfigError(
                    f"the two experts differ in {key} ({getattr(a, key, None)} vs {getattr(b, key, None)})"
                )
        self.high = high
        self.low = low
        self.boundary = float(boundary)

    @property
    def config(self) -> Any:
        """The high-noise expert's config (both share the sizes a pipeline reads)."""
        return self.high.config

    @property
    def experts(self) -> list[nn.Module]:
        return [self.high, self.low]

    def expert_for(self, t: Tensor | float) -> str:
        """ "high" or "low": which expert runs at timestep(s) `t` (the noisiest entry decides)."""
        value = float(torch.as_tensor(t).max())
        return "high" if value >= self.boundary else "low"

    def forward(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        expert = self.high if self.expert_for(t) == "high" else self.low
        return expert(x, t, cond)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
