"""Model components: pure `nn.Module`s built from typed config dataclasses."""

from __future__ import annotations

from tubelet.models.dit import DIT_PRESETS, DiTConfig, VideoDiT
from tubelet.models.shapes_text import SHAPES_TEXT_PRESETS, ShapesTextConfig, ShapesTextEncoder
from tubelet.models.text import (
    BYTE_TEXT_PRESETS,
    ByteTextConfig,
    ByteTextEncoder,
    HFTextEncoder,
    TextEmbedding,
    load_text_encoder,
)
from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE, VAEConfig

__all__ = [
    "BYTE_TEXT_PRESETS",
    "DIT_PRESETS",
    "SHAPES_TEXT_PRESETS",
    "VAE_PRESETS",
    "ByteTextConfig",
    "ByteTextEncoder",
    "CausalVideoVAE",
    "DiTConfig",
    "HFTextEncoder",
    "ShapesTextConfig",
    "ShapesTextEncoder",
    "TextEmbedding",
    "VAEConfig",
    "VideoDiT",
    "load_text_encoder",
]
