"""`CausalVideoVAE`: the causal video VAE of Wan2.1 (diffusers' `AutoencoderKLWan` layout).

Video (B, 3, 1 + 4k, H, W) in [-1, 1]  <->  latents (B, z_dim, 1 + k, H/8, W/8).

The first frame is encoded on its own (so a still image is a 1-frame video) and every
later group of 4 frames becomes one latent frame. All temporal layers are causal, so a
latent frame never depends on later video frames and a decoded frame never depends on
later latent frames. Encoding runs the first frame, then chunks of 4 frames; decoding runs
one latent frame at a time; a `CausalCache` carries the last frames of every temporal
layer between chunks, so memory does not grow with the clip length. The whole-clip path
(`chunked=False`) computes the same function in one pass (handy for training).

Latent normalisation (`latents_mean`/`latents_std` in the config) is NOT applied here: the
pipeline applies `(z - mean) / std` after `encode` and the inverse before `decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tubelet.config import check_model_limits
from tubelet.errors import ConfigError
from tubelet.models.hub import PretrainedMixin
from tubelet.models.vae_layers import (
    CausalCache,
    CausalConv3d,
    ChannelRMSNorm,
    Downsample,
    FrameAttention,
    MidBlock,
    ResBlock,
    Upsample,
)

__all__ = ["VAE_PRESETS", "CausalCache", "CausalVideoVAE", "VAEConfig", "gaussian_kl"]

# Published Wan2.1 latent statistics (per channel), as in diffusers' AutoencoderKLWan config.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass
class VAEConfig:
    """Architecture of a `CausalVideoVAE` (Wan2.1 layout).

    Encoder level i works at `base_dim * dim_mult[i]` channels; every level but the last
    halves H and W, and also halves time (after the first frame) where
    `temporal_downsample[i]` is true. The decoder mirrors it (`decoder_base_dim`, default
    `base_dim`). `attn_scales` lists resolutions (1.0 = full, 0.5 = half, ...) whose levels
    get per-frame attention after each residual block (Wan2.1 uses none; the middle blocks
    always have one).
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    decoder_base_dim: int | None = None
    in_channels: int = 3
    out_channels: int = 3
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    # Frames each causal convolution sees (3 in Wan2.1). 1 with no temporal downsampling = an image
    # autoencoder applied frame by frame: it trains on single frames at full speed and, unlike a
    # time-kernel-3 VAE trained on frames, behaves the same on whole clips.
    time_kernel: int = 3

    def __post_init__(self) -> None:
        check_model_limits(self)
        # Accept lists from Python callers; store tuples so configs compare and hash sanely.
        self.dim_mult = tuple(self.dim_mult)
        self.attn_scales = tuple(self.attn_scales)
        self.temporal_downsample = tuple(self.temporal_downsample)
        if self.latents_mean is not None:
            self.latents_mean = tuple(self.latents_mean)
        if self.latents_std is not None:
            self.latents_std = tuple(self.latents_std)
        for name in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels", "time_kernel"):
            if getattr(self, name) < 1:
                raise ConfigError(f"VAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.decoder_base_dim is not None and self.decoder_base_dim < 1:
            raise ConfigError(f"VAEConfig.decoder_base_dim must be >= 1 or null, got {self.decoder_base_dim}")
        if not self.dim_mult or len(self.dim_mult) > 8 or any(not 1 <= m <= 64 for m in self.dim_mult):
            raise ConfigError(f"VAEConfig.dim_mult must be 1 to 8 integers in [1, 64], got {self.dim_mult}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(
                f"VAEConfig.temporal_downsample needs one flag per downsampling level "
                f"({len(self.dim_mult) - 1} for dim_mult={list(self.dim_mult)}), got {list(self.temporal_downsample)}"
            )
        dec = self.decoder_base_dim or self.base_dim
        for i, m in enumerate(self.dim_mult[1:]):
            if dec * m < 2:
                raise ConfigError(f"VAEConfig: decoder level {i} would have {dec * m} channels; need >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"VAEConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("latents_mean", "latents_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.z_dim:
                raise ConfigError(f"VAEConfig.{name} needs z_dim={self.z_dim} values, got {len(v)}")
        if self.latents_std is not None and any(s <= 0 for s in self.latents_std):
            raise ConfigError("VAEConfig.latents_std values must be > 0")

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along H and W (8 for Wan2.1)."""
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame after the first (4 for Wan2.1)."""
        return 2 ** sum(bool(t) for t in self.temporal_downsample)


VAE_PRESETS: dict[str, VAEConfig] = {
    # Unit tests and smoke runs: a few thousand parameters.
    "tiny": VAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1),
    # CPU default candidate: same x8 / x4 compression and 16 latent channels.
    "small": VAEConfig(base_dim=32, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1),
    # Wan2.1 (converted from the published checkpoint).
    "wan2.1": VAEConfig(
        base_dim=96,
        z_dim=16,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        attn_scales=(),
        temporal_downsample=(False, True, True),
        latents_mean=WAN21_LATENTS_MEAN,
        latents_std=WAN21_LATENTS_STD,
    ),
}


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the batch axis: shape (B,)."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1)


class _Level(nn.Module):
    """One resolution level: residual (+attention) blocks, then an optional resample layer."""

    def __init__(self, blocks: list[nn.Module], resample: Downsample | Upsample | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        for block in self.blocks:
            x = block(x, cache)
        return x if self.resample is None else self.resample(x, cache)


class Encoder(nn.Module):
    """Video (B, in_channels, T, H, W) -> (B, 2*z_dim, T', H/f, W/f) (mean and log-variance)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        tk = cfg.time_kernel
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], tk)
        levels = []
        scale = 1.0
        last = len(cfg.dim_mult) - 1
        for i in range(len(cfg.dim_mult)):
            blocks: list[nn.Module] = []
            c_in = dims[i]
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c_in, dims[i + 1], cfg.dropout, tk))
                if scale in cfg.attn_scales:
                    blocks.append(FrameAttention(dims[i + 1]))
                c_in = dims[i + 1]
            down = Downsample(dims[i + 1], bool(cfg.temporal_downsample[i])) if i < last else None
            levels.append(_Level(blocks, down))
            scale /= 2.0
        self.levels = nn.ModuleList(levels)
        self.mid = MidBlock(dims[-1], cfg.dropout, tk)
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, tk)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        x = self.conv_in(x, cache)
        for level in self.levels:
            x = level(x, cache)
        x = self.mid(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class Decoder(nn.Module):
    """Latents (B, z_dim, T', h, w) -> video (B, out_channels, T, h*f, w*f)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        base = cfg.decoder_base_dim or cfg.base_dim
        dims = [base * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_up = tuple(reversed(cfg.temporal_downsample))
        tk = cfg.time_kernel
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], tk)
        self.mid = MidBlock(dims[0], cfg.dropout, tk)
        levels = []
        last = len(cfg.dim_mult) - 1
        scale = 1.0 / 2**last
        for i in range(len(cfg.dim_mult)):
            # Each upsampler halves the channels, so levels after the first start at half width.
            c_in = dims[i] if i == 0 else dims[i] // 2
            c_out = dims[i + 1]
            blocks: list[nn.Module] = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(c_in, c_out, cfg.dropout, tk))
                if scale in cfg.attn_scales:
                    blocks.append(FrameAttention(c_out))
                c_in = c_out
            up = Upsample(c_out, c_out // 2, bool(temporal_up[i])) if i < last else None
            levels.append(_Level(blocks, up))
            scale *= 2.0
        self.levels = nn.ModuleList(levels)
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, tk)

    def forward(self, z: Tensor, cache: CausalCache | None = None) -> Tensor:
        x = self.conv_in(z, cache)
        x = self.mid(x, cache)
        for level in self.levels:
            x = level(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class CausalVideoVAE(nn.Module, PretrainedMixin):
    """Causal video VAE (Wan2.1 architecture): x8 spatial, x4 temporal compression by default.

    Inference: `encode(video) -> mean`, `decode(z) -> video`; wrap calls in
    `torch.inference_mode()` when no gradients are needed. Training: `forward(video)` returns
    `(reconstruction, mean, logvar)`; use `gaussian_kl(mean, logvar)` for the KL term.
    Streaming: `encode_chunk` / `decode_chunk` with one `CausalCache` per clip.
    """

    config_class: ClassVar[type] = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = nn.Conv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)

    # ------------------------------------------------------------------ shapes
    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along H and W."""
        return self.config.spatial_factor

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame (after the first)."""
        return self.config.temporal_factor

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(z_dim, latent frames, latent H, latent W) for a video of the given size (validated)."""
        self._check_video_size(frames, height, width)
        return (
            self.config.z_dim,
            1 + (frames - 1) // self.temporal_factor,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def video_frames(self, latent_frames: int) -> int:
        """Number of video frames decoded from `latent_frames` latent frames."""
        return 1 + self.temporal_factor * (latent_frames - 1)

    def _check_video_size(self, frames: int, height: int, width: int) -> None:
        tf, sf = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % tf != 0:
            lo = 1 + tf * max(0, (frames - 1) // tf)
            raise ValueError(
                f"video has {frames} frames; expected 1 + {tf}k frames (1, {1 + tf}, {1 + 2 * tf}, ...), "
                f"e.g. {lo} or {lo + tf}"
            )
        if height < sf or width < sf or height % sf or width % sf:
            raise ValueError(
                f"video frames are {height}x{width} (HxW); height and width must be positive multiples "
                f"of {sf}, e.g. {max(sf, height // sf * sf)}x{max(sf, width // sf * sf)}"
            )

    def _check_video(self, video: Tensor) -> None:
        c = self.config.in_channels
        if video.ndim != 5 or video.shape[1] != c:
            raise ValueError(f"expected a video tensor (B, {c}, F, H, W), got shape {tuple(video.shape)}")
        self._check_video_size(*video.shape[2:])

    def _check_latents(self, z: Tensor) -> None:
        c = self.config.z_dim
        if z.ndim != 5 or z.shape[1] != c or min(z.shape[2:]) < 1:
            raise ValueError(
                f"expected latents (B, {c}, T, h, w) with T, h, w >= 1, got shape {tuple(z.shape)}"
            )

    # ------------------------------------------------------------------ encode
    def encode_chunk(self, chunk: Tensor, cache: CausalCache) -> Tensor:
        """Streaming encode: one chunk of a clip -> its (B, 2*z_dim, t, h, w) moments (mean,
        logvar before clamping). With a fresh `cache` the chunk is the clip start and needs
        1 + 4m frames; later chunks (same cache) need 4m frames."""
        c, tf = self.config.in_channels, self.temporal_factor
        if chunk.ndim != 5 or chunk.shape[1] != c:
            raise ValueError(f"expected a video chunk (B, {c}, F, H, W), got shape {tuple(chunk.shape)}")
        frames, start = chunk.shape[2], len(cache) == 0
        want = frames - 1 if start else frames
        if want < 0 or want % tf or (not start and frames == 0):
            what = f"1 + {tf}m frames (clip start)" if start else f"{tf}m frames, m >= 1 (continuing a clip)"
            raise ValueError(f"encode_chunk expected a chunk of {what}, got {frames} frames")
        self._check_video_size(1, *chunk.shape[3:])
        return self.quant_conv(self.encoder(chunk, cache))

    def _moments(self, video: Tensor, chunked: bool) -> Tensor:
        self._check_video(video)
        # Spatial tiling plugs in here: split H/W into overlapping tiles, run the loop below
        # per tile (one CausalCache each), and blend the overlaps of the resulting moments.
        if not chunked:
            return self.quant_conv(self.encoder(video))
        tf = self.temporal_factor
        cache = CausalCache()
        out = [self.encode_chunk(video[:, :, :1], cache)]
        for start in range(1, video.shape[2], tf):
            out.append(self.encode_chunk(video[:, :, start : start + tf], cache))
        return torch.cat(out, dim=2)  # (B, 2z, 1 + k, H/8, W/8)

    def encode_posterior(self, video: Tensor, *, chunked: bool = True) -> tuple[Tensor, Tensor]:
        """Video (B, 3, 1 + 4k, H, W) in [-1, 1] -> (mean, logvar), each (B, z_dim, 1 + k, H/8, W/8).

        `logvar` is clamped to [-30, 20]. `chunked=False` runs the whole clip in one pass
        (same result, more memory)."""
        mean, logvar = self._moments(video, chunked).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: Tensor, *, chunked: bool = True) -> Tensor:
        """Video (B, 3, 1 + 4k, H, W) in [-1, 1] -> posterior mean (B, z_dim, 1 + k, H/8, W/8),
        not normalised."""
        return self.encode_posterior(video, chunked=chunked)[0]

    # ------------------------------------------------------------------ decode
    def decode_chunk(self, z_chunk: Tensor, cache: CausalCache) -> Tensor:
        """Streaming decode: latent frames (B, z_dim, t, h, w) continuing the clip held in `cache`
        (fresh cache = clip start) -> video frames (B, 3, 1 + 4(t-1) at the start else 4t, H, W)."""
        self._check_latents(z_chunk)
        return self.decoder(self.post_quant_conv(z_chunk), cache)

    def decode(self, z: Tensor, *, chunked: bool = True) -> Tensor:
        """Latents (B, z_dim, 1 + k, h, w), not normalised -> video (B, 3, 1 + 4k, 8h, 8w), nominally
        in [-1, 1] but NOT clamped. `chunked=True` decodes one latent frame at a time."""
        self._check_latents(z)
        # Spatial tiling plugs in here (see `_moments`).
        if not chunked:
            return self.decoder(self.post_quant_conv(z))
        cache = CausalCache()
        out = [self.decode_chunk(z[:, :, i : i + 1], cache) for i in range(z.shape[2])]
        return torch.cat(out, dim=2)

    # ------------------------------------------------------------------ training
    def forward(
        self,
        video: Tensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        *,
        chunked: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct `video` (B, 3, 1 + 4k, H, W): returns (reconstruction, mean, logvar).

        With `sample_posterior`, decodes `mean + exp(logvar / 2) * noise` (noise drawn from
        `generator`), otherwise the mean. Differentiable in both `chunked` modes."""
        mean, logvar = self.encode_posterior(video, chunked=chunked)
        z = mean
        if sample_posterior:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.decode(z, chunked=chunked), mean, logvar
