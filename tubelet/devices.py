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
    elif dev.type == "cpu" and dev.index not in (None, 0):
        raise DeviceError(f"device {requested!r}: the CPU has no index (use --device cpu)")
    return dev


# ------------------------------------------------------------------------------------------------
# Memory estimates: refuse work that cannot fit, before allocating it


class MemoryEstimateError(DeviceError):
    """A job's estimated memory is more than the device has available."""


MEMORY_CHECK_ENV = "TUBELET_MEMORY_CHECK"


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can still get on `device` (None: unknown, e.g. MPS)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            import os

            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(needed: float, device: torch.device, what: str, *, lower: str) -> None:
    """MemoryEstimateError when `needed` bytes (an estimate) exceed what `device` has available.

    `lower` says what the user can reduce. Set TUBELET_MEMORY_CHECK=off to skip the check (the
    estimate is deliberately rough; swap, unified memory or offloading may make more room).
    """
    import os

    if os.environ.get(MEMORY_CHECK_ENV, "on").strip().lower() in ("0", "off", "false", "no"):
        return
    avail = available_memory(device)
    if avail is None or needed <= avail:
        return
    raise MemoryEstimateError(
        f"{what} needs about {format_bytes(needed)} of memory, but {device} has {format_bytes(avail)} "
        f"available; lower {lower}, or set {MEMORY_CHECK_ENV}=off to try anyway"
    )


def cpu_name() -> str:
    """The CPU's model name as `lscpu` reports it (for benchmark reports), or a fallback."""
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(name: str, device: str | torch.device = "auto") -> torch.dtype | None:
    """The DiT compute dtype for a user's `name` on `device` (None: float32, the pipelines' default).

    "auto": bfloat16 on a CUDA GPU that has it, float32 elsewhere (CPUs keep float32 by default: the
    embedded model's published outputs were made so; bfloat16 is a choice, faster on wide models).
    """
    from tubelet.errors import ConfigError

    if name not in DTYPE_NAMES:
        raise ConfigError(f"--dtype must be {', '.join(DTYPE_NAMES)}; got {name!r}")
    if name == "auto":
        dev = resolve_device(device) if isinstance(device, str) else device
        return torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
