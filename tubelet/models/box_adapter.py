"""Box control as an add-on to any `VideoDiT` (Boximator-style): box tokens and gated attention.

    adapter = BoxAdapter(BoxAdapterConfig.for_dit(dit.config))
    model = BoxedDiT(dit, adapter)          # model(x, t, cond) with cond.boxes = a `Boxes` (or None)

Box tokens: for every track and every token frame (the DiT's temporal patch of `patch_frames`
latent frames), the track's box at each latent frame of the patch (Fourier features of the four
coordinates, the coordinates, a presence flag; zero where absent) -> MLP -> width D, plus an
embedding of the prompt's object the track binds to and one of its mode (hard / soft). A learned
null token is always present, so a frame without boxes attends to it (no empty softmax).

After every DiT block, the video tokens of each token frame attend to that frame's box tokens; the
result enters through a per-channel gate ``tanh(g)`` initialised at 0, so an untrained adapter (and
any call without boxes) gives exactly the base model's output. The DiT's weights are untouched: the
adapter has its own config and weights (``box_adapter/`` in a pipeline directory), so one design
trains on any VideoDiT, the Wan2.1 layout included, with the base frozen or jointly trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tubelet.config import check_model_limits
from tubelet.diffusion.cond import Boxes, Cond
from tubelet.errors import ConfigError
from tubelet.models.dit import CrossAttention, DiTConfig, DiTState, VideoDiT
from tubelet.models.hub import PretrainedMixin

__all__ = ["BoxAdapter", "BoxAdapterConfig", "BoxedDiT"]


@dataclass
class BoxAdapterConfig:
    """Sizes of a `BoxAdapter`; `dim`, `num_heads`, `num_layers`, `patch_frames` follow its DiT."""

    dim: int
    num_heads: int
    num_layers: int  # one gated box-attention layer after each DiT block
    patch_frames: int = 1  # latent frames per token frame (the DiT's patch_size[0])
    max_objects: int = 16  # object indices a track may bind to
    num_freqs: int = 8  # Fourier frequencies per coordinate: sin/cos(2^k pi c), k < num_freqs
    qk_norm: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_model_limits(self)
        for name in ("dim", "num_heads", "num_layers", "patch_frames", "max_objects", "num_freqs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BoxAdapterConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError(
                f"BoxAdapterConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.num_freqs > 16:
            raise ConfigError(f"BoxAdapterConfig.num_freqs must be <= 16, got {self.num_freqs}")

    @classmethod
    def for_dit(cls, dit: DiTConfig, **overrides: Any) -> BoxAdapterConfig:
        """The adapter sized for `dit` (width, heads, one layer per block, its temporal patch)."""
        base = {
            "dim": dit.dim,
            "num_heads": dit.num_heads,
            "num_layers": dit.num_layers,
            "patch_frames": dit.patch_size[0],
            "qk_norm": dit.qk_norm,
            "eps": dit.eps,
        }
        return cls(**{**base, **overrides})

    @property
    def frame_features(self) -> int:
        """Input features of one latent frame of a track: Fourier (4 x 2K) + coordinates (4) + present."""
        return 4 * 2 * self.num_freqs + 4 + 1


class BoxEmbedder(nn.Module):
    """`Boxes` (B, N, F', ...) -> box tokens (B, G, 1 + N, D) and their mask (B, G, 1 + N), G = F' / pt."""

    def __init__(self, cfg: BoxAdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc1 = nn.Linear(cfg.patch_frames * cfg.frame_features, cfg.dim)
        self.fc2 = nn.Linear(cfg.dim, cfg.dim)
        self.object_embed = nn.Embedding(cfg.max_objects, cfg.dim)
        self.mode_embed = nn.Embedding(2, cfg.dim)  # 0 soft, 1 hard
        self.null = nn.Parameter(torch.zeros(cfg.dim))
        nn.init.normal_(self.object_embed.weight, std=0.02)
        nn.init.normal_(self.mode_embed.weight, std=0.02)
        nn.init.normal_(self.null, std=0.02)

    def forward(self, boxes: Boxes, frames: int) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        b, n, f, _ = boxes.boxes.shape
        if f != frames * cfg.patch_frames:
            raise ValueError(
                f"boxes cover {f} latent frames; the video has {frames * cfg.patch_frames} "
                f"({frames} token frames of {cfg.patch_frames})"
            )
        if n and int(boxes.objects.max()) >= cfg.max_objects:
            raise ValueError(
                f"a track binds to object {int(boxes.objects.max())}; this adapter knows {cfg.max_objects}"
            )
        dtype = self.fc1.weight.dtype
        c = boxes.boxes.float()  # (B, N, F', 4)
        present = boxes.present.bool()
        freqs = math.pi * 2.0 ** torch.arange(cfg.num_freqs, device=c.device, dtype=torch.float32)
        angles = c[..., None] * freqs  # (B, N, F', 4, K)
        feats = (
            torch.cat(
                [angles.sin().flatten(-2), angles.cos().flatten(-2), c, torch.ones_like(c[..., :1])], dim=-1
            )
            * present[..., None]
        )  # (B, N, F', 4 * 2K + 5), zero where absent
        feats = feats.view(b, n, frames, cfg.patch_frames * cfg.frame_features).to(dtype)
        tokens = self.fc2(F.silu(self.fc1(feats)))  # (B, N, G, D)
        tokens = tokens + self.object_embed(boxes.objects.long())[:, :, None]
        tokens = tokens + self.mode_embed(boxes.hard.long())[:, :, None]
        mask = present.view(b, n, frames, cfg.patch_frames).any(-1)  # (B, N, G)
        null = self.null.to(dtype).expand(b, frames, 1, cfg.dim)
        tokens = torch.cat([null, tokens.transpose(1, 2)], dim=2)  # (B, G, 1 + N, D)
        mask = torch.cat([mask.new_ones(b, frames, 1), mask.transpose(1, 2)], dim=2)  # (B, G, 1 + N)
        return tokens, mask


class GatedBoxAttention(nn.Module):
    """x + tanh(gate) * attention(norm(x) of one token frame -> that frame's box tokens); gate = 0 at init."""

    def __init__(self, cfg: BoxAdapterConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.attn = CrossAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.gate = nn.Parameter(torch.zeros(cfg.dim))

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor, state: DiTState) -> Tensor:
        """x: (B, T, S, D) video tokens; tokens: (B, G, 1 + N, D); mask: (B, G, 1 + N) -> (B, T, S, D)."""
        b, t, s, d = x.shape
        g = state.grid[0]
        per_frame = x.reshape(b * g, (t * s) // g, d)  # tokens are frame-major: (G, H', W')
        h = F.layer_norm(per_frame, (d,), eps=self.eps)
        out = self.attn(h, tokens.reshape(b * g, -1, d), mask.reshape(b * g, -1))
        return x + (torch.tanh(self.gate).to(x.dtype) * out).view(b, t, s, d)


class BoxAdapter(PretrainedMixin, nn.Module):
    """The box tokens and one gated box-attention layer per DiT block (see the module doc)."""

    config_class = BoxAdapterConfig
    repeated_blocks: ClassVar[tuple[str, ...]] = ("layers",)

    def __init__(self, config: BoxAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = BoxEmbedder(config)
        self.layers = nn.ModuleList(GatedBoxAttention(config) for _ in range(config.num_layers))

    def check_fits(self, dit: DiTConfig) -> None:
        c = self.config
        want = (dit.dim, dit.num_layers, dit.patch_size[0])
        if (c.dim, c.num_layers, c.patch_frames) != want:
            raise ConfigError(
                f"this box adapter (dim {c.dim}, {c.num_layers} layers, {c.patch_frames} frames per token) "
                f"does not fit the DiT (dim {want[0]}, {want[1]} blocks, {want[2]} frames per token)"
            )


class BoxedDiT(nn.Module):
    """A `VideoDiT` with a `BoxAdapter`: the same call, `model(x, t, cond)`; reads `cond.boxes`.

    Without boxes (cond.boxes None) it is exactly the DiT. The DiT keeps its own module names under
    `dit.` and the adapter under `adapter.`; each is saved to its own model directory.
    """

    def __init__(self, dit: VideoDiT, adapter: BoxAdapter) -> None:
        super().__init__()
        adapter.check_fits(dit.config)
        self.dit = dit
        self.adapter = adapter

    @property
    def config(self) -> DiTConfig:
        return self.dit.config

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """x: (B, C, F', H, W) latents, t: timesteps, cond: a `Cond` (boxes: a `Boxes` or None)."""
        boxes = cond.boxes
        h, state = self.dit.embed(x, t, cond.replace(boxes=None) if boxes is not None else cond)
        if boxes is None:
            for block in self.dit.blocks:
                h = block(h, state)
            return self.dit.head(h, state)
        if boxes.batch_size not in (1, x.shape[0]):
            raise ValueError(f"boxes have batch {boxes.batch_size}; the input has {x.shape[0]}")
        tokens, mask = self.adapter.embed(boxes.to(x.device).expand(x.shape[0]), state.grid[0])
        for block, layer in zip(self.dit.blocks, self.adapter.layers, strict=True):
            h = block(h, state)
            h = layer(h, tokens, mask, state)
        return self.dit.head(h, state)
