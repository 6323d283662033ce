"""oneDNN kernels for `nn.Linear`, `nn.Conv2d/3d` and the GELU MLP on the CPU, installed from outside.

Why (measured on 2-core AMD EPYC / Intel Xeon machines, torch 2.13 CPU build, docs/performance.md):

* float32 `F.linear` goes to MKL's GEMM, which takes its AVX2 path on AMD and ran at about half
  oneDNN's speed there; in inference (no autograd) oneDNN's inner product is used instead, fused
  with the tanh-GELU that follows `fc1` in an MLP.
* PyTorch's dispatcher sends small batch-1 convolutions (a causal VAE's frame-by-frame chunks) to a
  naive kernel that was up to ~50x slower than oneDNN; float32 CPU convolutions call oneDNN directly
  (training too: the VAE trains through the same kernel).

How. `apply_cpu_kernels(model)` changes the class of each plain `nn.Linear`, `nn.Conv2d`, `nn.Conv3d`
(and subclasses such as a causal convolution) and `tubelet.models.layers.MLP` inside `model` to a
subclass that only overrides the kernel call. Parameters, state-dict keys, `isinstance` checks and
module calls stay as they were, so forward hooks, PEFT LoRA (which wraps the layer and calls it),
quantization (which replaces the layer) and offload hooks keep working. The fused Linear+GELU of the
MLP is taken only while `fc1` is an unhooked oneDNN linear; with any hook or replacement on `fc1`
the MLP calls `fc1` and the activation separately. `remove_cpu_kernels` restores the classes.
Every override falls back to the stock PyTorch call off the CPU, in other dtypes, or (linear) under
autograd, so a model with kernels applied stays correct anywhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module_mod

from tubelet.models.layers import MLP

_ONEDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None) if hasattr(torch.ops, "mkldnn") else None
)


def _mkldnn_on() -> bool:
    # `enabled` is a bool at runtime; the stubs type the class attribute as its descriptor
    return torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)


def _linear_ok(x: Tensor, weight: Tensor) -> bool:
    """Whether oneDNN's inner product serves this call (CPU inference in float32 / bfloat16)."""
    return (
        _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dtype == x.dtype
        and type(weight) in (nn.Parameter, Tensor)  # not a DTensor or a quantized tensor
        and x.ndim >= 2
        and x.shape[-1] > 0
        and _mkldnn_on()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


class _OneDNNLinear(nn.Linear):
    """`nn.Linear` whose CPU inference call is oneDNN's inner product (same math)."""

    def forward(self, input: Tensor) -> Tensor:
        if _ONEDNN_LINEAR is not None and _linear_ok(input, self.weight):
            return _ONEDNN_LINEAR(input, self.weight, self.bias, "none", [], "")
        return F.linear(input, self.weight, self.bias)


def _unhooked_onednn_linear(m: nn.Module) -> bool:
    """True when calling `m` would run exactly `_OneDNNLinear.forward` and nothing else."""
    return (
        type(m) is _OneDNNLinear
        and not m._forward_hooks
        and not m._forward_pre_hooks
        and "forward" not in m.__dict__
        and not _module_mod._global_forward_hooks
        and not _module_mod._global_forward_pre_hooks
    )


class _FusedMLP(MLP):
    """`MLP` with oneDNN's fused inner product + tanh-GELU for `fc1` when nothing can observe `fc1`."""

    def forward(self, x: Tensor) -> Tensor:
        fc1 = self.fc1
        if (
            _ONEDNN_LINEAR is not None
            and self.activation == "gelu_tanh"
            and _unhooked_onednn_linear(fc1)
            and _linear_ok(x, fc1.weight)
        ):
            h = _ONEDNN_LINEAR(x, fc1.weight, fc1.bias, "gelu", [], "tanh")
        else:
            h = self.act(fc1(x))
        return self.fc2(h)


class _OneDNNConv:
    """Mixin for `nn.Conv2d` / `nn.Conv3d` (and subclasses): float32 CPU convolutions call oneDNN."""

    padding: Any
    stride: Any
    dilation: Any
    groups: int
    padding_mode: str

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (
            input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and _mkldnn_on()
        ):
            return torch.mkldnn_convolution(
                input, weight, bias, tuple(self.padding), self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)  # type: ignore[misc]


_CONV_CLASSES: dict[type, type] = {}
_SWAPS: dict[type, type] = {nn.Linear: _OneDNNLinear, MLP: _FusedMLP}


def _kernel_class(cls: type) -> type | None:
    """The kernel subclass for a module class, or None when it gets none."""
    if cls in _SWAPS:
        return _SWAPS[cls]
    if issubclass(cls, (nn.Conv2d, nn.Conv3d)) and not issubclass(cls, _OneDNNConv):
        if cls not in _CONV_CLASSES:
            _CONV_CLASSES[cls] = type(f"OneDNN{cls.__name__}", (_OneDNNConv, cls), {"__module__": __name__})
        return _CONV_CLASSES[cls]
    return None


def apply_cpu_kernels(model: nn.Module, *, skip: tuple[str, ...] = ()) -> nn.Module:
    """Install the oneDNN kernels on every eligible submodule of `model` (in place); returns `model`.

    skip: names of submodules (as in `model.named_modules()`, with everything below them) that keep
    PyTorch's kernels. Idempotent. Harmless off the CPU (each call falls back to PyTorch's kernel).
    """
    for name, m in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        new = _kernel_class(type(m))
        if new is not None:
            m.__class__ = new
    return model


def remove_cpu_kernels(model: nn.Module) -> nn.Module:
    """Undo `apply_cpu_kernels` (in place); returns `model`."""
    back = {v: k for k, v in _SWAPS.items()} | {v: k for k, v in _CONV_CLASSES.items()}
    for m in model.modules():
        if type(m) in back:
            m.__class__ = back[type(m)]
    return model


def cpu_kernels_applied(model: nn.Module) -> bool:
    """Whether any submodule of `model` carries a kernel installed by `apply_cpu_kernels`."""
    kinds = (_OneDNNLinear, _FusedMLP, _OneDNNConv)
    return any(isinstance(m, kinds) for m in model.modules())
