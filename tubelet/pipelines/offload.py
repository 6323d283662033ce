"""Offload: keep weights in CPU memory and bring each part to the accelerator only while it runs.

Two granularities, both installed on modules from outside (the model code is unchanged; hooks,
LoRA and the step cache keep working because blocks are still called as modules):

* **model** (`ComponentOffload`): whole components. The text encoder, the denoiser and the VAE each
  move to the device when the pipeline is about to use them, and the one used before goes back to
  the CPU. Peak memory: the largest component plus activations. Cost: one host <-> device copy of
  each component per clip.
* **blocks** (`BlockOffload`): the denoiser's repeated blocks live in (pinned) CPU memory; a forward
  pre-hook brings block i to the device just before it runs, while a side CUDA stream already copies
  block i+1 (`prefetch` blocks ahead, wrapping to block 0 for the next step), and a forward hook
  drops block i's device copy when it is done. The small rest of the denoiser (embeddings, head)
  stays on the device. Peak memory: 1 + `prefetch` blocks plus activations. The copies are of
  weights that never change, so dropping a device copy needs no copy back. A transformers T5 /
  UMT5 text encoder (Wan's umT5-XXL) streams its `encoder.block` the same way; its embeddings come
  in as a component.

Both are exact: the same tensors meet the same kernels (tests/test_offload.py compares outputs).
On a CPU-only machine the moves are no-ops; the hooks still run (that is how the tests check the
schedule with `events`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

OFFLOAD_MODES = ("model", "blocks")


def _tensors(module: nn.Module) -> list[tuple[nn.Module, str, Tensor]]:
    """(owner, name, tensor) of every parameter and buffer of `module`, each once."""
    out, seen = [], set()
    for m in module.modules():
        for name, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append((m, name, t))
    return out


class BlockOffload:
    """Stream `blocks` (modules called one after another) from CPU memory to `device` (module doc).

    events: when a list, every load ("load", i), wait ("ready", i) and drop ("drop", i) is appended
    to it, in order (the tests read the schedule from it).
    """

    def __init__(self, blocks: Iterable[nn.Module], device: torch.device | str, *, prefetch: int = 1) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.prefetch = min(prefetch, max(len(self.blocks) - 1, 0))
        self.events: list[tuple[str, int]] | None = None
        cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self._host: list[list[tuple[Tensor, Tensor]]] = []  # per block: (the live tensor, its CPU copy)
        for blk in self.blocks:
            pairs = []
            for _, _, t in _tensors(blk):
                host = t.detach().to("cpu")
                if cuda:
                    host = host.pin_memory()
                t.data = host
                pairs.append((t, host))
            self._host.append(pairs)
        self._pending: dict[int, tuple[list[Tensor], Any]] = {}  # block -> (device copies, copy-done event)
        self._resident: set[int] = set()
        self._handles = []
        for i, blk in enumerate(self.blocks):
            self._handles.append(blk.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(blk.register_forward_hook(self._post_hook(i)))

    def _log(self, kind: str, i: int) -> None:
        if self.events is not None:
            self.events.append((kind, i))

    def _start_load(self, i: int) -> None:
        if i in self._pending or i in self._resident:
            return
        self._log("load", i)
        hosts = [h for _, h in self._host[i]]
        if self._stream is None:  # CPU (or another device without streams): copy now
            self._pending[i] = ([h.to(self.device) for h in hosts], None)
            return
        with torch.cuda.stream(self._stream):
            copies = [h.to(self.device, non_blocking=True) for h in hosts]
            event = torch.cuda.Event()
            event.record(self._stream)
        self._pending[i] = (copies, event)

    def _make_ready(self, i: int) -> None:
        self._start_load(i)
        copies, event = self._pending.pop(i)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for c in copies:
                c.record_stream(current)  # allocated on the copy stream, used on this one
        for (t, _), c in zip(self._host[i], copies):
            t.data = c
        self._resident.add(i)
        self._log("ready", i)

    def _drop(self, i: int) -> None:
        for t, host in self._host[i]:
            t.data = host
        self._resident.discard(i)
        self._log("drop", i)

    def _pre_hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self._make_ready(i)
            n = len(self.blocks)
            for k in range(1, self.prefetch + 1):
                self._start_load((i + k) % n)

        return hook

    def _post_hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._drop(i)

        return hook

    @property
    def resident(self) -> set[int]:
        """Blocks whose weights are on the device now (being run)."""
        return set(self._resident)

    def remove(self) -> None:
        """Take the hooks off; the blocks stay in CPU memory (move them where you want them)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for i in list(self._resident):
            self._drop(i)
        self._pending.clear()


class TensorGroup:
    """Some tensors of a module (e.g. all but its streamed blocks), moved together by `to`."""

    def __init__(self, module: nn.Module, exclude: Iterable[nn.Module]) -> None:
        skip = {id(t) for m in exclude for _, _, t in _tensors(m)}
        self.tensors = [t for _, _, t in _tensors(module) if id(t) not in skip]

    def to(self, device: torch.device | str) -> TensorGroup:
        for t in self.tensors:
            t.data = t.data.to(device)
        return self


def streamable_blocks(module: nn.Module) -> nn.ModuleList | None:
    """The repeated blocks of a component that `BlockOffload` can stream: a DiT's `blocks`, a
    transformers T5 / UMT5 encoder's `encoder.block` (inside tubelet's HFTextEncoder); None if none."""
    inner = getattr(module, "model", module)
    encoder = getattr(inner, "encoder", None)
    blocks = getattr(encoder, "block", None) if encoder is not None else getattr(module, "blocks", None)
    return blocks if isinstance(blocks, nn.ModuleList) and len(blocks) > 1 else None


class ComponentOffload:
    """Whole-component offload: `use(name)` puts that component on `device` and the others on the CPU.

    A name that is not one of `components` (a denoiser whose blocks `BlockOffload` streams) only
    sends the others back to the CPU.
    """

    def __init__(self, components: dict[str, Any], device: torch.device | str) -> None:
        self.components = {k: m for k, m in components.items() if m is not None}
        self.device = torch.device(device)
        self.active: str | None = None
        self.events: list[str] | None = None  # the order components were brought in (tests)
        for m in self.components.values():
            m.to("cpu")

    @contextmanager
    def use(self, name: str) -> Iterator[None]:
        """Run the body with component `name` on the device (it stays there until another is used)."""
        if self.active != name:
            for other, m in self.components.items():
                if other != name:
                    m.to("cpu")
            if name in self.components:
                self.components[name].to(self.device)
            self.active = name
            if self.events is not None:
                self.events.append(name)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # hand the freed weights' memory back for the activations
        yield
