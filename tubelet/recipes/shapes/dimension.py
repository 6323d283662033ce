"""`shapes_oracle`: the oracle as an evaluation dimension of `tubelet eval videos` (registered by the recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tubelet.errors import CaptionError
from tubelet.eval.dimensions import Clip, ClipScore, Dimension
from tubelet.recipes.shapes.oracle import score_clip

__all__ = ["ShapesOracle"]


class ShapesOracle(Dimension):
    """Fraction of a shapes-world prompt's facts a clip meets (`tubelet.recipes.shapes.oracle`)."""

    name = "shapes_oracle"
    vbench = False
    method = (
        "tubelet shapes-world oracle (tubelet.recipes.shapes.oracle.score_clip): fraction of prompt facts met"
    )

    def score(self, clip: Clip, prompt: str) -> ClipScore:
        try:
            res = score_clip(clip.frames, prompt)
        except CaptionError as e:
            return ClipScore(None, {"excluded": f"prompt outside the shapes-world grammar ({e})"})
        details = dict(res.to_dict())
        details["whole_prompt"] = bool(res.whole_prompt)
        return ClipScore(float(res.accuracy), details)

    def summary(self, scores: Sequence[ClipScore]) -> dict[str, Any]:
        return {"whole_prompt_rate": float(np.mean([bool(s.details.get("whole_prompt")) for s in scores]))}
