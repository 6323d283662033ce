"""uint8 pixels <-> [-1, 1] (`tubelet.media.frames`): the exact arithmetic, layout kept, input untouched."""

from __future__ import annotations

import torch

from tubelet.media import frames_to_unit, unit_to_frames


def test_frames_to_unit_exact() -> None:
    u8 = torch.arange(256, dtype=torch.uint8).reshape(4, 8, 8).expand(2, 4, 8, 8)  # (B, T, H, W)-like
    x = frames_to_unit(u8)
    assert x.dtype == torch.float32 and x.shape == u8.shape
    assert torch.equal(x, u8.float() / 127.5 - 1)
    assert x.min() == -1 and x.max() == 1
    f = u8.float()
    y = frames_to_unit(f)
    assert y is not f and torch.equal(f, u8.float())  # a new tensor; the input is not changed


def test_unit_to_frames_exact_and_round_trip() -> None:
    v = torch.linspace(-1.2, 1.2, 3 * 5 * 7 * 9).reshape(3, 5, 7, 9)  # (3, T, H, W), some out of range
    out = unit_to_frames(v)
    assert out.dtype == torch.uint8 and out.shape == v.shape
    assert torch.equal(out, ((v + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    u8 = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(unit_to_frames(frames_to_unit(u8)), u8)
