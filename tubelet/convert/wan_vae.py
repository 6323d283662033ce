"""Convert a diffusers `AutoencoderKLWan` (Wan2.1 VAE) config + state dict to `CausalVideoVAE`.

Only the Wan2.1 layout is supported (`is_residual=False`, no patchify, plain 3-channel
video). The Wan2.2 VAE (residual up/down blocks, 2x2 patchify, 48 latent channels) has a
different structure and is rejected with a `ConversionError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from tubelet.errors import ConfigError, ConversionError
from tubelet.models.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, CausalVideoVAE, VAEConfig

__all__ = ["convert_vae_state_dict", "vae_config_from_diffusers"]

# AutoencoderKLWan's constructor defaults (used for keys a config.json leaves out).
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "base_dim": 96,
    "decoder_base_dim": None,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": list(WAN21_LATENTS_MEAN),
    "latents_std": list(WAN21_LATENTS_STD),
    "is_residual": False,
    "in_channels": 3,
    "out_channels": 3,
    "patch_size": None,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 8,
}


def vae_config_from_diffusers(cfg: dict[str, Any]) -> VAEConfig:
    """Build a `VAEConfig` from an `AutoencoderKLWan` config.json dict (latents_mean/std included).

    Raises ConversionError for another class, unknown keys, or settings tubelet does not
    implement (Wan2.2's residual blocks / patchify)."""
    if not isinstance(cfg, dict):
        raise ConversionError(f"VAE config: expected a JSON object, got {type(cfg).__name__}")
    cls = cfg.get("_class_name")
    if cls is not None and cls != "AutoencoderKLWan":
        raise ConversionError(f"VAE config: _class_name is {cls!r}; only 'AutoencoderKLWan' can be converted")
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_DEFAULTS)
    if unknown:
        raise ConversionError(
            f"VAE config: unknown AutoencoderKLWan setting(s) {unknown}; known: {sorted(_DIFFUSERS_DEFAULTS)}"
        )
    c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    if c["is_residual"]:
        raise ConversionError(
            "VAE config: is_residual=true (the Wan2.2 VAE with residual up/down blocks) is not supported; "
            "only the Wan2.1 VAE layout (is_residual=false) can be converted"
        )
    if c["patch_size"] not in (None, 1):
        raise ConversionError(
            f"VAE config: patch_size={c['patch_size']} (Wan2.2-style patchified VAE) is not supported; "
            "only the Wan2.1 VAE layout (patch_size null) can be converted"
        )
    if c["attn_scales"]:
        raise ConversionError(
            f"VAE config: attn_scales={c['attn_scales']} is not supported (diffusers only applies them in the "
            "encoder); Wan2.1 uses []"
        )
    try:
        config = VAEConfig(
            base_dim=c["base_dim"],
            z_dim=c["z_dim"],
            dim_mult=tuple(c["dim_mult"]),
            num_res_blocks=c["num_res_blocks"],
            attn_scales=(),
            temporal_downsample=tuple(bool(t) for t in c["temperal_downsample"]),
            dropout=float(c["dropout"]),
            decoder_base_dim=None
            if c["decoder_base_dim"] in (None, c["base_dim"])
            else int(c["decoder_base_dim"]),
            in_channels=c["in_channels"],
            out_channels=c["out_channels"],
            latents_mean=None if c["latents_mean"] is None else tuple(float(v) for v in c["latents_mean"]),
            latents_std=None if c["latents_std"] is None else tuple(float(v) for v in c["latents_std"]),
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise ConversionError(f"VAE config: unsupported settings ({e})") from None
    for key, ours in (
        ("scale_factor_spatial", config.spatial_factor),
        ("scale_factor_temporal", config.temporal_factor),
    ):
        if c[key] is not None and c[key] != ours:
            raise ConversionError(
                f"VAE config: {key}={c[key]} does not match the architecture (dim_mult / temperal_downsample "
                f"give {ours})"
            )
    return config


# A mapping entry: diffusers name, tubelet name, and the diffusers shape expected for a given
# tubelet shape (tubelet stores norm gains as (C,) and attention 1x1 convs as linear layers).
_ShapeFn = Callable[[tuple[int, ...]], tuple[int, ...]]


def _same(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape


def _gain_3d(shape: tuple[int, ...]) -> tuple[int, ...]:  # WanRMS_norm(images=False): (C, 1, 1, 1)
    return (*shape, 1, 1, 1)


def _gain_2d(shape: tuple[int, ...]) -> tuple[int, ...]:  # WanRMS_norm(images=True): (C, 1, 1)
    return (*shape, 1, 1)


def _conv1x1(shape: tuple[int, ...]) -> tuple[int, ...]:  # Conv2d 1x1 weight (O, I, 1, 1)
    return (*shape, 1, 1) if len(shape) == 2 else shape


def _conv(src: str, dst: str) -> Iterator[tuple[str, str, _ShapeFn]]:
    yield f"{src}.weight", f"{dst}.weight", _same
    yield f"{src}.bias", f"{dst}.bias", _same


def _res(src: str, dst: str, has_skip: bool) -> Iterator[tuple[str, str, _ShapeFn]]:
    yield f"{src}.norm1.gamma", f"{dst}.norm1.weight", _gain_3d
    yield from _conv(f"{src}.conv1", f"{dst}.conv1")
    yield f"{src}.norm2.gamma", f"{dst}.norm2.weight", _gain_3d
    yield from _conv(f"{src}.conv2", f"{dst}.conv2")
    if has_skip:
        yield from _conv(f"{src}.conv_shortcut", f"{dst}.skip")


def _attn(src: str, dst: str) -> Iterator[tuple[str, str, _ShapeFn]]:
    yield f"{src}.norm.gamma", f"{dst}.norm.weight", _gain_2d
    yield f"{src}.to_qkv.weight", f"{dst}.qkv.weight", _conv1x1
    yield f"{src}.to_qkv.bias", f"{dst}.qkv.bias", _same
    yield f"{src}.proj.weight", f"{dst}.out.weight", _conv1x1
    yield f"{src}.proj.bias", f"{dst}.out.bias", _same


def _mid(src: str, dst: str) -> Iterator[tuple[str, str, _ShapeFn]]:
    yield from _res(f"{src}.resnets.0", f"{dst}.res_in", False)
    yield from _attn(f"{src}.attentions.0", f"{dst}.attn")
    yield from _res(f"{src}.resnets.1", f"{dst}.res_out", False)


def _mapping(model: CausalVideoVAE) -> Iterator[tuple[str, str, _ShapeFn]]:
    """Walk the tubelet model in diffusers' construction order, pairing parameter names."""
    from tubelet.models.vae import _Level
    from tubelet.models.vae_layers import FrameAttention, ResBlock

    enc, dec = model.encoder, model.decoder
    yield from _conv("encoder.conv_in", "encoder.conv_in")
    flat = 0  # diffusers' encoder.down_blocks is one flat list of blocks and resamplers
    for i, level in enumerate(enc.levels):
        assert isinstance(level, _Level)  # Encoder.levels holds _Level modules only
        for j, block in enumerate(level.blocks):
            dst = f"encoder.levels.{i}.blocks.{j}"
            if isinstance(block, ResBlock):
                yield from _res(f"encoder.down_blocks.{flat}", dst, block.skip is not None)
            else:
                assert isinstance(block, FrameAttention)
                yield from _attn(f"encoder.down_blocks.{flat}", dst)
            flat += 1
        if level.resample is not None:
            src, dst = f"encoder.down_blocks.{flat}", f"encoder.levels.{i}.resample"
            yield from _conv(f"{src}.resample.1", f"{dst}.conv")
            if level.resample.time_conv is not None:
                yield from _conv(f"{src}.time_conv", f"{dst}.time_conv")
            flat += 1
    yield from _mid("encoder.mid_block", "encoder.mid")
    yield "encoder.norm_out.gamma", "encoder.norm_out.weight", _gain_3d
    yield from _conv("encoder.conv_out", "encoder.conv_out")
    yield from _conv("quant_conv", "quant_conv")
    yield from _conv("post_quant_conv", "post_quant_conv")
    yield from _conv("decoder.conv_in", "decoder.conv_in")
    yield from _mid("decoder.mid_block", "decoder.mid")
    for i, level in enumerate(dec.levels):
        assert isinstance(level, _Level)  # Decoder.levels holds _Level modules only
        for j, block in enumerate(level.blocks):
            assert isinstance(block, ResBlock)  # attn_scales are rejected for diffusers checkpoints
            yield from _res(
                f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.levels.{i}.blocks.{j}", block.skip is not None
            )
        if level.resample is not None:
            src, dst = f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.levels.{i}.resample"
            yield from _conv(f"{src}.resample.1", f"{dst}.conv")
            if level.resample.time_conv is not None:
                yield from _conv(f"{src}.time_conv", f"{dst}.time_conv")
    yield "decoder.norm_out.gamma", "decoder.norm_out.weight", _gain_3d
    yield from _conv("decoder.conv_out", "decoder.conv_out")


def convert_vae_state_dict(sd: dict[str, Tensor], config: VAEConfig) -> dict[str, Tensor]:
    """Rename (and reshape where the layouts differ) an `AutoencoderKLWan` state dict into
    `CausalVideoVAE` names for `config`. Dtypes are kept.

    Raises ConversionError naming the tensor for missing, unexpected or mis-shaped tensors."""
    if config.attn_scales:
        raise ConversionError("VAE conversion: attn_scales must be empty for a diffusers AutoencoderKLWan")
    with torch.device("meta"):
        model = CausalVideoVAE(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for src, dst, src_shape in _mapping(model):
        if dst not in expected:  # pragma: no cover - mapping and model out of sync
            raise AssertionError(f"internal: mapping names unknown tubelet tensor {dst}")
        if src not in sd:
            raise ConversionError(f"VAE state dict: missing tensor {src!r} (needed for {dst!r})")
        t = sd[src]
        want = src_shape(expected[dst])
        if tuple(t.shape) != want:
            raise ConversionError(
                f"VAE state dict: tensor {src!r} has shape {tuple(t.shape)}, expected {want} for this config"
            )
        out[dst] = t.reshape(expected[dst])
        used.add(src)
    missing = sorted(set(expected) - set(out))
    if missing:  # pragma: no cover - mapping and model out of sync
        raise AssertionError(f"internal: no diffusers source for {missing[:5]}")
    extra = sorted(set(sd) - used)
    if extra:
        raise ConversionError(
            f"VAE state dict: {len(extra)} unexpected tensor(s) for this config, e.g. {extra[:5]} "
            "(does the config match the checkpoint?)"
        )
    return out
