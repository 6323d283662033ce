"""Model components: pure `nn.Module`s built from typed config dataclasses."""

from __future__ import annotations

from tubelet.models.dit import DIT_PRESETS, DiTConfig, VideoDiT
from tubelet.models.text import (
    BYTE_TEXT_PRESETS,
    TEXT_ENCODER_PRESETS,
    ByteTextConfig,
    ByteTextEncoder,
    HFTextEncoder,
    TextEmbedding,
    build_text_encoder,
    load_text_encoder,
)
from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE, VAEConfig

__all__ = [
    "BYTE_TEXT_PRESETS",
    "DIT_PRESETS",
    "TEXT_ENCODER_PRESETS",
    "VAE_PRESETS",
    "ByteTextConfig",
    "ByteTextEncoder",
    "CausalVideoVAE",
    "DiTConfig",
    "HFTextEncoder",
    "TextEmbedding",
    "VAEConfig",
    "VideoDiT",
    "build_text_encoder",
    "load_text_encoder",
]
