"""Shared test set-up: deterministic, small, CPU-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 5-frame 16x16 shapes clips (a tiny training set), made once per test module."""
    from tubelet.recipes.shapes import write_dataset

    out = tmp_path_factory.mktemp("shapes") / "data"
    write_dataset(out, 8, seed=0, frames=5, size=16, fps=8.0, progress=False)
    return out
