"""diffusers `WanTransformer3DModel` (Wan2.1 / 2.2 T2V) -> tubelet `VideoDiT`: config and weights.

Only tensor names and layouts change; values are copied exactly (dtype kept):
* `patch_embedding` (Conv3d, (D, C, pt, ph, pw)) -> `patch_embed` (Linear, (D, C*pt*ph*pw));
* self-attention `to_q`/`to_k`/`to_v` -> one fused `qkv`; cross-attention `to_k`/`to_v` -> `kv`;
* `scale_shift_table`s (1, n, D) -> (n, D) modulation tables.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tubelet.errors import ConfigError, ConversionError
from tubelet.models.dit import DiTConfig

# diffusers WanTransformer3DModel defaults (used for keys a config.json leaves out).
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}

# Tensors diffusers itself ignores when loading a Wan checkpoint.
_IGNORED_SUFFIXES = ("norm_added_q.weight",)


def dit_config_from_diffusers(cfg: dict[str, Any]) -> DiTConfig:
    """`DiTConfig` from a diffusers `WanTransformer3DModel` config.json dict.

    Raises ConversionError for another model class, unknown keys, or features tubelet does not
    support yet (image conditioning of the I2V/FLF2V models, other q/k norms).
    """
    if not isinstance(cfg, dict):
        raise ConversionError(f"diffusers transformer config must be a JSON object, got {type(cfg).__name__}")
    cls = cfg.get("_class_name", "WanTransformer3DModel")
    if cls != "WanTransformer3DModel":
        raise ConversionError(f"config is for {cls!r}; only diffusers WanTransformer3DModel can be converted")
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_DEFAULTS)
    if unknown:
        raise ConversionError(f"WanTransformer3DModel config has unsupported key(s) {unknown}")
    c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    for key, what in (
        ("image_dim", "image conditioning (I2V/FLF2V image embedder)"),
        ("added_kv_proj_dim", "image cross-attention (added_kv_proj_dim)"),
        ("pos_embed_seq_len", "image position embedding (pos_embed_seq_len)"),
    ):
        if c[key] is not None:
            raise ConversionError(
                f"{key}={c[key]!r}: {what} is not supported yet; convert a text-to-video model"
            )
    # diffusers builds and applies the across-heads RMSNorm on q/k whatever this says (None included).
    if c["qk_norm"] not in ("rms_norm_across_heads", None):
        raise ConversionError(f"qk_norm={c['qk_norm']!r} is not supported; expected 'rms_norm_across_heads'")
    heads, head_dim = c["num_attention_heads"], c["attention_head_dim"]
    try:
        return DiTConfig(
            dim=int(heads) * int(head_dim),
            num_heads=int(heads),
            num_layers=int(c["num_layers"]),
            ffn_dim=int(c["ffn_dim"]),
            text_dim=int(c["text_dim"]),
            in_channels=int(c["in_channels"]),
            out_channels=int(c["out_channels"] or c["in_channels"]),
            freq_dim=int(c["freq_dim"]),
            patch_size=tuple(int(p) for p in c["patch_size"]),  # type: ignore[arg-type]
            qk_norm=True,
            cross_attn_norm=bool(c["cross_attn_norm"]),
            eps=float(c["eps"]),
            rope_max_seq_len=int(c["rope_max_seq_len"]),
            text_mask=False,  # Wan attends to the zero-padded text (512 tokens), padding included
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise ConversionError(f"WanTransformer3DModel config cannot be converted: {e}") from None


def _expected_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """diffusers tensor name -> shape, for every tensor a checkpoint of `config` must hold."""
    d, f, c = config.dim, config.ffn_dim, config.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, config.in_channels, *c),
        "patch_embedding.bias": (d,),
        "condition_embedder.time_embedder.linear_1.weight": (d, config.freq_dim),
        "condition_embedder.time_embedder.linear_1.bias": (d,),
        "condition_embedder.time_embedder.linear_2.weight": (d, d),
        "condition_embedder.time_embedder.linear_2.bias": (d,),
        "condition_embedder.time_proj.weight": (6 * d, d),
        "condition_embedder.time_proj.bias": (6 * d,),
        "condition_embedder.text_embedder.linear_1.weight": (d, config.text_dim),
        "condition_embedder.text_embedder.linear_1.bias": (d,),
        "condition_embedder.text_embedder.linear_2.weight": (d, d),
        "condition_embedder.text_embedder.linear_2.bias": (d,),
        "scale_shift_table": (1, 2, d),
        "proj_out.weight": (config.out_channels * config.patch_volume, d),
        "proj_out.bias": (config.out_channels * config.patch_volume,),
    }
    for i in range(config.num_layers):
        p = f"blocks.{i}."
        shapes[p + "scale_shift_table"] = (1, 6, d)
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                shapes[f"{p}{attn}.{proj}.weight"] = (d, d)
                shapes[f"{p}{attn}.{proj}.bias"] = (d,)
            if config.qk_norm:
                shapes[f"{p}{attn}.norm_q.weight"] = (d,)
                shapes[f"{p}{attn}.norm_k.weight"] = (d,)
        if config.cross_attn_norm:
            shapes[p + "norm2.weight"] = (d,)
            shapes[p + "norm2.bias"] = (d,)
        shapes[p + "ffn.net.0.proj.weight"] = (f, d)
        shapes[p + "ffn.net.0.proj.bias"] = (f,)
        shapes[p + "ffn.net.2.weight"] = (d, f)
        shapes[p + "ffn.net.2.bias"] = (d,)
    return shapes


def convert_transformer_state_dict(sd: dict[str, Tensor], config: DiTConfig) -> dict[str, Tensor]:
    """Rename / fuse a diffusers WanTransformer3DModel state dict into `VideoDiT` names.

    Raises ConversionError naming the tensor when one is missing, has the wrong shape, or is
    not part of a text-to-video Wan transformer of this config.
    """
    expected = _expected_shapes(config)
    missing = [k for k in expected if k not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"diffusers checkpoint is missing tensor {missing[0]!r}{more}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise ConversionError(
                f"diffusers tensor {k!r} has shape {tuple(sd[k].shape)}, expected {shape} for this config"
            )
    extra = sorted(k for k in sd if k not in expected and not k.endswith(_IGNORED_SUFFIXES))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConversionError(
            f"diffusers checkpoint has tensor {extra[0]!r}{more} that a text-to-video Wan transformer of this "
            "config does not have (image-conditioned models are not supported yet)"
        )

    out: dict[str, Tensor] = {}
    d = config.dim
    out["patch_embed.weight"] = sd["patch_embedding.weight"].reshape(d, -1)
    out["patch_embed.bias"] = sd["patch_embedding.bias"]
    for ours, theirs in (
        ("time_embed.fc1", "condition_embedder.time_embedder.linear_1"),
        ("time_embed.fc2", "condition_embedder.time_embedder.linear_2"),
        ("time_mod", "condition_embedder.time_proj"),
        ("text_embed.fc1", "condition_embedder.text_embedder.linear_1"),
        ("text_embed.fc2", "condition_embedder.text_embedder.linear_2"),
        ("proj_out", "proj_out"),
    ):
        out[ours + ".weight"] = sd[theirs + ".weight"]
        out[ours + ".bias"] = sd[theirs + ".bias"]
    out["head_modulation"] = sd["scale_shift_table"].reshape(2, d)

    for i in range(config.num_layers):
        p, q = f"blocks.{i}.", f"blocks.{i}."
        out[q + "modulation"] = sd[p + "scale_shift_table"].reshape(6, d)
        a1, a2 = p + "attn1.", p + "attn2."
        for part in ("weight", "bias"):
            out[f"{q}self_attn.qkv.{part}"] = torch.cat(
                [sd[f"{a1}{n}.{part}"] for n in ("to_q", "to_k", "to_v")]
            )
            out[f"{q}self_attn.out.{part}"] = sd[f"{a1}to_out.0.{part}"]
            out[f"{q}cross_attn.q.{part}"] = sd[f"{a2}to_q.{part}"]
            out[f"{q}cross_attn.kv.{part}"] = torch.cat([sd[f"{a2}{n}.{part}"] for n in ("to_k", "to_v")])
            out[f"{q}cross_attn.out.{part}"] = sd[f"{a2}to_out.0.{part}"]
            out[f"{q}ffn.fc1.{part}"] = sd[f"{p}ffn.net.0.proj.{part}"]
            out[f"{q}ffn.fc2.{part}"] = sd[f"{p}ffn.net.2.{part}"]
            if config.cross_attn_norm:
                out[f"{q}norm2.{part}"] = sd[f"{p}norm2.{part}"]
        if config.qk_norm:
            for attn_ours, attn_theirs in (("self_attn", a1), ("cross_attn", a2)):
                out[f"{q}{attn_ours}.norm_q.weight"] = sd[attn_theirs + "norm_q.weight"]
                out[f"{q}{attn_ours}.norm_k.weight"] = sd[attn_theirs + "norm_k.weight"]
    return out
