"""The shapes world: a deterministic synthetic video generator with a bilingual caption grammar, and
the recipe of the embedded default model trained on it.

A clip shows 1 to 3 flat coloured shapes (circle, square, apex-up triangle) in three sizes on a
black, white or gray background. Each object either stays still or moves at constant velocity
left, right, up or down, travelling at least 30% of the frame and staying fully inside it.
Objects never overlap at any instant. Every clip comes with a canonical caption in English and
Chinese; `parse_caption` reads both languages (and the wordings produced by `paraphrase`) back
into the same `PromptSpec`. Everything random takes an explicit `numpy.random.Generator` (PCG64):
the same seed gives the same scene, caption and (noise-free) pixels on any machine.

Modules (docs/shapes-world.md):

    grammar    vocabulary, `PromptSpec`, `caption`, `parse_caption`, `paraphrase`, `detect_language`
    scene      `Scene`: a spec laid out without overlaps (`scene_for_spec`, `sample_scene`)
    render     `render` (anti-aliased frames), `make_clip` (the clip of a seed)
    writer     `write_dataset` (`tubelet data shapes`)
    text       `ShapesTextEncoder`: one context token per parsed object plus a scene token
    oracle     the exact prompt-adherence oracle (`tubelet eval oracle`), `evaluate_model` on a suite
    dimension  the oracle as the `shapes_oracle` dimension of `tubelet eval videos`
    presets    the default model's DiT, text encoder and training stages, with their path layout
    suites/    the held-out prompt suites and the held-out combinations (`suite_path`)

The world's API (grammar, scenes, rendering, the writer) is importable from this package; the text
encoder, oracle and presets from their modules. `register` (the entry point `shapes` of the group
`tubelet.recipes`) adds the text encoder, presets and dimension to the engine's registries.
"""

from __future__ import annotations

from pathlib import Path

from tubelet.recipes.shapes.grammar import (
    BACKGROUNDS,
    COLORS,
    MAX_OBJECTS,
    MOTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    PromptSpec,
    caption,
    detect_language,
    paraphrase,
    parse_caption,
)
from tubelet.recipes.shapes.render import ShapesClip, make_clip, object_coverage, render
from tubelet.recipes.shapes.scene import MIN_TRAVEL, Scene, SceneObject, sample_scene, scene_for_spec
from tubelet.recipes.shapes.writer import write_dataset

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "MAX_OBJECTS",
    "MIN_TRAVEL",
    "MOTIONS",
    "SHAPES",
    "SIZES",
    "SUITES",
    "ObjectSpec",
    "PromptSpec",
    "Scene",
    "SceneObject",
    "ShapesClip",
    "caption",
    "detect_language",
    "make_clip",
    "object_coverage",
    "paraphrase",
    "parse_caption",
    "register",
    "render",
    "sample_scene",
    "scene_for_spec",
    "suite_path",
    "write_dataset",
]

SUITES = Path(__file__).resolve().parent / "suites"


def suite_path(name: str | Path) -> Path:
    """A file path as given if it exists, else the shipped suite of that name: ``shapes-heldout``
    (or ``shapes-heldout.jsonl``), ``shapes-heldout-reseed``, ``shapes-holdout`` (the held-out
    combinations, JSON). A name that is neither is returned as given (the caller reports it)."""
    p = Path(name)
    if p.exists() or p.parent != Path("."):
        return p
    for candidate in (SUITES / p.name, SUITES / f"{p.name}.jsonl", SUITES / f"{p.name}.json"):
        if candidate.is_file():
            return candidate
    return p


def register() -> None:
    """Entry point (group `tubelet.recipes`): register the recipe's parts with the engine."""
    from tubelet.recipes.shapes.presets import register as register_presets

    register_presets()
