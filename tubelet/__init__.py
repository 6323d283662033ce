"""tubelet: an open, Sora-style text-to-video system (causal video VAE + DiT, flow matching).

    from tubelet import TextToVideoPipeline
    pipe = TextToVideoPipeline.from_pretrained()   # the embedded default model

`TextToVideoPipeline` is imported on first use, so `import tubelet` alone stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["TextToVideoPipeline", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "TextToVideoPipeline":
        from tubelet.pipelines import TextToVideoPipeline

        return TextToVideoPipeline
    raise AttributeError(f"module 'tubelet' has no attribute {name!r}")
