"""Spatially tiled VAE decoding (`tubelet.models.vae_tiling`): exact when one tile holds the frame,
blend weights that sum to one, the convolutional path nearly exact with a wide overlap, no seams on a
smooth gradient, memory bounded by the tile, and the switches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tubelet.errors import ConfigError
from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE
from tubelet.models.vae_tiling import VAETiling, _ramp, _starts, decode_tiled


def _gradient(t: int, h: int, w: int) -> torch.Tensor:
    yy = torch.linspace(-0.8, 0.8, h)[:, None].expand(h, w)
    xx = torch.linspace(-0.8, 0.8, w)[None, :].expand(h, w)
    return torch.stack([yy, xx, (yy + xx) / 2])[None, :, None].expand(1, 3, t, h, w).contiguous()


@pytest.fixture(scope="module")
def vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    return CausalVideoVAE(VAE_PRESETS["tiny"]).eval()


def test_blend_weights_cover_every_pixel_once() -> None:
    for size, tile, step in [(48, 32, 24), (40, 16, 8), (16, 32, 24), (33, 8, 6)]:
        starts = _starts(size, tile, step)
        assert starts[0] == 0 and min(size, starts[-1] + tile) == size
        total = torch.zeros(size)
        for i, a in enumerate(starts):
            n = min(tile, size - a)
            lo = starts[i - 1] + tile - a if i else 0
            hi = a + n - starts[i + 1] if i + 1 < len(starts) else 0
            total[a : a + n] += _ramp(n, lo, hi, torch.device("cpu"))
        assert torch.allclose(total, torch.ones(size)), (size, tile, total)


def test_one_tile_is_the_plain_decode_and_bad_settings_are_errors(vae: CausalVideoVAE) -> None:
    with torch.no_grad():
        z = vae.encode(_gradient(5, 64, 64))  # 8 x 8 latents
        assert torch.equal(decode_tiled(vae, z, VAETiling(8, 2)), vae.decode(z))
    for bad in [dict(tile=2), dict(tile=16, overlap=9), dict(tile=16, overlap=-1), dict(tile=8.5)]:
        with pytest.raises(ConfigError):
            VAETiling(**bad)  # type: ignore[arg-type]


def test_convolutions_tile_nearly_exactly_and_without_seams(vae: CausalVideoVAE) -> None:
    """With the decoder's frame attention taken out (tiles cannot see the whole frame, see the module
    docstring), tiles of 16 latents overlapping by 8 reproduce the whole-frame decode of a smooth
    gradient: under one level of 255 on average in every pixel column (no visible seam)."""
    torch.manual_seed(0)
    vae = CausalVideoVAE(VAE_PRESETS["tiny"]).eval()
    vae.decoder.mid.attn = nn.Identity()
    with torch.no_grad():
        z = vae.encode(_gradient(5, 128, 192))  # 16 x 24 latents: tiles at columns 0 and 8
        full = vae.decode(z)
        tiled = decode_tiled(vae, z, VAETiling(16, 8))
        rough = decode_tiled(vae, z, VAETiling(8, 4))  # overlaps narrower than the receptive field
    err = (tiled - full).abs()
    assert tiled.shape == full.shape
    assert float(err.mean()) < 1e-3 and float(err.max()) < 0.05, (float(err.mean()), float(err.max()))
    cols = err.mean(dim=(0, 1, 2, 3))  # error per pixel column, in [-1, 1] units (1/127.5 = a level)
    assert float(cols.max()) < 1 / 127.5, cols.max()
    assert float((rough - full).abs().mean()) > 5 * float(err.mean())  # the overlap is what makes it exact


def test_pipeline_and_cli_switches(tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tubelet.cli import main
    from tubelet.pipelines import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(tiny_model_dir)
    kw = {"seed": 2, "num_inference_steps": 2, "height": 64, "width": 96, "progress": False}
    whole = pipe("a red circle moving right", **kw)
    tiled = pipe.enable_vae_tiling(4, 2)("a red circle moving right", **kw)  # 8 x 12 latents: 3 x 5 tiles
    pipe.disable_vae_tiling()
    assert tiled.frames.shape == whole.frames.shape and torch.equal(tiled.latents, whole.latents)
    assert not (tiled.frames == whole.frames).all()  # decoded another way, from the same latents
    with pytest.raises(SystemExit) as e:
        main(["generate", "a red circle moving right", "--model", str(tiny_model_dir), "--vae-tile", "3",
              "--no-progress", "--out", str(tmp_path / "x.mp4")])  # fmt: skip
    assert e.value.code == 1 and not (tmp_path / "x.mp4").exists()
