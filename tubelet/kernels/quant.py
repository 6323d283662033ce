"""Weight quantization of a DiT's blocks through torchao, and `torch.compile` for inference; both
applied from outside the model (the modules stay `nn.Linear`s called as modules, so forward hooks and
LoRA keep working).

* ``int8``: `Int8WeightOnlyConfig`. Weights stored as int8 with one scale per output row and
  widened in the matmul: half the memory of bf16, a quarter of float32.
* ``fp8`` (float8 e4m3): on a CUDA GPU that has fp8 matmuls (compute capability 8.9+: Ada, Hopper)
  `Float8DynamicActivationFloat8WeightConfig` with per-row scales (weights *and* activations in fp8,
  the fast path); elsewhere `Float8WeightOnlyConfig` (storage only).

Only the linears of the repeated blocks are quantized (the embeddings, the time modulation and the
head are small and the most sensitive), never a LoRA's own layers. What each costs and saves is
measured by `benchmarks/quantize.py` (docs/performance.md); in short, on a CPU int8 saves memory and
costs time.

`compile_blocks` compiles each block with `nn.Module.compile` (regional compilation: one graph reused
by every block, so compiling takes seconds, not minutes). On the CPU it first takes tubelet's oneDNN
kernel classes off the blocks (inductor makes its own fused kernels and cannot lower those).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tubelet.errors import TubeletError, check_choice

QUANT_MODES = ("int8", "fp8")


@contextmanager
def _quiet_import() -> Iterator[None]:
    """torchao logs a warning per optional CUDA extension it cannot load (on every CPU machine)."""
    names = ("torchao", "torch.utils._pytree")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lv in zip(names, levels):
            logging.getLogger(n).setLevel(lv)


def _torchao() -> Any:
    try:
        with _quiet_import():
            import torchao.quantization as tq
    except ImportError:
        raise TubeletError(
            "quantization needs torchao, which is not installed: pip install 'tubelet[quant]'"
        ) from None
    return tq


def fp8_matmul_available(device: torch.device) -> bool:
    """Whether `device` runs float8 matmuls (CUDA compute capability 8.9 or newer)."""
    return (
        device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device) >= (8, 9)
    )


def quantize_blocks(blocks: nn.Module, mode: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Quantize the linears of `blocks` (the DiT's ModuleList) in place for `mode` ("int8" | "fp8")
    on `device`. Returns what was done: {"mode", "method", "layers"}."""
    check_choice("quantize", mode, QUANT_MODES)
    tq = _torchao()
    dev = torch.device(device)
    if mode == "int8":
        config: Any = tq.Int8WeightOnlyConfig()
    elif fp8_matmul_available(dev):
        config = tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow())
    else:
        config = tq.Float8WeightOnlyConfig()
    from tubelet.models.lora import LoRAPart

    inside_lora = {id(m) for part in blocks.modules() if isinstance(part, LoRAPart) for m in part.modules()}
    count = 0

    def wanted(m: nn.Module, name: str) -> bool:
        nonlocal count
        ok = (
            isinstance(m, nn.Linear)
            and id(m) not in inside_lora
            and type(m.weight) in (nn.Parameter, torch.Tensor)
        )
        count += ok
        return ok

    # tubelet's oneDNN classes only change the kernel call; the quantized weight makes them fall
    # back to F.linear, which torchao's tensor subclasses implement
    with _quiet_import():
        tq.quantize_(blocks, config, filter_fn=wanted)
    if count == 0:
        raise TubeletError("quantize: no unquantized linear layers found in the blocks (already quantized?)")
    return {"mode": mode, "method": type(config).__name__, "layers": count}


def compile_blocks(blocks: nn.Module, *, dynamic: bool | None = None) -> int:
    """`torch.compile` each module of `blocks` in place (regional compilation); returns how many."""
    from tubelet.kernels import remove_cpu_kernels

    n = 0
    for blk in blocks.children():
        remove_cpu_kernels(blk)
        blk.compile(dynamic=dynamic)
        n += 1
    return n
