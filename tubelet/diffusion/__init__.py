"""The conditioning object, the rectified-flow objective and the samplers (plain functions)."""

from __future__ import annotations

from tubelet.diffusion.cond import Boxes, Cond
from tubelet.diffusion.flow import (
    FlowConfig,
    drop_captions,
    effective_shift,
    flow_matching_loss,
    sample_known_frames,
    sample_timesteps,
)
from tubelet.diffusion.sampling import SAMPLERS, flow_schedule, make_velocity_fn, sdedit_start

__all__ = [
    "SAMPLERS",
    "Boxes",
    "Cond",
    "FlowConfig",
    "drop_captions",
    "effective_shift",
    "flow_matching_loss",
    "flow_schedule",
    "make_velocity_fn",
    "sample_known_frames",
    "sample_timesteps",
    "sdedit_start",
]
