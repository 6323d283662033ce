"""Clip values: uint8 pixels in 0..255 <-> the model's float range [-1, 1].

Element-wise only: the caller arranges the layout (uint8 frames are (T, H, W, 3) in files, videos
(B, 3, T, H, W) in the models). torch is imported on use, so importing `tubelet.media` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["frames_to_unit", "unit_to_frames"]


def frames_to_unit(frames: torch.Tensor) -> torch.Tensor:
    """Pixel values (uint8, or float holding 0..255; any shape) -> float32 `x / 127.5 - 1`, in [-1, 1].

    Returns a new tensor (one allocation; `frames` is left unchanged), on `frames`' device.
    """
    import torch

    return frames.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def unit_to_frames(video: torch.Tensor) -> torch.Tensor:
    """Float values in [-1, 1] (any shape) -> uint8 `round((x + 1) * 127.5)` clamped to 0..255."""
    import torch

    return ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
