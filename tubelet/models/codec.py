"""`LatentCodec`: a clip <-> the normalised latents a denoiser works on, in one place.

    codec = LatentCodec(vae)              # stats from the VAE config (latents_mean / latents_std)
    z = codec.encode(video)               # (B, 3, T, H, W) in [-1, 1] -> (B, C, F', H', W') normalised
    video = codec.decode(z)               # normalised latents -> (B, 3, T, H, W), not clamped

The pipeline, the training task and the latent cache all go through it: it is the only code that
knows the per-channel latent mean/std (``z = (vae.encode(video) - mean) / std``). Without a VAE
(pixel space) the codec is the identity on float32 clips (and the "latents" have 3 channels);
without stats the normalisation is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn


class LatentCodec(nn.Module):
    """A (frozen) VAE plus per-channel latent normalisation; `vae=None` is pixel space."""

    def __init__(
        self,
        vae: nn.Module | None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pixel_channels: int = 3,
    ) -> None:
        super().__init__()
        self.vae: Any = vae  # a CausalVideoVAE-like module: encode, decode, config, scale factors
        if (mean is None or std is None) and vae is not None:
            vcfg = cast(Any, vae.config)  # a VAEConfig-like dataclass, not a submodule
            mean, std = vcfg.latents_mean, vcfg.latents_std
        if (mean is None) != (std is None):
            raise ValueError("latent normalisation needs both mean and std (or neither)")
        self.pixel_channels = pixel_channels
        self._mean = None if mean is None else [float(v) for v in mean]
        self._std = None if std is None else [float(v) for v in std]
        if self._mean is not None and self._std is not None:
            if len(self._mean) != len(self._std) or len(self._mean) != self.latent_channels:
                raise ValueError(
                    f"latent stats have {len(self._mean)} / {len(self._std)} channels, the latents "
                    f"{self.latent_channels}"
                )
            if any(not s > 0 for s in self._std):
                raise ValueError(f"latents_std must be > 0 in every channel, got {self._std}")
        self._stats: dict[str, tuple[Tensor, Tensor]] = {}
        # spatial tiling of decodes (tubelet.models.vae_tiling.VAETiling), None: whole frames
        self.tiling: Any = None

    # ------------------------------------------------------------------ geometry
    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim) if self.vae is not None else self.pixel_channels

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along H and W (1 in pixel space)."""
        return int(self.vae.spatial_factor) if self.vae is not None else 1

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame after the first (1 in pixel space)."""
        return int(self.vae.temporal_factor) if self.vae is not None else 1

    @property
    def normalised(self) -> bool:
        return self._mean is not None

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for `num_frames` video frames: 1 + (T - 1) / tf (T in pixel space)."""
        return 1 + (num_frames - 1) // self.temporal_factor if self.vae is not None else num_frames

    def video_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames: 1 + tf (F' - 1)."""
        return 1 + self.temporal_factor * (latent_frames - 1)

    # ------------------------------------------------------------------ normalisation
    def stats(self, device: torch.device | str) -> tuple[Tensor, Tensor] | None:
        """(mean, std) as float32 (1, C, 1, 1, 1) tensors on `device`, or None (no normalisation)."""
        if self._mean is None or self._std is None:
            return None
        key = str(device)
        if key not in self._stats:
            self._stats[key] = (
                torch.tensor(self._mean, device=device).view(1, -1, 1, 1, 1),
                torch.tensor(self._std, device=device).view(1, -1, 1, 1, 1),
            )
        return self._stats[key]

    def normalize(self, z: Tensor) -> Tensor:
        """Raw VAE latents (B, C, F', H', W') -> normalised latents."""
        stats = self.stats(z.device)
        return z if stats is None else (z - stats[0]) / stats[1]

    def denormalize(self, z: Tensor) -> Tensor:
        """Normalised latents -> raw VAE latents."""
        stats = self.stats(z.device)
        return z if stats is None else z * stats[1] + stats[0]

    # ------------------------------------------------------------------ codec
    def encode_raw(self, video: Tensor) -> Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> raw (unnormalised) latents, float32 input to the VAE."""
        return self.vae.encode(video.float()) if self.vae is not None else video.float()

    def encode(self, video: Tensor) -> Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> normalised latents (B, C, F', H', W')."""
        return self.normalize(self.encode_raw(video))

    def decode(self, z: Tensor) -> Tensor:
        """Normalised latents (B, C, F', H', W') -> video (B, 3, T, H, W), about [-1, 1] (not clamped)."""
        z = self.denormalize(z)
        if self.vae is None:
            return z.float()
        if self.tiling is not None:
            from tubelet.models.vae_tiling import decode_tiled

            return decode_tiled(self.vae, z.float(), self.tiling)
        return self.vae.decode(z.float())
