"""One resolver for every `--device` / `TrainConfig.device` value (generation, evaluation, caching,
training).

    resolve_device("auto")        # cuda (this process's local rank), else mps, else cpu
    resolve_device("cuda:1")      # checked: this torch has CUDA and a device 1
"""

from __future__ import annotations

import torch

from tubelet.errors import DeviceError

_EXAMPLES = "auto, cpu, cuda, cuda:1, mps"


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """A device this torch can use, or one clear `DeviceError`.

    "auto" picks CUDA (device `local_rank`), then Apple's MPS, then any other registered accelerator,
    then the CPU. An explicit value must parse as a torch device whose backend is present; "cuda"
    without an index means the process's `local_rank` (torchrun: one GPU per process)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        acc = getattr(torch, "accelerator", None)
        if acc is not None and acc.is_available():
            cur = acc.current_accelerator()
            if cur is not None and cur.type != "cpu":
                return torch.device(cur.type, local_rank)
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {requested!r} is not a torch device (try {_EXAMPLES})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {requested!r}: this torch ({torch.__version__}) sees no CUDA device "
                "(use --device cpu, or install a CUDA build of torch)"
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {requested!r}: MPS is not available in this torch / on this machine")
    return dev
