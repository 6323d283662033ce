"""Box control as an add-on to any `VideoDiT` (Boximator-style), in two paths that may be combined.

    adapter = BoxAdapter(BoxAdapterConfig.for_dit(dit.config))
    model = BoxedDiT(dit, adapter)          # model(x, t, cond) with cond.boxes = a `Boxes` (or None)

**Layout** (``layout=True``, the default). Every track is rasterised at the latent resolution: for
each latent pixel of each latent frame, the fraction of its cell that the track's box covers
(exact box-cell overlap, so sub-pixel positions survive). The coverage maps weight an embedding of
the track's prompt object and its mode (hard / soft) into an (r, F', H, W) layout map, which is
patchified exactly like the latents (the DiT's patch size) and embedded -> one layout token per
video token. Before every DiT block, a per-block linear of the layout tokens, initialised at zero,
is added to the video tokens.

**Attention** (``attention=True``). Box tokens per track and token frame (Fourier features of the
coordinates, a presence flag, the object and mode embeddings; a learned null token so no softmax
is empty); after every DiT block the video tokens of each token frame attend to that frame's box
tokens, entering through a per-channel gate ``tanh(g)`` initialised at 0.

Why layout is the default (measured in docs/box-control.md): the DiT places its tokens with RoPE
only, so a video token's hidden state says little about *where* it is; a query cannot tell
whether it lies inside a box from Fourier features of the box alone, and the attention path alone
learned almost nothing in 1,000 steps. The layout path hands every token its own coverage.

Either way, an untrained adapter (and any call without boxes) gives exactly the base model's
output. The DiT's weights are untouched: the adapter has its own config and weights
(``box_adapter/`` in a pipeline directory), so one design trains on any VideoDiT, the Wan2.1
layout included, with the base frozen or jointly trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

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
    num_layers: int  # one injection (layout) / gated box-attention layer per DiT block
    patch_size: tuple[int, int, int] = (1, 2, 2)  # the DiT's patch size (latent frames, height, width)
    max_objects: int = 16  # object indices a track may bind to
    layout: bool = True  # the layout path: box coverage maps added to every block's input
    layout_channels: int = 32  # layout map channels per latent pixel (object + mode embedding)
    layout_dim: int = 128  # width of a layout token before the per-block projections
    attention: bool = False  # the attention path: gated cross-attention to box tokens after each block
    num_freqs: int = 8  # (attention) Fourier frequencies per coordinate: sin/cos(2^k pi c), k < num_freqs
    qk_norm: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_model_limits(self)
        self.patch_size = tuple(self.patch_size)  # type: ignore[assignment]
        if len(self.patch_size) != 3 or any(
            isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in self.patch_size
        ):
            raise ConfigError(
                f"BoxAdapterConfig.patch_size must be three positive integers, got {self.patch_size!r}"
            )
        names = (
            "dim",
            "num_heads",
            "num_layers",
            "max_objects",
            "layout_channels",
            "layout_dim",
            "num_freqs",
        )
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BoxAdapterConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError(
                f"BoxAdapterConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}"
            )
        for name in ("layout", "attention"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"BoxAdapterConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if not (self.layout or self.attention):
            raise ConfigError("BoxAdapterConfig: enable layout, attention or both")
        if self.num_freqs > 16:
            raise ConfigError(f"BoxAdapterConfig.num_freqs must be <= 16, got {self.num_freqs}")

    @classmethod
    def for_dit(cls, dit: DiTConfig, **overrides: Any) -> BoxAdapterConfig:
        """The adapter sized for `dit` (width, heads, one layer per block, its patch size)."""
        base = {
            "dim": dit.dim,
            "num_heads": dit.num_heads,
            "num_layers": dit.num_layers,
            "patch_size": tuple(dit.patch_size),
            "qk_norm": dit.qk_norm,
            "eps": dit.eps,
        }
        return cls(**{**base, **overrides})

    @property
    def frame_features(self) -> int:
        """Input features of one latent frame of a track: Fourier (4 x 2K) + coordinates (4) + present."""
        return 4 * 2 * self.num_freqs + 4 + 1

    @property
    def patch_frames(self) -> int:
        """Latent frames per token frame."""
        return self.patch_size[0]


def box_coverage(boxes: Boxes, height: int, width: int) -> Tensor:
    """Per-track coverage maps (B, N, F', H, W) in [0, 1]: the share of each latent pixel's cell in the box.

    Boxes are normalised (x0, y0, x1, y1); the cell of latent pixel (i, j) is
    [j / W, (j + 1) / W] x [i / H, (i + 1) / H]. Zero where a track is absent.
    """
    c = boxes.boxes.float()  # (B, N, F', 4)
    dev = c.device
    xs = torch.arange(width + 1, device=dev, dtype=torch.float32) / width  # cell edges
    ys = torch.arange(height + 1, device=dev, dtype=torch.float32) / height

    def overlap(lo: Tensor, hi: Tensor, edges: Tensor, size: int) -> Tensor:
        # (B, N, F') box extent x cells -> (B, N, F', size) overlap as a fraction of the cell
        left = torch.maximum(lo[..., None], edges[:-1])
        right = torch.minimum(hi[..., None], edges[1:])
        return (right - left).clamp(min=0.0) * size

    ox = overlap(c[..., 0], c[..., 2], xs, width)  # (B, N, F', W)
    oy = overlap(c[..., 1], c[..., 3], ys, height)  # (B, N, F', H)
    cover = oy[..., :, None] * ox[..., None, :]  # (B, N, F', H, W)
    return cover * boxes.present[..., None, None].to(cover.dtype)


class BoxLayout(nn.Module):
    """`Boxes` -> layout tokens (B, N_tokens, layout_dim), one per video token, and the per-block injections."""

    def __init__(self, cfg: BoxAdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        r = cfg.layout_channels
        self.object_embed = nn.Embedding(cfg.max_objects, r)
        self.mode_embed = nn.Embedding(2, r)  # 0 soft, 1 hard
        nn.init.normal_(self.object_embed.weight, std=1.0)
        nn.init.normal_(self.mode_embed.weight, std=1.0)
        self.patch_embed = nn.Linear(r * math.prod(cfg.patch_size), cfg.layout_dim)
        self.proj = nn.ModuleList(nn.Linear(cfg.layout_dim, cfg.dim) for _ in range(cfg.num_layers))
        for p in self.proj:  # zero at init: the base model's output, exactly
            nn.init.zeros_(cast(nn.Linear, p).weight)
            nn.init.zeros_(cast(nn.Linear, p).bias)

    def forward(self, boxes: Boxes, shape: tuple[int, int, int]) -> Tensor:
        """boxes over (F', H, W) latents -> (B, F'H'W' / prod(patch), layout_dim) in token order."""
        f, hh, ww = shape
        pt, ph, pw = self.cfg.patch_size
        b = boxes.boxes.shape[0]
        dtype = self.patch_embed.weight.dtype
        cover = box_coverage(boxes, hh, ww)  # (B, N, F', H, W)
        track = self.object_embed(boxes.objects.long()) + self.mode_embed(boxes.hard.long())  # (B, N, r)
        layout = torch.einsum("bnfhw,bnr->brfhw", cover, track.float())  # (B, r, F', H, W)
        gf, gh, gw = f // pt, hh // ph, ww // pw
        r = layout.shape[1]
        patches = layout.reshape(b, r, gf, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return F.silu(self.patch_embed(patches.reshape(b, gf * gh * gw, -1).to(dtype)))


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
        self.layout = BoxLayout(config) if config.layout else None
        self.embed = BoxEmbedder(config) if config.attention else None
        self.layers = nn.ModuleList(  # empty without the attention path
            GatedBoxAttention(config) for _ in range(config.num_layers if config.attention else 0)
        )

    def check_fits(self, dit: DiTConfig) -> None:
        c = self.config
        want = (dit.dim, dit.num_layers, tuple(dit.patch_size))
        if (c.dim, c.num_layers, tuple(c.patch_size)) != want:
            raise ConfigError(
                f"this box adapter (dim {c.dim}, {c.num_layers} layers, patch {c.patch_size}) "
                f"does not fit the DiT (dim {want[0]}, {want[1]} blocks, patch {want[2]})"
            )


@dataclass
class BoxContext:
    """What `BoxedDiT.prepare` hands its blocks: the DiT's state and, with boxes, the layout
    (B, T, S, r) and the box tokens (B, G, 1 + N, D) with their mask."""

    state: DiTState
    layout: Tensor | None = None
    tokens: Tensor | None = None
    mask: Tensor | None = None


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
        h, ctx = self.prepare(x, t, cond)
        for i in range(self.num_blocks):
            h = self.run_block(i, h, ctx)
        return self.finish(h, ctx)

    # ---- stages (as VideoDiT's): prepare -> run_block(0 .. N-1) -> finish
    @property
    def num_blocks(self) -> int:
        return len(self.dit.blocks)

    def prepare(self, x: Tensor, t: Tensor, cond: Cond) -> tuple[Tensor, BoxContext]:
        """The DiT's tokens and state, plus the box layout and box tokens every block reads."""
        boxes = cond.boxes
        h, state = self.dit.embed(x, t, cond.replace(boxes=None) if boxes is not None else cond)
        ctx = BoxContext(state)
        if boxes is None:
            return h, ctx
        if boxes.batch_size not in (1, x.shape[0]):
            raise ValueError(f"boxes have batch {boxes.batch_size}; the input has {x.shape[0]}")
        boxes = boxes.to(x.device).expand(x.shape[0])
        adapter = self.adapter
        if adapter.layout is not None:
            layout = adapter.layout(boxes, (x.shape[2], x.shape[3], x.shape[4]))  # (B, N_tokens, layout_dim)
            ctx.layout = layout.view(h.shape[0], h.shape[1], h.shape[2], -1)  # as the tokens: (B, T, S, r)
        if adapter.embed is not None:
            ctx.tokens, ctx.mask = adapter.embed(boxes, state.grid[0])
        return h, ctx

    def run_block(self, i: int, h: Tensor, ctx: BoxContext) -> Tensor:
        """Block i with its box injections: the layout before it, the gated box attention after."""
        adapter = self.adapter
        if ctx.layout is not None:
            assert adapter.layout is not None
            h = h + adapter.layout.proj[i](ctx.layout).to(h.dtype)
        h = self.dit.blocks[i](h, ctx.state)
        if ctx.tokens is not None:
            assert ctx.mask is not None
            h = adapter.layers[i](h, ctx.tokens, ctx.mask, ctx.state)
        return h

    def finish(self, h: Tensor, ctx: BoxContext) -> Tensor:
        return self.dit.head(h, ctx.state)
