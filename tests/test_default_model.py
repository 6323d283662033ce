"""The embedded default model: it ships inside the package, loads offline and follows prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tubelet.eval.oracle import score_clip
from tubelet.pipeline import TextToVideoPipeline, default_model_dir

SUITE = Path(__file__).resolve().parents[1] / "tubelet" / "assets" / "suites" / "shapes-heldout.jsonl"


@pytest.fixture(scope="module")
def pipe() -> TextToVideoPipeline:
    return TextToVideoPipeline.from_pretrained()


def test_ships_inside_the_package_and_is_small() -> None:
    d = default_model_dir()
    assert (d / "config.json").is_file()
    files = [p for p in d.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "model.safetensors"}
    assert sum(p.stat().st_size for p in files) < 40e6  # a few tens of MB at most
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl")]  # nothing to unpickle


def test_defaults_and_determinism(pipe: TextToVideoPipeline) -> None:
    a = pipe("a red circle moving right", seed=0, progress=False)
    assert a.frames.shape == (16, 64, 64, 3) and a.frames.dtype.name == "uint8" and a.fps == 8.0
    b = pipe("a red circle moving right", seed=0, progress=False)
    assert (a.frames == b.frames).all()
    assert a.metadata["num_inference_steps"] == pipe.config.num_inference_steps


def test_follows_held_out_prompts_in_both_languages(pipe: TextToVideoPipeline) -> None:
    """A few prompts of the held-out suite (attribute combinations and seeds training never saw)."""
    items = [json.loads(line) for line in SUITE.read_text(encoding="utf-8").splitlines()][:8]
    torch.manual_seed(0)
    clips = pipe([it["prompt"] for it in items], seed=[it["seed"] for it in items], progress=False)
    results = [score_clip(c.frames, it["prompt"]) for c, it in zip(clips, items)]
    attrs = [a.passed for r in results for a in r.attributes]
    assert sum(attrs) / len(attrs) >= 0.8, [(it["prompt"], r.to_dict()) for it, r in zip(items, results)]
