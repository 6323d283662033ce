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

Stages. `forward(x, t, cond)` is `embed` -> every module of `blocks` -> `head`; the three are
public so that step caches, adapters (e.g. box control) and parallelism can work between them:
`embed` returns a `DiTState` (tokens + everything the blocks and the head read), each block maps
(tokens, state) -> tokens, `head` maps (tokens, state) -> velocity. `blocks` is the model's
declared list of repeated units (`repeated_blocks`) for activation checkpointing, compile and FSDP.

Extension points beyond Wan (all off in the Wan presets): `embed_init` (initialisation of the
text/time embedders), `pooled_text` (pooled text added to the time embedding) and `conv_kernel`
(a depthwise spacetime token convolution before each MLP); the embedded default model uses all three.

Numerically equal (fp32) to diffusers' `WanTransformer3DModel` after
`tubelet.convert.wan_transformer.convert_transformer_state_dict`; the weight layout differs only
where that is faster (fused QKV / KV projections, patch embedding as a Linear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tubelet.config import check_model_limits, config_from_dict
from tubelet.diffusion.cond import Cond
from tubelet.errors import ConfigError
from tubelet.models.hub import PretrainedMixin
from tubelet.models.layers import (
    MLP,
    RMSNorm,
    apply_rope,
    attention,
    depthwise_conv3d_tokens,
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
    # Initialisation of the text and time embedders: "wan" = N(0, 0.02) (sized for umT5's 4096-wide
    # features), "xavier" = like every other linear (for narrow, jointly trained text encoders: with
    # N(0, 0.02) a 256-wide byte encoder's prompts differed by 0.2% in the cross-attention outputs, and
    # the model ignored its prompts after 200 steps).
    embed_init: str = "wan"
    # Also condition the adaLN modulation on the masked mean of the text states (SD3/Flux add a pooled
    # text vector to the timestep embedding): a direct path for global attributes that does not depend
    # on cross-attention finding the right words. Off for Wan.
    pooled_text: bool = False
    # A depthwise k x k x k convolution over the token grid (frames x rows x columns) added to the
    # MLP's input in every block (the "Mix-FFN" of SegFormer / Sana, here over spacetime; 0 = none,
    # as in Wan). It gives each token its spacetime neighbourhood directly. Measured on the shapes
    # world (docs/model-card.md, runs I-K): it lowered the loss at equal steps (0.40 vs 0.445 over
    # steps 400-500) but alone did not make the sampled motion direction follow the prompt; 4-frame
    # patches did. Starts at zero.
    conv_kernel: int = 0
    # Whether cross-attention masks the text padding (context_mask). Wan does not: its text is
    # zero-padded to 512 tokens and every block attends to the embedded padding too, so a converted
    # Wan model keeps that (False) to make exactly Wan's / diffusers' outputs.
    text_mask: bool = True

    def __post_init__(self) -> None:
        check_model_limits(self)
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
        if self.embed_init not in ("wan", "xavier"):
            raise ConfigError(f"DiTConfig.embed_init must be 'wan' or 'xavier', got {self.embed_init!r}")
        if (
            isinstance(self.conv_kernel, bool)
            or not isinstance(self.conv_kernel, int)
            or self.conv_kernel < 0
        ):
            raise ConfigError(f"DiTConfig.conv_kernel must be an integer >= 0, got {self.conv_kernel!r}")
        if self.conv_kernel and self.conv_kernel % 2 == 0:
            raise ConfigError(
                f"DiTConfig.conv_kernel must be odd (same-size padding), got {self.conv_kernel}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)


DIT_PRESETS: dict[str, DiTConfig] = {
    "tiny": DiTConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, freq_dim=64),
    "small": DiTConfig(dim=256, num_heads=4, num_layers=6, ffn_dim=1024, text_dim=256),
    "wan2.1-1.3b": DiTConfig(
        dim=1536, num_heads=12, num_layers=30, ffn_dim=8960, text_dim=4096, text_mask=False
    ),
    "wan2.1-14b": DiTConfig(
        dim=5120, num_heads=40, num_layers=40, ffn_dim=13824, text_dim=4096, text_mask=False
    ),
}


def dit_config(spec: str | dict[str, Any] | DiTConfig) -> DiTConfig:
    """A `DiTConfig` from a preset name (engine or recipe), a plain dict (strictly checked) or a config (copied)."""
    if isinstance(spec, DiTConfig):
        return replace(spec)
    if isinstance(spec, str):
        from tubelet import registry  # recipes add their presets into DIT_PRESETS on first miss

        return replace(registry.lookup("dit_preset", spec))
    if isinstance(spec, dict):
        return config_from_dict(DiTConfig, spec)
    raise ConfigError(f"expected a DiT preset name, dict or DiTConfig, got {type(spec).__name__}")


class SelfAttention(nn.Module):
    """Self-attention with a fused QKV projection, RMS-normalised q/k (across heads) and RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_kind = "self"
        self.attention_backend = "auto"  # tubelet.models.layers.set_attention_backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        """x: (B, N, D) tokens; rope: complex (N, 1, head_dim/2) rotations -> (B, N, D)."""
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).split(d, dim=-1)  # (B, N, D) each (views)
        if isinstance(self.norm_q, RMSNorm):  # norm + RoPE in fp32, one rounding to x's dtype
            q, k = self.norm_q(q, float32=True), self.norm_k(k, float32=True)
        q = apply_rope(q.reshape(b, n, h, -1), rope, x.dtype)  # (B, N, H, hd)
        k = apply_rope(k.reshape(b, n, h, -1), rope, x.dtype)
        v = v.view(b, n, h, -1)
        o = attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, self.attention_backend
        )  # (B, H, N, hd)
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Attention from video tokens to text tokens (fused KV projection, RMS-normalised q/k)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_kind = "cross"
        self.attention_backend = "auto"  # tubelet.models.layers.set_attention_backend
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        """x: (B, N, D) tokens; context: (B, L, D) embedded text; mask: (B, L) bool or None."""
        b, n, d = x.shape
        h, length = self.num_heads, context.shape[1]
        q = self.norm_q(self.q(x)).view(b, n, h, -1)  # (B, N, H, hd)
        k, v = self.kv(context).split(d, dim=-1)  # (B, L, D) each
        k = self.norm_k(k).view(b, length, h, -1)
        v = v.view(b, length, h, -1)
        o = attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.attention_backend
        )  # (B, H, N, hd)
        return self.out(o.transpose(1, 2).reshape(b, n, d))


@dataclass
class DiTState:
    """What `VideoDiT.embed` hands the blocks and the head (besides the tokens themselves).

    context: (B, L, D) embedded text; context_mask: (B, L) bool or None; time_mod: (B, T, 6, D)
    per-group block modulation; temb: (B, T, D) time (+ pooled text) embedding, read by the head;
    rope: complex (N, 1, head_dim/2); grid: token grid (F', H', W'); shape: the input (B, C, F, H, W).
    Tokens travel as (B, T, S, D): T timestep groups (1, or F' with one timestep per frame) of S
    tokens each, T * S = F'H'W'.
    """

    context: Tensor
    context_mask: Tensor | None
    time_mod: Tensor
    temb: Tensor
    rope: Tensor
    grid: tuple[int, int, int]
    shape: tuple[int, int, int, int, int]


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

    def forward(self, x: Tensor, state: DiTState) -> Tensor:
        """x: (B, T, S, D) tokens in T timestep groups -> (B, T, S, D)."""
        b, t, s, d = x.shape
        mod = (self.modulation.float() + state.time_mod.float()).unsqueeze(3)  # (B, T, 6, 1, D) float32
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)  # (B, T, 1, D) each

        h = modulated_layer_norm(x, scale1, shift1, self.eps)
        a = self.self_attn(h.reshape(b, t * s, d), state.rope).view(b, t, s, d)
        x = torch.addcmul(x, a, gate1.to(x.dtype))

        if self.norm2 is not None:
            h = F.layer_norm(x, (d,), self.norm2.weight, self.norm2.bias, self.eps)
        else:
            h = x
        x = x + self.cross_attn(h.reshape(b, t * s, d), state.context, state.context_mask).view(b, t, s, d)

        h = modulated_layer_norm(x, scale2, shift2, self.eps)
        if self.token_conv is not None:
            c = self.token_conv
            conv = depthwise_conv3d_tokens(h.reshape(b, t * s, d), c.weight, c.bias, state.grid)
            h = h + conv.view(b, t, s, d)
        f = self.ffn(h)
        return torch.addcmul(x, f, gate2.to(x.dtype))


class VideoDiT(nn.Module, PretrainedMixin):
    """Video diffusion transformer: `model(x, t, cond) -> velocity` (see `forward`)."""

    config_class = DiTConfig
    # The repeated units that activation checkpointing, compile and FSDP wrap (tubelet.train.parallel).
    repeated_blocks = ("blocks",)

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Linear(c.in_channels * math.prod(c.patch_size), c.dim)
        self.text_embed = MLP(c.text_dim, c.dim, c.dim, activation="gelu_tanh")
        self.time_embed = MLP(c.freq_dim, c.dim, c.dim, activation="silu")
        self.pooled_embed = MLP(c.text_dim, c.dim, c.dim, activation="silu") if c.pooled_text else None
        self.time_mod = nn.Linear(c.dim, 6 * c.dim)
        self.blocks = nn.ModuleList([DiTBlock(c) for _ in range(c.num_layers)])
        self.head_modulation = nn.Parameter(torch.randn(2, c.dim) / c.dim**0.5)  # shift, scale
        self.proj_out = nn.Linear(c.dim, c.out_channels * math.prod(c.patch_size))
        self._rope_cache: dict[tuple, Tensor] = {}
        self.init_weights()

    @classmethod
    def upgrade_config(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
        """Drop the fields of experiments removed from tubelet (kept in configs saved before) when
        they hold their inert defaults; a config that used one of them cannot be built any more."""
        out = dict(raw)
        for key, inert in _REMOVED_FIELDS.items():
            if key in out:
                value = out.pop(key)
                if value != inert and not (isinstance(inert, list) and list(value or []) == inert):
                    raise ConfigError(
                        f"{where}: {key}={value!r} belongs to an experimental DiT feature that tubelet no "
                        "longer has (last in git history before the engine/recipe split); this model "
                        "cannot be loaded by this version"
                    )
        return out

    @torch.no_grad()
    def init_weights(self, zero_head: bool = True) -> None:
        """Wan's initialisation: Xavier-uniform linears (each of the fused q/k/v parts on its own),
        zero biases, N(0, 0.02) text/time embedders (Xavier with `embed_init="xavier"`), and
        (`zero_head`) a zero output projection, so a fresh model predicts zero velocity. Modulation
        tables keep their N(0, 1/dim) init; token convolutions start at zero."""
        d = self.config.dim
        # DiTBlocks (possibly behind a wrapper that forwards attribute access, e.g. checkpointing)
        blocks = cast("list[DiTBlock]", list(self.blocks))
        fused = {id(lin) for blk in blocks for lin in (blk.self_attn.qkv, blk.cross_attn.kv)}
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
        for blk in blocks:
            if blk.token_conv is not None:
                assert blk.token_conv.bias is not None  # built with the default bias=True
                nn.init.zeros_(blk.token_conv.weight)
                nn.init.zeros_(blk.token_conv.bias)

    # ---------------------------------------------------------------------------------------
    def rope_tables(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        """Complex64 rotations (F'H'W', 1, head_dim/2) for a token grid, cached per (grid, device).

        Tables made under `torch.inference_mode()` are inference tensors, which autograd refuses to
        save for backward, so they are cached apart from the others (the mode is part of the key)."""
        key = (grid, str(device), torch.is_inference_mode_enabled())
        tables = self._rope_cache.get(key)
        if tables is None:
            if len(self._rope_cache) >= 16:
                self._rope_cache.clear()
            angles = rope_angles_3d(grid, self.config.head_dim, self.config.rope_theta)
            tables = rope_freqs(angles, device)
            self._rope_cache[key] = tables
        return tables

    def _check_inputs(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
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
        if not isinstance(cond, Cond):
            raise TypeError(f"cond must be a tubelet.diffusion.Cond, got {type(cond).__name__}")
        if cond.context is None:
            raise ValueError("VideoDiT needs encoded text (Cond.context), got token ids only")
        if cond.boxes is not None or cond.image_embeds is not None:
            raise ValueError(
                "this VideoDiT has no box or image-embedding conditioning (Cond.boxes / image_embeds)"
            )
        context, context_mask = cond.context, cond.context_mask
        if context.shape[0] != b or context.shape[2] != c.text_dim:
            raise ValueError(
                f"context must be (B, L, text_dim) = ({b}, L, {c.text_dim}), got {tuple(context.shape)}"
            )
        if context.shape[1] == 0:
            raise ValueError("context has no tokens (L = 0)")
        if context_mask is not None and context_mask.dtype != torch.bool:
            raise ValueError(f"context_mask must be a bool tensor of shape (B, L), got {context_mask.dtype}")
        if context_mask is not None and not bool(context_mask.any(dim=1).all()):
            empty = [i for i, row in enumerate(context_mask.any(dim=1).tolist()) if not row]
            raise ValueError(f"context_mask rows {empty} have no True entry; every sample needs a text token")
        return t

    def embed(self, x: Tensor, t: Tensor, cond: Cond) -> tuple[Tensor, DiTState]:
        """Patchify and embed: x (B, C, F, H, W), t (B,) / (B, F) / (B, F') -> tokens (B, T, S, D), state."""
        t = self._check_inputs(x, t, cond)
        context, context_mask = cond.context, cond.context_mask
        assert context is not None
        c = self.config
        b, ch, f, hh, ww = x.shape
        pt, ph, pw = c.patch_size
        gf, gh, gw = f // pt, hh // ph, ww // pw
        n = gf * gh * gw
        dtype = self.patch_embed.weight.dtype

        # Time conditioning: (B, T, D) with T = 1 (one t per sample) or F' (one per frame).
        if t.ndim == 2 and pt > 1 and t.shape[1] == f:
            t = t.view(b, gf, pt).amax(dim=2)  # (B, F')
        tt = t[:, None] if t.ndim == 1 else t  # (B, T)
        groups = tt.shape[1]
        temb = self.time_embed(timestep_embedding(tt, c.freq_dim).to(dtype))  # (B, T, D)
        if self.pooled_embed is not None:
            if context_mask is None:
                pooled = context.float().mean(dim=1)  # (B, text_dim)
            else:
                w = context_mask.to(torch.float32)[:, :, None]  # (B, L, 1)
                pooled = (context.float() * w).sum(dim=1) / w.sum(dim=1)
            temb = temb + self.pooled_embed(pooled.to(dtype))[:, None, :]  # + (B, 1, D)
        time_mod = self.time_mod(F.silu(temb)).unflatten(-1, (6, c.dim))  # (B, T, 6, D)

        # Patchify: (B, C, F, H, W) -> (B, N, C*pt*ph*pw), features ordered (C, pt, ph, pw).
        patches = x.reshape(b, ch, gf, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        tokens = self.patch_embed(patches.reshape(b, n, -1).to(dtype))  # (B, N, D)
        state = DiTState(
            context=self.text_embed(context.to(dtype)),  # (B, L, D)
            context_mask=context_mask if c.text_mask else None,
            time_mod=time_mod,
            temb=temb,
            rope=self.rope_tables((gf, gh, gw), x.device),
            grid=(gf, gh, gw),
            shape=(b, ch, f, hh, ww),
        )
        return tokens.view(b, groups, n // groups, c.dim), state

    def head(self, h: Tensor, state: DiTState) -> Tensor:
        """LayerNorm modulated by (table + temb), projection, unpatchify: (B, T, S, D) -> (B, C_out, F, H, W)."""
        c = self.config
        b, _, f, hh, ww = state.shape
        gf, gh, gw = state.grid
        pt, ph, pw = c.patch_size
        mod = (self.head_modulation.float() + state.temb.float()[:, :, None, :]).unsqueeze(
            3
        )  # (B, T, 2, 1, D)
        h = modulated_layer_norm(h, mod[:, :, 1], mod[:, :, 0], c.eps)
        out = self.proj_out(h.reshape(b, gf * gh * gw, c.dim))  # (B, N, pt*ph*pw*C_out)
        out = out.reshape(b, gf, gh, gw, pt, ph, pw, c.out_channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, c.out_channels, f, hh, ww)

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """Predict the flow-matching velocity.

        x: (B, C, F, H, W) latents; t: (B,) timesteps in [0, 1000], (B, F) one per input frame or
        (B, F') one per token frame (F' = F / pt; per-frame times are reduced to their token frame's
        largest, so a token holding any noisy frame is told it is noisy); cond: a `Cond` with
        context (B, L, text_dim) text states and optional context_mask (B, L) bool, True = real
        token (masked tokens are ignored by cross-attention). Returns (B, C_out, F, H, W).
        """
        h, state = self.embed(x, t, cond)
        for block in self.blocks:
            h = block(h, state)
        return self.head(h, state)

    # ---- stages: forward(x, t, cond) == finish(run_block(N-1, ... run_block(0, *prepare(x, t, cond))))
    # for what runs the blocks itself (the step cache of tubelet.diffusion.step_cache).
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def prepare(self, x: Tensor, t: Tensor, cond: Cond) -> tuple[Tensor, DiTState]:
        """Tokens (B, T, S, D) and the state the blocks read (`embed`)."""
        return self.embed(x, t, cond)

    def run_block(self, i: int, h: Tensor, state: DiTState) -> Tensor:
        """Block i on tokens (B, T, S, D) (called as a module: hooks, LoRA and quantization apply)."""
        return self.blocks[i](h, state)

    def finish(self, h: Tensor, state: DiTState) -> Tensor:
        """The head: tokens -> (B, C_out, F, H, W) (`head`)."""
        return self.head(h, state)

    def num_parameters(self) -> int:
        """Total number of parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())


# Fields of removed experiments (x0 prediction, the conv refiner, the U-path, zero-initialised
# cross-attention) with the values that meant "off"; configs saved before still carry them.
_REMOVED_FIELDS: dict[str, Any] = {
    "prediction": "velocity",
    "x0_min_s": 0.05,
    "zero_cross_attn": False,
    "refiner_dim": 0,
    "refiner_layers": 3,
    "refiner_features": 8,
    "unet_dims": [],
}
