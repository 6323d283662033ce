"""tubelet: an open, Sora-style text-to-video system (causal video VAE + DiT, flow matching)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
