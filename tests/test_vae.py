"""CausalVideoVAE: numerical equality with diffusers' AutoencoderKLWan, conversion errors,
shapes, causality, streaming cache, save/load and gradients. Tiny random models, CPU."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tubelet.config import config_from_dict, config_to_dict
from tubelet.convert.wan_vae import convert_vae_state_dict, vae_config_from_diffusers
from tubelet.errors import ConfigError, ConversionError
from tubelet.models.hub import assign_state_dict, load_safetensors
from tubelet.models.vae import VAE_PRESETS, CausalCache, CausalVideoVAE, VAEConfig, gaussian_kl
from tubelet.models.vae_layers import FrameAttention


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (relative to the reference's largest magnitude)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max()).item()


def tiny(seed: int = 0, **overrides) -> CausalVideoVAE:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(VAE_PRESETS["tiny"], **overrides)
    model = CausalVideoVAE(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def video(b: int, f: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1


# ----------------------------------------------------------------------------- diffusers reference


@pytest.fixture(scope="module")
def wan_pair(tmp_path_factory):
    """A random small AutoencoderKLWan (Wan2.1 structure) and the CausalVideoVAE converted from
    its saved config.json + safetensors."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 2.0, 0.5, 1.0],
    ).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
        ref.decoder.conv_out.weight.mul_(0.3)  # keep outputs inside [-1, 1] so diffusers' clamp never bites
    d = tmp_path_factory.mktemp("wan_vae")
    ref.save_pretrained(d, safe_serialization=True)
    raw_cfg = json.loads((d / "config.json").read_text())
    cfg = vae_config_from_diffusers(raw_cfg)
    sd = load_safetensors(d / "diffusion_pytorch_model.safetensors")
    ours = CausalVideoVAE(cfg)
    assign_state_dict(ours, convert_vae_state_dict(sd, cfg), "converted")
    return ref, ours.eval(), raw_cfg, sd


SHAPES = [(1, 16, 16), (5, 16, 16), (9, 16, 32), (13, 8, 24)]


@pytest.mark.parametrize("frames,h,w", SHAPES)
def test_encode_matches_diffusers(wan_pair, frames, h, w):
    ref, ours, _, _ = wan_pair
    x = video(2, frames, h, w)
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        for chunked in (True, False):
            mean, logvar = ours.encode_posterior(x, chunked=chunked)
            assert mean.shape == (2, 4, 1 + (frames - 1) // 4, h // 8, w // 8)
            assert rel_err(mean, dist.mean) <= 1e-5
            assert rel_err(logvar, dist.logvar) <= 1e-5
        assert torch.equal(ours.encode(x), ours.encode_posterior(x)[0])


@pytest.mark.parametrize("frames,h,w", SHAPES)
def test_decode_matches_diffusers(wan_pair, frames, h, w):
    ref, ours, _, _ = wan_pair
    t = 1 + (frames - 1) // 4
    z = torch.randn(2, 4, t, h // 8, w // 8, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        expected = ref.decode(z).sample  # clamped to [-1, 1] by diffusers
        for chunked in (True, False):
            out = ours.decode(z, chunked=chunked)
            assert out.shape == (2, 3, frames, h, w)
            assert out.abs().max() < 1.0  # the clamp did not bite, so the comparison is exact
            assert rel_err(out, expected) <= 1e-5


def test_config_from_diffusers(wan_pair):
    _, ours, _, _ = wan_pair
    cfg = ours.config
    assert (cfg.base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks) == (8, 4, (1, 2, 4, 4), 2)
    assert cfg.temporal_downsample == (False, True, True)
    assert cfg.latents_mean == pytest.approx((0.1, -0.2, 0.3, 0.0))
    assert cfg.latents_std == pytest.approx((1.5, 2.0, 0.5, 1.0))
    # AutoencoderKLWan's defaults are the published Wan2.1 VAE.
    assert vae_config_from_diffusers({"_class_name": "AutoencoderKLWan"}) == VAE_PRESETS["wan2.1"]
    assert VAE_PRESETS["wan2.1"].latents_mean[:2] == (-0.7571, -0.7089)
    assert VAE_PRESETS["wan2.1"].latents_std[-1] == 1.9160


def test_full_size_wan21_names_convert():
    """The full Wan2.1 layout (built on the meta device: names and shapes only) converts."""
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLWan()
        cfg = vae_config_from_diffusers(dict(ref.config))
        out = convert_vae_state_dict(ref.state_dict(), cfg)
        model = CausalVideoVAE(cfg)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    n = sum(v.numel() for v in out.values())
    assert 120e6 < n < 135e6  # Wan2.1 VAE: ~127M parameters


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"is_residual": True}, "is_residual"),
        ({"patch_size": 2}, "patch_size"),
        ({"_class_name": "AutoencoderKL"}, "AutoencoderKL"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"attn_scales": [0.5]}, "attn_scales"),
        ({"scale_factor_spatial": 16}, "scale_factor_spatial"),
        ({"latents_mean": [0.0, 1.0]}, "latents_mean"),
        ({"temperal_downsample": [True]}, "temporal_downsample"),
    ],
)
def test_config_conversion_errors(wan_pair, change, needle):
    raw = {**wan_pair[2], **change}
    with pytest.raises(ConversionError, match=needle):
        vae_config_from_diffusers(raw)


def test_wan22_rejected():
    wan22 = {
        "_class_name": "AutoencoderKLWan",
        "base_dim": 160,
        "decoder_base_dim": 256,
        "z_dim": 48,
        "is_residual": True,
        "patch_size": 2,
        "in_channels": 12,
        "out_channels": 12,
        "scale_factor_spatial": 16,
        "latents_mean": [0.0] * 48,
        "latents_std": [1.0] * 48,
    }
    with pytest.raises(ConversionError, match="not supported"):
        vae_config_from_diffusers(wan22)


def test_state_dict_conversion_errors(wan_pair):
    _, ours, _, sd = wan_pair
    cfg = ours.config
    missing = dict(sd)
    del missing["decoder.up_blocks.1.upsamplers.0.time_conv.bias"]
    with pytest.raises(
        ConversionError, match=r"missing tensor 'decoder\.up_blocks\.1\.upsamplers\.0\.time_conv\.bias'"
    ):
        convert_vae_state_dict(missing, cfg)
    extra = {**sd, "encoder.mid_block.attentions.1.proj.weight": torch.zeros(32, 32, 1, 1)}
    with pytest.raises(ConversionError, match=r"unexpected.*attentions\.1\.proj\.weight"):
        convert_vae_state_dict(extra, cfg)
    bad = {**sd, "encoder.down_blocks.0.norm1.gamma": torch.ones(9, 1, 1, 1)}
    with pytest.raises(ConversionError, match=r"encoder\.down_blocks\.0\.norm1\.gamma.*\(9, 1, 1, 1\)"):
        convert_vae_state_dict(bad, cfg)
    # A checkpoint for another config: first mismatch is named.
    other = dataclasses.replace(cfg, base_dim=16)
    with pytest.raises(ConversionError, match=r"encoder\.conv_in\.weight"):
        convert_vae_state_dict(sd, other)


# ----------------------------------------------------------------------------- shapes and errors


@pytest.mark.parametrize("frames", [1, 5, 9, 13])
def test_shapes(frames):
    model = tiny()
    x = video(1, frames, 16, 24)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (1, 16, 1 + (frames - 1) // 4, 2, 3)
        assert model.latent_shape(frames, 16, 24) == tuple(z.shape[1:])
        y = model.decode(z)
    assert y.shape == x.shape
    assert model.video_frames(z.shape[2]) == frames
    assert torch.isfinite(y).all()


def test_bad_inputs_raise_value_errors():
    model = tiny()
    for frames in (0, 2, 4, 6, 8):
        with pytest.raises(ValueError, match=r"expected 1 \+ 4k frames"):
            model.encode(torch.zeros(1, 3, frames, 16, 16))
    for h, w in ((12, 16), (16, 20), (4, 8)):
        with pytest.raises(ValueError, match="multiples of 8"):
            model.encode(torch.zeros(1, 3, 5, h, w))
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        model.encode(torch.zeros(3, 5, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        model.encode(torch.zeros(1, 4, 5, 16, 16))
    with pytest.raises(ValueError, match=r"latents \(B, 16, T, h, w\)"):
        model.decode(torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(ValueError, match="1 \\+ 4m frames"):
        model.encode_chunk(torch.zeros(1, 3, 4, 16, 16), CausalCache())
    cache = CausalCache()
    with torch.no_grad():
        model.encode_chunk(torch.zeros(1, 3, 1, 16, 16), cache)
    with pytest.raises(ValueError, match="4m frames"):
        model.encode_chunk(torch.zeros(1, 3, 3, 16, 16), cache)


def test_config_validation_and_presets():
    for name, cfg in VAE_PRESETS.items():
        assert (cfg.spatial_factor, cfg.temporal_factor, cfg.z_dim) == (8, 4, 16), name
        assert config_from_dict(VAEConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="temporal_downsample"):
        VAEConfig(dim_mult=(1, 2, 4), temporal_downsample=(False, True, True))
    with pytest.raises(ConfigError, match="latents_mean"):
        VAEConfig(z_dim=4, latents_mean=(0.0,) * 16)
    with pytest.raises(ConfigError, match="latents_std"):
        VAEConfig(z_dim=2, latents_std=(1.0, 0.0))
    with pytest.raises(ConfigError, match="base_dim"):
        config_from_dict(VAEConfig, {"base_dim": 0})


# ----------------------------------------------------------------------------- behaviour


def test_determinism():
    x = video(2, 5, 16, 16)
    a, b = tiny(seed=3), tiny(seed=3)
    with torch.no_grad():
        za, zb = a.encode(x), b.encode(x)
        assert torch.equal(za, zb)
        assert torch.equal(za, a.encode(x))
        assert torch.equal(a.decode(za), b.decode(za))
        assert not torch.equal(za, tiny(seed=4).encode(x))


def test_chunked_equals_whole_clip():
    model = tiny()
    x = video(2, 13, 16, 24)
    with torch.no_grad():
        m1, l1 = model.encode_posterior(x, chunked=True)
        m2, l2 = model.encode_posterior(x, chunked=False)
        assert rel_err(m1, m2) <= 1e-5 and rel_err(l1, l2) <= 1e-5
        assert rel_err(model.decode(m1, chunked=True), model.decode(m1, chunked=False)) <= 1e-5


def test_streaming_api_matches_encode_and_decode():
    model = tiny()
    x = video(1, 13, 16, 16)
    with torch.no_grad():
        enc_cache = CausalCache()
        # Uneven but legal chunks: start with 1 + 4 frames, then 8, then... done (13 = 5 + 8).
        parts = [model.encode_chunk(x[:, :, :5], enc_cache), model.encode_chunk(x[:, :, 5:], enc_cache)]
        moments = torch.cat(parts, dim=2)
        mean = moments[:, :16]
        assert rel_err(mean, model.encode(x)) <= 1e-5
        dec_cache = CausalCache()
        frames = [
            model.decode_chunk(mean[:, :, :2], dec_cache),
            model.decode_chunk(mean[:, :, 2:], dec_cache),
        ]
        assert [f.shape[2] for f in frames] == [5, 8]
        assert rel_err(torch.cat(frames, dim=2), model.decode(mean)) <= 1e-5


@pytest.mark.parametrize("chunked", [True, False])
def test_encoder_is_causal(chunked):
    model = tiny()
    x = video(1, 9, 16, 16)
    x2 = x.clone()
    x2[:, :, 5:] = video(1, 4, 16, 16, seed=9)  # frames 5..8 belong to latent frame 2
    with torch.no_grad():
        z, z2 = model.encode(x, chunked=chunked), model.encode(x2, chunked=chunked)
    assert torch.allclose(z[:, :, :2], z2[:, :, :2], rtol=0, atol=1e-6)
    if chunked:
        assert torch.equal(z[:, :, :2], z2[:, :, :2])
    assert (z[:, :, 2] - z2[:, :, 2]).abs().max() > 1e-3


@pytest.mark.parametrize("chunked", [True, False])
def test_decoder_is_causal(chunked):
    model = tiny()
    z = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    z2 = z.clone()
    z2[:, :, 2] += 1.0  # latent frame 2 decodes to video frames 5..8
    with torch.no_grad():
        y, y2 = model.decode(z, chunked=chunked), model.decode(z2, chunked=chunked)
    assert torch.allclose(y[:, :, :5], y2[:, :, :5], rtol=0, atol=1e-6)
    if chunked:
        assert torch.equal(y[:, :, :5], y2[:, :, :5])
    assert (y[:, :, 5:] - y2[:, :, 5:]).abs().max() > 1e-3


def _stream_encode_sizes(model: CausalVideoVAE, frames: int) -> tuple[list[int], list[tuple[int, ...]]]:
    x = video(1, frames, 16, 16)
    cache = CausalCache()
    sizes = []
    with torch.no_grad():
        model.encode_chunk(x[:, :, :1], cache)
        sizes.append(cache.nbytes())
        for s in range(1, frames, 4):
            model.encode_chunk(x[:, :, s : s + 4], cache)
            sizes.append(cache.nbytes())
    return sizes, cache.shapes()


def test_cache_stays_flat():
    model = tiny()
    sizes9, shapes9 = _stream_encode_sizes(model, 9)
    sizes17, shapes17 = _stream_encode_sizes(model, 17)
    assert shapes9 == shapes17  # same tensors, same sizes, whatever the clip length
    assert len(set(sizes17)) == 1 and sizes9[0] == sizes17[-1]
    assert max(s[2] for s in shapes17) <= 2  # at most two frames per layer
    n_temporal = sum(1 for m in model.encoder.modules() if getattr(m, "tail", 0) > 0)
    assert len(shapes17) == n_temporal + 2  # every causal conv + the two temporal downsamplers

    dec_sizes = {}
    for t in (3, 5):
        cache = CausalCache()
        z = torch.randn(1, 16, t, 2, 2)
        with torch.no_grad():
            for i in range(t):
                model.decode_chunk(z[:, :, i : i + 1], cache)
        dec_sizes[t] = (cache.nbytes(), cache.shapes())
        assert max(s[2] for s in cache.shapes()) <= 2
    assert dec_sizes[3] == dec_sizes[5]


def test_save_load_round_trip(tmp_path):
    model = tiny(seed=5, latents_mean=tuple(range(16)), latents_std=(2.0,) * 16)
    model.save_pretrained(tmp_path / "vae")
    loaded = CausalVideoVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == model.config
    assert isinstance(loaded.config.latents_mean, tuple) and loaded.config.latents_mean[3] == 3.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = video(1, 5, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))


def test_gradients_flow_and_chunked_gradients_match():
    model = tiny(seed=2).train()
    x = video(2, 5, 16, 16)
    grads = {}
    for chunked in (False, True):
        model.zero_grad()
        g = torch.Generator().manual_seed(0)
        recon, mean, logvar = model(x, sample_posterior=True, generator=g, chunked=chunked)
        assert recon.shape == x.shape and mean.shape == logvar.shape == (2, 16, 2, 2, 2)
        loss = (recon - x).pow(2).mean() + 1e-3 * gaussian_kl(mean, logvar).mean()
        loss.backward()
        grads[chunked] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert len(grads[chunked]) == len(list(model.parameters()))
        for n, gr in grads[chunked].items():
            assert torch.isfinite(gr).all() and gr.abs().max() > 0, n
    # Backprop through the streaming cache gives the whole-clip gradient.
    for n in grads[False]:
        assert rel_err(grads[True][n], grads[False][n]) <= 1e-4, n


def test_single_frame_training_path_matches_the_3d_route():
    """One frame with gradients on (image training) takes a 2-D shortcut in every causal conv; it
    gives the values and gradients of the 3-D route over zero-padded past frames."""
    from tubelet.models.vae_layers import CausalConv3d

    model = tiny(seed=4).train()
    x = video(2, 1, 16, 16)
    with torch.no_grad():
        ref = model.decode(model.encode(x))
    out = model.decode(model.encode(x))
    assert rel_err(out.detach(), ref) <= 1e-5
    layer = CausalConv3d(3, 5)
    xi = torch.randn(2, 3, 1, 6, 6, requires_grad=True)
    fast = layer(xi)
    slow = torch.nn.functional.conv3d(
        torch.cat([xi.new_zeros(2, 3, 2, 6, 6), xi], dim=2), layer.weight, layer.bias, padding=(0, 1, 1)
    )
    torch.testing.assert_close(fast, slow)
    (gf,) = torch.autograd.grad(fast.square().sum(), xi)
    (gs,) = torch.autograd.grad(slow.square().sum(), xi)
    torch.testing.assert_close(gf, gs)


def test_time_kernel_1_is_a_frame_by_frame_autoencoder(tmp_path):
    """time_kernel=1 without temporal downsampling: every frame is encoded and decoded on its own
    (a clip's latents are its frames' latents), so a VAE trained on single frames serves whole clips;
    the setting round-trips through save/load and is validated."""
    model = tiny(seed=5, time_kernel=1, temporal_downsample=(False, False, False))
    assert model.config.temporal_factor == 1
    x = video(2, 6, 16, 16)
    with torch.no_grad():
        z = model.encode(x)
        per_frame = torch.cat([model.encode(x[:, :, i : i + 1]) for i in range(6)], dim=2)
        rec = model.decode(z)
        rec_frames = torch.cat([model.decode(z[:, :, i : i + 1]) for i in range(6)], dim=2)
    assert z.shape == (2, 16, 6, 2, 2)
    assert rel_err(per_frame, z) <= 1e-5 and rel_err(rec_frames, rec) <= 1e-5
    model.save_pretrained(tmp_path / "vae")
    assert CausalVideoVAE.from_pretrained(tmp_path / "vae").config.time_kernel == 1
    with pytest.raises(ConfigError, match="time_kernel"):
        dataclasses.replace(VAE_PRESETS["tiny"], time_kernel=0)


def test_posterior_sampling():
    model = tiny()
    x = video(1, 5, 16, 16)
    with torch.no_grad():
        r1, m, lv = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(7))
        r2, _, _ = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(7))
        r0, _, _ = model(x)
        d0 = model.decode(m, chunked=False)
    assert torch.equal(r1, r2)
    assert not torch.equal(r1, r0)
    assert torch.equal(r0, d0)
    assert lv.min() >= -30 and lv.max() <= 20


def test_gaussian_kl():
    mean, logvar = torch.zeros(2, 4, 2, 3, 3), torch.zeros(2, 4, 2, 3, 3)
    assert torch.equal(gaussian_kl(mean, logvar), torch.zeros(2))
    mean = torch.randn(2, 4, 2, 3, 3)
    logvar = torch.randn(2, 4, 2, 3, 3) * 0.5
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(gaussian_kl(mean, logvar), expected, atol=1e-4)


def test_attention_levels_and_decoder_width():
    model = tiny(attn_scales=(0.5,), decoder_base_dim=4)
    n_attn = sum(isinstance(m, FrameAttention) for m in model.modules())
    # 2 mid blocks + 1 per residual block at half resolution (encoder: 1, decoder: 2).
    assert n_attn == 2 + 1 + 2
    x = video(1, 5, 16, 16)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (1, 16, 2, 2, 2)
        y = model.decode(z)
        assert y.shape == x.shape
        assert rel_err(model.decode(z, chunked=False), y) <= 1e-5
        assert rel_err(model.encode(x, chunked=False), z) <= 1e-5
