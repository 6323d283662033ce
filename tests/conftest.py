"""Shared test set-up: deterministic, small, CPU-only."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random pipeline (DiT + byte text encoder + VAE), 9 frames of 32x32, 2 steps, saved as
    RUN/model (so its parent also reads as a training run)."""
    import torch

    from tubelet.models.dit import DIT_PRESETS, VideoDiT
    from tubelet.models.text import BYTE_TEXT_PRESETS, ByteTextEncoder
    from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE
    from tubelet.pipelines import PipelineConfig, TextToVideoPipeline

    torch.manual_seed(0)
    dit = VideoDiT(DIT_PRESETS["tiny"])
    dit.init_weights(zero_head=False)  # a fresh Wan DiT predicts zero velocity; tests need a real one
    pipe = TextToVideoPipeline(
        dit,
        ByteTextEncoder(BYTE_TEXT_PRESETS["tiny"]),
        CausalVideoVAE(VAE_PRESETS["tiny"]),
        PipelineConfig(height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=2.0),
    )
    return pipe.save_pretrained(tmp_path_factory.mktemp("model") / "run" / "model")


@pytest.fixture(scope="module")
def box_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model with an (untrained, zero-gate) box adapter, saved as a pipeline directory."""
    from tubelet.models.box_adapter import BoxAdapter, BoxAdapterConfig, BoxedDiT
    from tubelet.pipelines import load_pipeline

    pipe = load_pipeline()
    pipe.transformer = BoxedDiT(
        pipe.transformer, BoxAdapter(BoxAdapterConfig.for_dit(pipe.transformer.config))
    )
    return pipe.save_pretrained(tmp_path_factory.mktemp("box") / "model")


def random_lora_file(model_dir: Path, path: Path, seed: int = 2) -> Path:
    """A rank-4 LoRA with random (non-zero) weights for the DiT of `model_dir`, saved at `path`."""
    import torch

    from tubelet.models.lora import LoRAConfig, attach_lora, save_lora
    from tubelet.pipelines import load_pipeline

    src = load_pipeline(model_dir, device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attach_lora(src.transformer, LoRAConfig(rank=4)):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return save_lora(src.transformer, path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Debian's Chromium (installed by .ci/install-browser), driven by Playwright's Python client; tests
# that use the `browser` fixture are skipped when either is missing. Flags for a machine with no
# outside network: no background connections, no sandbox as root.
CHROMIUM = os.environ.get("TUBELET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (module-wide); skips when Chromium or Playwright is missing."""
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: run .ci/install-browser (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def one_thread_impl() -> Iterator[None]:
    """Torch on one thread for a test module: tiny convolutions run faster so on a shared machine, and a
    module comparing with a one-thread worker process gets bit-equal results. Use it as
    ``one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_impl)``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
