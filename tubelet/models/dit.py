"""`VideoDiT`: the video diffusion transformer (Wan2.1 text-to-video architecture).

Latents (B, C, F, H, W) are cut into (pt, ph, pw) spacetime patches, embedded, and run through
`num_layers` blocks of [modulated LayerNorm -> self-attention with RMS-normalised q/k and 3-D
RoPE -> gated residual] + [LayerNorm -> cross-attention to the text tokens -> residual] +
[modulated LayerNorm -> GELU(tanh) MLP -> gated residual]; a final modulated LayerNorm and a
linear projection give the velocity, folded back into (B, C_out, F, H, W).

Timesteps condition every block as in Wan: sinusoidal embedding -> time MLP (`time_embed`) ->
SiLU -> one shared projection to 6 x dim (`time_mod`), to which each block adds its own learned
(6, dim) table (shift/scale/gate for attention and MLP). A timestep per latent frame, t of shape
(B, F'), gives each frame's tokens their own modulation.

Numerically equal (fp32) to diffusers' `WanTransformer3DModel` after
`tubelet.convert.wan_transformer.convert_transformer_state_dict`; the weight layout differs only
where that is faster (fused QKV / KV projections, patch embedding as a Linear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tubelet.config import config_from_dict
from tubelet.errors import ConfigError
from tubelet.models.hub import PretrainedMixin
from tubelet.models.layers import (
    MLP,
    RMSNorm,
    apply_rope,
    attention,
    depthwise_conv3d_tokens,
    linear,
    modulated_layer_norm,
    rope_angles_3d,
    rope_freqs,
    timestep_embedding,
)


@dataclass
class DiTConfig:
    """Hyper-parameters of `VideoDiT` (names follow Wan; `dim` = heads x head_dim)."""

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    text_dim: int
    in_channels: int = 16
    out_channels: int = 16
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # Wan precomputes RoPE for positions < rope_max_seq_len per axis; tubelet computes the angles
    # for any grid (identical values), so this is kept for reference / conversion round trips.
    rope_max_seq_len: int = 1024
    # What the output head predicts. "velocity" (Wan): the head's output is v = noise - x0.
    # "x0": the head predicts the clean sample and forward() returns v = (x - x0_hat) / max(s, x0_min_s).
    # x0-prediction is what makes pixel-space patches wider than the model work (Li & He 2025,
    # "Back to Basics: Let Denoising Generative Models Denoise"): clean patches lie near a
    # low-dimensional manifold a narrow model can represent, while noise and velocity do not.
    prediction: str = "velocity"
    x0_min_s: float = 0.05
    # Initialisation of the text and time embedders: "wan" = N(0, 0.02) (sized for umT5's 4096-wide
    # features), "xavier" = like every other linear (for narrow, jointly trained text encoders: with
    # N(0, 0.02) a 256-wide byte encoder's prompts differed by 0.2% in the cross-attention outputs, and
    # the model ignored its prompts after 200 steps).
    embed_init: str = "wan"
    # Also condition the adaLN modulation on the masked mean of the text states (SD3/Flux add a pooled
    # text vector to the timestep embedding): a direct path for global attributes that does not depend
    # on cross-attention finding the right words. Off for Wan.
    pooled_text: bool = False
    # A small full-resolution convolutional refiner after the head (0 = none, as in Wan). The head then
    # emits `refiner_features` extra channels per pixel; `refiner_layers` 3x3 convolutions of
    # `refiner_dim` channels (per frame) read them with the noisy input and the noise level and add a
    # correction to the head's output. For pixel-space models with patches wider than the details they
    # must draw: measured on the shapes world, a (4, 8, 8)-patch DiT alone still drew 8 x 8 blocks
    # where the noisy input showed crisp edges (x0 error 0.011 at s = 0.5 after 234k clips).
    # Start every cross-attention output projection at zero (the adaLN-zero idea applied to the text
    # path): a fresh model's prompts then add nothing rather than noise. Measured on the shapes world
    # with a jointly trained byte encoder and Xavier init: the cross-attention outputs shrank from 0.1
    # to 0.03 of a ~1.0 residual stream within 200 steps (0.015 after 1827 steps of batch 128) and
    # the object colours stopped depending on the prompt at all; only the pooled text still acted.
    zero_cross_attn: bool = False
    refiner_dim: int = 0
    refiner_layers: int = 3
    refiner_features: int = 8
    # A convolutional U-path around the transformer (U-ViT / "simple diffusion" style), for small
    # pixel-space models: `unet_dims = (c_0, ..., c_k)` puts a per-frame residual conv level of c_i
    # channels at resolution H / 2^i for i < k, and c_k channels at H / 2^k, where the tokens are cut
    # (so the spatial patch size must be divisible by 2^k). The head emits c_k-channel features that
    # are upsampled back through the levels, each adding its encoder features (skip connections from
    # the noisy input: crisp edges at low noise) and conditioned on the noise level (FiLM from the
    # time + pooled-text embedding). () = plain linear patch embedding and head, as in Wan.
    unet_dims: tuple[int, ...] = ()
    # A depthwise k x k x k convolution over the token grid (frames x rows x columns) added to the
    # MLP's input in every block (the "Mix-FFN" of SegFormer / Sana, here over spacetime; 0 = none,
    # as in Wan). It gives each token its spacetime neighbourhood directly. Measured on the shapes
    # world (docs/model-card.md, runs I-K): it lowered the loss at equal steps (0.40 vs 0.445 over
    # steps 400-500) but alone did not make the sampled motion direction follow the prompt; 4-frame
    # patches did. Starts at zero.
    conv_kernel: int = 0

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "num_heads",
            "num_layers",
            "ffn_dim",
            "text_dim",
            "in_channels",
            "out_channels",
            "freq_dim",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DiTConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError(f"DiTConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        hd = self.dim // self.num_heads
        if hd % 2 or hd < 6:
            raise ConfigError(
                f"DiTConfig: head dim dim/num_heads = {hd} must be even and >= 6 (3-D RoPE splits it over "
                "frame/row/column in channel pairs)"
            )
        self.patch_size = tuple(self.patch_size)  # type: ignore[assignment]
        if len(self.patch_size) != 3 or any(not isinstance(p, int) or p < 1 for p in self.patch_size):
            raise ConfigError(
                f"DiTConfig.patch_size must be three positive integers, got {self.patch_size!r}"
            )
        if self.freq_dim % 2:
            raise ConfigError(f"DiTConfig.freq_dim must be even, got {self.freq_dim}")
        if self.prediction not in ("velocity", "x0"):
            raise ConfigError(f"DiTConfig.prediction must be 'velocity' or 'x0', got {self.prediction!r}")
        if self.prediction == "x0" and self.out_channels != self.in_channels:
            raise ConfigError("DiTConfig: prediction 'x0' needs out_channels == in_channels")
        if self.embed_init not in ("wan", "xavier"):
            raise ConfigError(f"DiTConfig.embed_init must be 'wan' or 'xavier', got {self.embed_init!r}")
        for name in ("refiner_dim", "refiner_layers", "refiner_features", "conv_kernel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"DiTConfig.{name} must be an integer >= 0, got {value!r}")
        if self.refiner_dim and self.refiner_layers < 2:
            raise ConfigError(
                f"DiTConfig.refiner_layers must be >= 2 with a refiner, got {self.refiner_layers}"
            )
        self.unet_dims = tuple(self.unet_dims)  # type: ignore[assignment]
        if self.unet_dims:
            if len(self.unet_dims) < 2 or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.unet_dims
            ):
                raise ConfigError(
                    f"DiTConfig.unet_dims must be () or at least two positive integers, got {self.unet_dims!r}"
                )
            k = 2 ** (len(self.unet_dims) - 1)
            if self.patch_size[1] % k or self.patch_size[2] % k:
                raise ConfigError(
                    f"DiTConfig: unet_dims {self.unet_dims} downsample by {k}, which must divide the "
                    f"spatial patch size {self.patch_size[1:]}"
                )
            if self.refiner_dim:
                raise ConfigError("DiTConfig: use either a refiner or unet_dims, not both")
        if self.conv_kernel and self.conv_kernel % 2 == 0:
            raise ConfigError(
                f"DiTConfig.conv_kernel must be odd (same-size padding), got {self.conv_kernel}"
            )
        if not 0.0 < self.x0_min_s <= 1.0:
            raise ConfigError(f"DiTConfig.x0_min_s must be in (0, 1], got {self.x0_min_s}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    @property
    def token_patch(self) -> tuple[int, int, int]:
        """The patch cut from the tokenised grid: `patch_size`, spatially divided by the U-path's 2^k."""
        k = 2 ** max(len(self.unet_dims) - 1, 0)
        pt, ph, pw = self.patch_size
        return pt, ph // k, pw // k

    @property
    def token_in_channels(self) -> int:
        """Channels of the grid the tokens are cut from (the input, or the U-path's deepest level)."""
        return self.unet_dims[-1] if self.unet_dims else self.in_channels


DIT_PRESETS: dict[str, DiTConfig] = {
    "tiny": DiTConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, freq_dim=64),
    "small": DiTConfig(dim=256, num_heads=4, num_layers=6, ffn_dim=1024, text_dim=256),
    # The first latent recipe (16 x 5 x 8 x 8 latents of the shapes VAE -> 80 tokens).
    "shapes": DiTConfig(dim=256, num_heads=4, num_layers=8, ffn_dim=1024, text_dim=256),
    # The pixel-space recipe, 16 x 64 x 64 RGB clips in (4, 8, 8) tubelets ->
    # 4 x 8 x 8 = 256 tokens of 768 values each, wider than the model, hence x0-prediction.
    "shapes-pixel": DiTConfig(
        dim=256,
        num_heads=4,
        num_layers=8,
        ffn_dim=1024,
        text_dim=256,
        in_channels=3,
        out_channels=3,
        patch_size=(4, 8, 8),
        prediction="x0",
        embed_init="xavier",
        pooled_text=True,
        refiner_dim=24,
    ),
    # On the frame-by-frame shapes VAE's 16 x 8 x 8 x 8 latents: (2, 2, 2) patches -> 128 tokens.
    "shapes-latent": DiTConfig(
        dim=256,
        num_heads=4,
        num_layers=8,
        ffn_dim=1024,
        text_dim=256,
        in_channels=8,
        out_channels=8,
        patch_size=(2, 2, 2),
        embed_init="xavier",
        pooled_text=True,
    ),
    "wan2.1-1.3b": DiTConfig(dim=1536, num_heads=12, num_layers=30, ffn_dim=8960, text_dim=4096),
    "wan2.1-14b": DiTConfig(dim=5120, num_heads=40, num_layers=40, ffn_dim=13824, text_dim=4096),
}


# The same trunk inside a convolutional U-path (16 / 32 / 64 channels at 64 / 32 / 16 pixels per
# side): the tokens are cut from 16 x 16 x 64 features in (4, 2, 2) patches (still 256 tokens).
DIT_PRESETS["shapes-unet"] = replace(DIT_PRESETS["shapes-pixel"], refiner_dim=0, unet_dims=(16, 32, 64))
# The embedded default model: shapes-latent with 4-frame patches (16 x 8 x 8 x 8 latents -> 64 tokens
# of 128 values; an object moves ~1 latent pixel within a token, so its direction is part of the
# token's content) and a 3 x 3 x 3 depthwise token convolution in every block (see `conv_kernel`).
DIT_PRESETS["shapes-latent-conv"] = replace(DIT_PRESETS["shapes-latent"], patch_size=(4, 2, 2), conv_kernel=3)
# The same with one latent pixel per token: (4, 1, 1) patches -> 4 x 8 x 8 = 256 tokens of 32 values.
# Tried for spatial detail (run M in docs/model-card.md): no better per training clip than 64 tokens
# at 4x the cost, so not the default.
DIT_PRESETS["shapes-latent-fine"] = replace(DIT_PRESETS["shapes-latent-conv"], patch_size=(4, 1, 1))


def dit_config(spec: str | dict[str, Any] | DiTConfig) -> DiTConfig:
    """A `DiTConfig` from a preset name, a plain dict (strictly checked) or a config (copied)."""
    if isinstance(spec, DiTConfig):
        return replace(spec)
    if isinstance(spec, str):
        if spec not in DIT_PRESETS:
            raise ConfigError(f"unknown DiT preset {spec!r}; valid presets: {sorted(DIT_PRESETS)}")
        return replace(DIT_PRESETS[spec])
    if isinstance(spec, dict):
        return config_from_dict(DiTConfig, spec)
    raise ConfigError(f"expected a DiT preset name, dict or DiTConfig, got {type(spec).__name__}")


class SelfAttention(nn.Module):
    """Self-attention with a fused QKV projection, RMS-normalised q/k (across heads) and RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = linear(x, self.qkv).split(d, dim=-1)  # (B, N, D) each (views)
        if isinstance(self.norm_q, RMSNorm):  # norm + RoPE in fp32, one rounding to x's dtype
            q, k = self.norm_q(q, float32=True), self.norm_k(k, float32=True)
        q = apply_rope(q.reshape(b, n, h, -1), rope, x.dtype)  # (B, N, H, hd)
        k = apply_rope(k.reshape(b, n, h, -1), rope, x.dtype)
        v = v.view(b, n, h, -1)
        o = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, N, hd)
        return linear(o.transpose(1, 2).reshape(b, n, d), self.out)


class CrossAttention(nn.Module):
    """Attention from video tokens to text tokens (fused KV projection, RMS-normalised q/k)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        h, length = self.num_heads, context.shape[1]
        q = self.norm_q(linear(x, self.q)).view(b, n, h, -1)  # (B, N, H, hd)
        k, v = linear(context, self.kv).split(d, dim=-1)  # (B, L, D) each
        k = self.norm_k(k).view(b, length, h, -1)
        v = v.view(b, length, h, -1)
        o = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)  # (B, H, N, hd)
        return linear(o.transpose(1, 2).reshape(b, n, d), self.out)


class DiTBlock(nn.Module):
    """One Wan block: modulated self-attention, cross-attention, modulated MLP."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.cross_attn_norm else None
        self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.ffn = MLP(cfg.dim, cfg.ffn_dim, cfg.dim, activation="gelu_tanh")
        k = cfg.conv_kernel
        self.token_conv = nn.Conv3d(cfg.dim, cfg.dim, k, padding=k // 2, groups=cfg.dim) if k else None
        # Rows: shift/scale/gate for self-attention, then shift/scale/gate for the MLP.
        self.modulation = nn.Parameter(torch.randn(6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        time_mod: Tensor,
        rope: Tensor,
        context_mask: Tensor | None,
        grid: tuple[int, int, int],
    ) -> Tensor:
        """x: (B, T, S, D) tokens in T timestep groups; context: (B, L, D); time_mod: (B, T, 6, D);
        grid: the token grid (F', H', W') with F'H'W' = T*S (read by `conv_kernel`)."""
        b, t, s, d = x.shape
        mod = (self.modulation.float() + time_mod.float()).unsqueeze(3)  # (B, T, 6, 1, D) float32
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)  # (B, T, 1, D) each

        h = modulated_layer_norm(x, scale1, shift1, self.eps)
        a = self.self_attn(h.reshape(b, t * s, d), rope).view(b, t, s, d)
        x = torch.addcmul(x, a, gate1.to(x.dtype))

        if self.norm2 is not None:
            h = F.layer_norm(x, (d,), self.norm2.weight, self.norm2.bias, self.eps)
        else:
            h = x
        x = x + self.cross_attn(h.reshape(b, t * s, d), context, context_mask).view(b, t, s, d)

        h = modulated_layer_norm(x, scale2, shift2, self.eps)
        if self.token_conv is not None:
            c = self.token_conv
            h = h + depthwise_conv3d_tokens(h.reshape(b, t * s, d), c.weight, c.bias, grid).view(b, t, s, d)
        f = self.ffn(h)
        return torch.addcmul(x, f, gate2.to(x.dtype))


class Refiner(nn.Module):
    """Full-resolution convolutional correction of the head's output (see `DiTConfig.refiner_dim`).

    input: x (B, C_in, F, H, W) noisy sample, head (B, C_out + E, F, H, W) head output with E feature
    channels, t timesteps (B,) / (B, F) / (B, F'); output: head[:, :C_out] + convs([x, head, s]).
    Convolutions are 3x3 within each frame; the last one starts at zero (a new refiner changes nothing).
    """

    def __init__(self, c: DiTConfig) -> None:
        super().__init__()
        self.out_channels = c.out_channels
        cin = c.in_channels + c.out_channels + c.refiner_features + 1
        dims = [cin] + [c.refiner_dim] * (c.refiner_layers - 1) + [c.out_channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(dims[i], dims[i + 1], kernel_size=3, padding=1) for i in range(len(dims) - 1)
        )

    @torch.no_grad()
    def init_weights(self) -> None:
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.convs[-1].weight)

    def forward(self, x: Tensor, head: Tensor, t: Tensor) -> Tensor:
        b, _, f, hh, ww = x.shape
        s = t.float() / 1000.0
        if s.ndim == 2 and s.shape[1] != f:
            s = s.repeat_interleave(f // s.shape[1], dim=1)  # (B, F)
        s = (s.view(b, 1, -1, 1, 1) if s.ndim == 2 else s.view(b, 1, 1, 1, 1)).expand(b, 1, f, hh, ww)
        dtype = self.convs[0].weight.dtype
        h = torch.cat([x.to(dtype), head.to(dtype), s.to(dtype)], dim=1)  # (B, C_in + C_head + 1, F, H, W)
        # frames as images, channels-last (the fast layout for CPU and GPU convolutions)
        h = h.transpose(1, 2).reshape(b * f, -1, hh, ww).contiguous(memory_format=torch.channels_last)
        for i, conv in enumerate(self.convs):
            h = conv(F.silu(h) if i else h)
        h = h.reshape(b, f, self.out_channels, hh, ww).transpose(1, 2)  # (B, C_out, F, H, W)
        return head[:, : self.out_channels] + h


class _FiLMResBlock(nn.Module):
    """Per-frame residual block: h + conv(silu(FiLM(conv(silu(h))))), FiLM = (1 + scale, shift) from
    an embedding (zero-initialised: a fresh block ignores the noise level)."""

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * channels)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """h: (N, C, H, W) frames; emb: (N, emb_dim) SiLU-activated conditioning per frame."""
        scale, shift = linear(emb, self.film).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        r = self.conv1(F.silu(h))
        r = torch.addcmul(shift, r, 1 + scale)
        return h + self.conv2(F.silu(r))


class UPath(nn.Module):
    """The convolutional U-path of `DiTConfig.unet_dims`: per-frame encoder levels before the tokens
    and decoder levels after the head, joined by skip connections.

    encode: x (B, C_in, F, H, W), s (B, F) noise levels in [0, 1], emb (B*F, D) ->
        grid (B, c_k, F, H/2^k, W/2^k) and the skips; decode: head features of that grid -> (B, C_out, F, H, W).
    Frames are folded into the batch (channels-last 2-D convolutions); time mixing is the transformer's.
    """

    def __init__(self, c: DiTConfig) -> None:
        super().__init__()
        dims = c.unet_dims
        k = len(dims) - 1
        self.out_channels = c.out_channels
        self.stem = nn.Conv2d(c.in_channels + 1, dims[0], kernel_size=3, padding=1)
        self.enc = nn.ModuleList(_FiLMResBlock(dims[i], c.dim) for i in range(k))
        self.down = nn.ModuleList(
            nn.Conv2d(dims[i], dims[i + 1], kernel_size=3, stride=2, padding=1) for i in range(k)
        )
        self.up = nn.ModuleList(nn.Conv2d(dims[i + 1], dims[i], kernel_size=3, padding=1) for i in range(k))
        self.dec = nn.ModuleList(_FiLMResBlock(dims[i], c.dim) for i in range(k))
        self.out = nn.Conv2d(dims[0], c.out_channels, kernel_size=3, padding=1)

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for blk in [*self.enc, *self.dec]:
            nn.init.zeros_(blk.film.weight)
            nn.init.zeros_(blk.film.bias)
        nn.init.zeros_(self.out.weight)

    def encode(self, x: Tensor, s: Tensor, emb: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, ch, f, hh, ww = x.shape
        dtype = self.stem.weight.dtype
        smap = s.to(dtype).view(b, 1, f, 1, 1).expand(b, 1, f, hh, ww)
        h = torch.cat([x.to(dtype), smap], dim=1).transpose(1, 2).reshape(b * f, ch + 1, hh, ww)
        h = self.stem(h.contiguous(memory_format=torch.channels_last))
        skips = []
        for blk, down in zip(self.enc, self.down, strict=True):
            h = blk(h, emb)
            skips.append(h)
            h = down(h)
        skips.append(h)
        _, ck, gh, gw = h.shape
        return h.reshape(b, f, ck, gh, gw).transpose(1, 2), skips

    def decode(self, feat: Tensor, skips: list[Tensor], emb: Tensor) -> Tensor:
        b, ck, f, gh, gw = feat.shape
        h = feat.transpose(1, 2).reshape(b * f, ck, gh, gw).to(self.stem.weight.dtype)
        h = h.contiguous(memory_format=torch.channels_last) + skips[-1]
        for i in reversed(range(len(self.dec))):
            h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest")) + skips[i]
            h = self.dec[i](h, emb)
        out = self.out(F.silu(h))
        return out.reshape(b, f, self.out_channels, *out.shape[-2:]).transpose(1, 2)


class VideoDiT(nn.Module, PretrainedMixin):
    """Video diffusion transformer: `model(x, t, context, context_mask=None) -> velocity`."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        tpt = c.token_patch
        self.patch_embed = nn.Linear(c.token_in_channels * math.prod(tpt), c.dim)
        self.text_embed = MLP(c.text_dim, c.dim, c.dim, activation="gelu_tanh")
        self.time_embed = MLP(c.freq_dim, c.dim, c.dim, activation="silu")
        self.pooled_embed = MLP(c.text_dim, c.dim, c.dim, activation="silu") if c.pooled_text else None
        self.time_mod = nn.Linear(c.dim, 6 * c.dim)
        self.blocks = nn.ModuleList([DiTBlock(c) for _ in range(c.num_layers)])
        self.head_modulation = nn.Parameter(torch.randn(2, c.dim) / c.dim**0.5)  # shift, scale
        extra = c.refiner_features if c.refiner_dim else 0
        head_channels = c.unet_dims[-1] if c.unet_dims else c.out_channels + extra
        self.proj_out = nn.Linear(c.dim, head_channels * math.prod(tpt))
        self.refiner = Refiner(c) if c.refiner_dim else None
        self.unet = UPath(c) if c.unet_dims else None
        self.gradient_checkpointing = False
        self._rope_cache: dict[tuple, Tensor] = {}
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, zero_head: bool = True) -> None:
        """Wan's initialisation: Xavier-uniform linears (each of the fused q/k/v parts on its own),
        zero biases, N(0, 0.02) text/time embedders (Xavier with `embed_init="xavier"`), and (`zero_head`) a zero output projection, so a
        fresh model predicts zero velocity. Modulation tables keep their N(0, 1/dim) init."""
        d = self.config.dim
        fused = {id(lin) for blk in self.blocks for lin in (blk.self_attn.qkv, blk.cross_attn.kv)}
        for m in self.modules():
            if isinstance(m, nn.Linear):
                parts = m.weight.shape[0] // d if id(m) in fused else 1
                for w in m.weight.view(parts, -1, m.weight.shape[1]):
                    nn.init.xavier_uniform_(w)
                nn.init.zeros_(m.bias)
        if self.config.embed_init == "wan":
            for mlp in (self.text_embed, self.time_embed):
                nn.init.normal_(mlp.fc1.weight, std=0.02)
                nn.init.normal_(mlp.fc2.weight, std=0.02)
        if zero_head:
            nn.init.zeros_(self.proj_out.weight)
        if self.config.zero_cross_attn:
            for blk in self.blocks:
                nn.init.zeros_(blk.cross_attn.out.weight)
        for blk in self.blocks:
            if blk.token_conv is not None:
                nn.init.zeros_(blk.token_conv.weight)
                nn.init.zeros_(blk.token_conv.bias)
        if self.refiner is not None:
            self.refiner.init_weights()
        if self.unet is not None:
            self.unet.init_weights()

    # ---------------------------------------------------------------------------------------
    def rope_tables(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        """Complex64 rotations (F'H'W', 1, head_dim/2) for a token grid, cached per (grid, device)."""
        key = (grid, str(device))
        tables = self._rope_cache.get(key)
        if tables is None:
            if len(self._rope_cache) >= 16:
                self._rope_cache.clear()
            angles = rope_angles_3d(grid, self.config.head_dim, self.config.rope_theta)
            tables = rope_freqs(angles, device)
            self._rope_cache[key] = tables
        return tables

    def _check_inputs(self, x: Tensor, t: Tensor, context: Tensor, context_mask: Tensor | None) -> Tensor:
        c = self.config
        if x.ndim != 5:
            raise ValueError(f"x must be (B, C, F, H, W) latents, got shape {tuple(x.shape)}")
        b, ch, f, hh, ww = x.shape
        if ch != c.in_channels:
            raise ValueError(f"x has {ch} channels, the model expects in_channels={c.in_channels}")
        pt, ph, pw = c.patch_size
        if f % pt or hh % ph or ww % pw or min(f, hh, ww) == 0:
            raise ValueError(
                f"latent size (F, H, W) = {(f, hh, ww)} must be non-empty and divisible by the patch size {c.patch_size}"
            )
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        ok = (t.ndim == 1 and t.shape[0] == b) or (t.ndim == 2 and tuple(t.shape) in ((b, f // pt), (b, f)))
        if not ok:
            raise ValueError(
                f"t must have shape (B,) = ({b},), one timestep per frame (B, F) = {(b, f)} or per "
                f"token frame (B, F') = {(b, f // pt)}, got {tuple(t.shape)}"
            )
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != c.text_dim:
            raise ValueError(
                f"context must be (B, L, text_dim) = ({b}, L, {c.text_dim}), got {tuple(context.shape)}"
            )
        if context.shape[1] == 0:
            raise ValueError("context has no tokens (L = 0)")
        if context_mask is not None and (
            context_mask.dtype != torch.bool or tuple(context_mask.shape) != tuple(context.shape[:2])
        ):
            raise ValueError(
                f"context_mask must be a bool tensor of shape (B, L) = {tuple(context.shape[:2])}, "
                f"got {context_mask.dtype} {tuple(context_mask.shape)}"
            )
        if context_mask is not None and not bool(context_mask.any(dim=1).all()):
            empty = [i for i, row in enumerate(context_mask.any(dim=1).tolist()) if not row]
            raise ValueError(f"context_mask rows {empty} have no True entry; every sample needs a text token")
        return t

    def forward(self, x: Tensor, t: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """Predict the flow-matching velocity.

        x: (B, C, F, H, W) latents; t: (B,) timesteps in [0, 1000], (B, F) one per input frame or
        (B, F') one per token frame (F' = F / pt; per-frame times are reduced to their token frame's
        largest, so a token holding any noisy frame is told it is noisy); context: (B, L, text_dim) text embeddings; context_mask: optional (B, L) bool,
        True = real token (masked tokens are ignored by cross-attention). Returns (B, C_out, F, H, W).
        """
        t = self._check_inputs(x, t, context, context_mask)
        c = self.config
        b, _, f, hh, ww = x.shape
        pt, ph, pw = c.token_patch
        gf, gh, gw = f // pt, hh // c.patch_size[1], ww // c.patch_size[2]
        n = gf * gh * gw
        dtype = self.patch_embed.weight.dtype

        # Time conditioning: (B, T, D) with T = 1 (one t per sample) or F' (one per frame).
        t_in = t
        if t.ndim == 2 and pt > 1 and t.shape[1] == f:
            t = t.view(b, gf, pt).amax(dim=2)  # (B, F')
        tt = t[:, None] if t.ndim == 1 else t  # (B, T)
        groups = tt.shape[1]
        pooled_emb = None
        if self.pooled_embed is not None:
            if context_mask is None:
                pooled = context.float().mean(dim=1)  # (B, text_dim)
            else:
                w = context_mask.to(torch.float32)[:, :, None]  # (B, L, 1)
                pooled = (context.float() * w).sum(dim=1) / w.sum(dim=1)
            pooled_emb = self.pooled_embed(pooled.to(dtype))[:, None, :]  # (B, 1, D)
        temb = self.time_embed(timestep_embedding(tt, c.freq_dim).to(dtype))  # (B, T, D)
        if pooled_emb is not None:
            temb = temb + pooled_emb
        time_mod = self.time_mod(F.silu(temb)).unflatten(-1, (6, c.dim))  # (B, T, 6, D)

        grid = x
        if self.unet is not None:
            # per-frame conditioning of the conv levels: each frame's own noise level
            tf = t_in.float() if t_in.ndim == 2 and t_in.shape[1] == f else None
            if tf is None:
                femb = temb.repeat_interleave(f // groups, dim=1)  # (B, F, D)
                tf = tt.float().repeat_interleave(f // groups, dim=1)
            else:
                femb = self.time_embed(timestep_embedding(tf, c.freq_dim).to(dtype))
                if pooled_emb is not None:
                    femb = femb + pooled_emb
            femb = F.silu(femb).reshape(b * f, c.dim)
            grid, skips = self.unet.encode(x, tf / 1000.0, femb)  # (B, c_k, F, H/2^k, W/2^k)

        # Patchify: (B, C, F, H, W) -> (B, N, C*pt*ph*pw), features ordered (C, pt, ph, pw).
        gc = grid.shape[1]
        patches = grid.reshape(b, gc, gf, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        tokens = linear(patches.reshape(b, n, -1).to(dtype), self.patch_embed)  # (B, N, D)

        ctx = self.text_embed(context.to(dtype))  # (B, L, D)
        rope = self.rope_tables((gf, gh, gw), x.device)

        h = tokens.view(b, groups, n // groups, c.dim)  # (B, T, S, D)
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if use_ckpt:
                h = checkpoint(block, h, ctx, time_mod, rope, context_mask, (gf, gh, gw), use_reentrant=False)
            else:
                h = block(h, ctx, time_mod, rope, context_mask, (gf, gh, gw))

        # Head: LayerNorm modulated by (table + temb), projection, unpatchify.
        mod = (self.head_modulation.float() + temb.float()[:, :, None, :]).unsqueeze(3)  # (B, T, 2, 1, D)
        h = modulated_layer_norm(h, mod[:, :, 1], mod[:, :, 0], c.eps)
        out = linear(h.reshape(b, n, c.dim), self.proj_out)  # (B, N, pt*ph*pw*C_head)
        c_head = out.shape[-1] // (pt * ph * pw)  # C_out (+ refiner features) or the U-path's c_k
        out = out.reshape(b, gf, gh, gw, pt, ph, pw, c_head).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, c_head, f, gh * ph, gw * pw)
        if self.unet is not None:
            out = self.unet.decode(out, skips, femb)  # (B, C_out, F, H, W)
        if self.refiner is not None:
            out = self.refiner(x, out, t_in)  # (B, C_out, F, H, W)
        if c.prediction == "x0":
            out = self.x0_to_velocity(x, out, t_in)
        return out

    def x0_to_velocity(self, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """v = (x - x0) / max(s, x0_min_s) with s = t / 1000; t (B,), (B, F) or (B, F'). float32."""
        b, _, f, _, _ = x.shape
        s = t.float() / 1000.0
        if s.ndim == 2 and s.shape[1] != f:
            s = s.repeat_interleave(f // s.shape[1], dim=1)  # (B, F)
        s = s.view(b, 1, -1, 1, 1) if s.ndim == 2 else s.view(b, 1, 1, 1, 1)
        return (x.float() - x0.float()) / s.clamp_min(self.config.x0_min_s)

    def num_parameters(self) -> int:
        """Total number of parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())
