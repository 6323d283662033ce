"""A trial step per frame bucket before the first real one: which bucket will not fit, said up front.

Long clips are where fine-tuning runs die: a run whose 81-frame bucket does not fit would
otherwise crash with a CUDA out-of-memory error at whatever step first draws that bucket, maybe
hours in. `probe_buckets` runs one forward + backward per bucket, smallest first, on a synthetic
batch of that bucket's shape (zeros; the real batch's captions and text embeddings), measures the
peak memory, adds the AdamW state the first optimizer step will allocate, and raises a
`TrainingError` naming the bucket when it will not fit.

The trial changes nothing: gradients are dropped, the optimizer never steps, the run's random
streams are untouched (a throwaway generator; the global RNG forked), so a run with the check is
bit-identical to one without. ``TrainConfig.memory_check``: ``"auto"`` (CUDA only, the default),
``"on"`` (also on the CPU, where only the out-of-memory error itself is caught), ``"off"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tubelet.data.buckets import Bucket
from tubelet.errors import TrainingError

log = logging.getLogger("tubelet.train")

__all__ = ["BucketPeak", "probe_buckets", "shortfall", "synthetic_batch"]

# Headroom kept free of the device's total: the caching allocator fragments, and kernels
# (cuDNN/flash workspaces, NCCL buffers) allocate outside what a single trial step shows.
HEADROOM = 0.05


@dataclass
class BucketPeak:
    bucket: Bucket
    peak_bytes: int | None  # None where the device has no memory statistics (CPU)


def _describe(b: Bucket) -> str:
    return f"{b.frames}x{b.height}x{b.width} (batch {b.batch_size})"


def synthetic_batch(template: dict[str, Any], bucket: Bucket, codec: Any) -> dict[str, Any]:
    """A batch of `bucket`'s shape in the form of `template` (a real batch of the run's data):
    zero clips or latents, the template's captions and text embeddings cycled to the batch size."""
    n = bucket.batch_size
    rows = [i % len(template["caption"]) for i in range(n)]
    out: dict[str, Any] = {"caption": [template["caption"][i] for i in rows], "bucket": None, "skipped": []}
    t, h, w = bucket.frames, bucket.height, bucket.width
    if "latents" in template:
        c, sf = template["latents"].shape[1], codec.spatial_factor
        shape = (n, c, codec.latent_frames(t), h // sf, w // sf)
        out["latents"] = torch.zeros(shape, dtype=template["latents"].dtype)
    elif "pixels" in template:
        out["pixels"] = torch.zeros((n, 3, t, h, w), dtype=template["pixels"].dtype)
    else:
        out["video"] = torch.zeros((n, 3, t, h, w))
    for key in ("context", "mask"):
        if key in template:
            out[key] = template[key][rows].clone()
    return out


def shortfall(peak: int | None, optimizer_bytes: int, total: int | None) -> str | None:
    """Why a bucket whose trial step peaked at `peak` bytes (-1: out of memory; None: not measured)
    will not fit a device of `total` bytes once the optimizer state is allocated; None if it fits."""
    if peak == -1:
        return "a trial step ran out of memory"
    if peak is None or total is None or peak + optimizer_bytes <= total * (1 - HEADROOM):
        return None
    gib = 2**30
    return (
        f"a trial step peaked at {peak / gib:.1f} GiB and the optimizer state adds "
        f"{optimizer_bytes / gib:.1f} GiB, over the {total * (1 - HEADROOM) / gib:.1f} GiB usable of "
        f"{total / gib:.1f} GiB"
    )


def probe_buckets(
    step: Callable[[dict[str, Any], torch.Generator], torch.Tensor],
    model: nn.Module,
    buckets: list[Bucket],
    make_batch: Callable[[Bucket], dict[str, Any]],
    device: torch.device,
    *,
    optimizer_bytes: int = 0,
    generator_device: torch.device | None = None,
) -> list[BucketPeak]:
    """Run `step(batch, generator)` (forward, returning the loss) + backward once per bucket,
    smallest first; raise a TrainingError naming the first bucket that does not fit (module doc).

    `optimizer_bytes`: state the first optimizer step will still allocate (AdamW's two moments),
    added to each measured peak before comparing with the device's memory.
    """
    order = sorted(buckets, key=lambda b: b.frames * b.height * b.width * b.batch_size)
    cuda = device.type == "cuda"
    total = torch.cuda.get_device_properties(device).total_memory if cuda else None
    gen = torch.Generator(device=generator_device or torch.device("cpu")).manual_seed(0)
    peaks: list[BucketPeak] = []
    rng_devices = [device] if cuda else []
    for bucket in order:
        with torch.random.fork_rng(devices=rng_devices):
            try:
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                loss = step(make_batch(bucket), gen)
                loss.backward()
                peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
            except torch.OutOfMemoryError:
                peak = -1
            finally:
                for p in model.parameters():
                    p.grad = None
                loss = None  # type: ignore[assignment]
                if cuda:
                    torch.cuda.empty_cache()
        reason = shortfall(peak, optimizer_bytes, total)
        if reason is not None:
            gib = 2**30
            fitted = [f"{_describe(p.bucket)}: {p.peak_bytes / gib:.1f} GiB" for p in peaks if p.peak_bytes]
            raise TrainingError(
                f"bucket {_describe(bucket)} will not fit on {device}: {reason}. Lower that bucket's "
                "batch_size or frames, turn on grad_checkpointing, or train in bf16 (precision: bf16)"
                + (f"; measured before it: {', '.join(fitted)}" if fitted else "")
                + ". Set memory_check: off to skip this check."
            )
        peaks.append(BucketPeak(bucket, peak))
        if peak is not None:
            log.info("bucket %s: trial step peak %.2f GiB", _describe(bucket), peak / 2**30)
    return peaks
