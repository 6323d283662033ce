"""Write the held-out prompt suite used to score the default model (tubelet/recipes/shapes/suites/).

Every prompt contains at least one object whose (color, shape, motion) combination is in
`shapes-holdout.json`, which the default model's training data excludes (`tubelet data shapes
--holdout`), so the suite measures composition of attributes training never saw together, with
seeds training never used. 24 one-object and 36 two-object prompts, each in English and Chinese
(the same scene spec and seed in both languages, so the languages are compared like for like).

    python scripts/make_heldout_suite.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tubelet.errors import CaptionError
from tubelet.recipes.shapes import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    ObjectSpec,
    PromptSpec,
    caption,
    scene_for_spec,
)

ASSETS = Path(__file__).resolve().parents[1] / "tubelet" / "recipes" / "shapes" / "suites"
SIZES = ("small", "medium", "big")


def main() -> None:
    held = [tuple(c) for c in json.loads((ASSETS / "shapes-holdout.json").read_text())]
    rng = np.random.default_rng(20261125)
    specs: list[PromptSpec] = []

    def background() -> str | None:
        return str(rng.choice(sorted(BACKGROUNDS))) if rng.random() < 0.5 else None

    def held_object(i: int) -> ObjectSpec:
        c, s, m = held[i % len(held)]
        return ObjectSpec(color=c, shape=s, size=str(rng.choice(SIZES)), motion=m)

    for i in range(24):
        specs.append(PromptSpec(objects=(held_object(i),), background=background()))
    while len(specs) < 60:
        a = held_object(len(specs))
        b = ObjectSpec(
            color=str(rng.choice(sorted(set(COLORS) - {a.color}))),
            shape=str(rng.choice(sorted(SHAPES))),
            size=str(rng.choice(SIZES)),
            motion=str(rng.choice(sorted(MOTIONS))),
        )
        if (b.color, b.shape, b.motion) in held:
            continue
        spec = PromptSpec(objects=(a, b) if rng.random() < 0.5 else (b, a), background=background())
        try:  # keep only prompts the world can realise (two big objects may not fit)
            scene_for_spec(spec, np.random.default_rng(0))
        except CaptionError:
            continue
        specs.append(spec)
    lines = []
    for i, spec in enumerate(specs):
        seed = 900_000 + i  # training clips use seeds (1000, i); these are never used there
        for lang in ("en", "zh"):
            lines.append({"prompt": caption(spec, lang), "seed": seed, "lang": lang})
    out = ASSETS / "shapes-heldout.jsonl"
    out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    print(f"wrote {len(lines)} prompts to {out}")


if __name__ == "__main__":
    main()
