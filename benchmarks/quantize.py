"""DiT forward speed, weight memory and output error: float32, bfloat16, int8 / fp8 weights, compile.

    python benchmarks/quantize.py [--config wan2.1-1.3b] [--layers 2] [--latent 3x30x52] [--repeats 7]
        [--variants fp32,bf16,int8,int8-bf16,fp8-bf16,compile,compile-bf16] [--device cpu]

One process, one DiT at the `--config` preset's width (random weights, `--layers` of its blocks: the
per-block numbers are what matter, a full model is `num_layers` times the blocks), CFG batch 2 with
512 text tokens, on latents `--latent` (F' x H' x W'; 3x30x52 = 9 frames of 240x416 = 1,170 tokens).
Each variant is its own copy of the same weights; the runs are interleaved (one call of each variant
per round) and the median is reported. Error: ||out - fp32|| / ||fp32|| on the same inputs.
Weights: bytes of the blocks' parameters as stored (a quantized weight counts its int8/fp8 data
and its scales).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
import warnings
from typing import Any

import torch

from tubelet.diffusion.cond import Cond


def stored_bytes(module: torch.nn.Module) -> int:
    """Bytes of `module`'s parameters as stored (torchao tensors: their inner tensors)."""
    total = 0
    for p in module.parameters():
        t = p.data if isinstance(p, torch.nn.Parameter) else p
        if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
            names, _ = t.__tensor_flatten__()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="wan2.1-1.3b")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--latent", default="3x30x52")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--variants", default="fp32,bf16,int8,int8-bf16,fp8-bf16,compile,compile-bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="Also write the results here.")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from tubelet.devices import cpu_name
    from tubelet.kernels import apply_cpu_kernels
    from tubelet.kernels.quant import compile_blocks, quantize_blocks
    from tubelet.models.dit import DIT_PRESETS, VideoDiT

    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = dataclasses.replace(DIT_PRESETS[args.config], num_layers=args.layers)
    base = VideoDiT(cfg)
    base.init_weights(zero_head=False)
    base = base.eval().to(dev)
    f, h, w = (int(v) for v in args.latent.split("x"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, f, h, w, generator=g).to(dev)
    t = torch.tensor([700.0, 700.0], device=dev)
    ctx = torch.randn(2, 512, cfg.text_dim, generator=g).to(dev)
    cond = Cond(context=ctx, context_mask=torch.ones(2, 512, dtype=torch.bool, device=dev))

    variants: dict[str, tuple[Any, torch.dtype | None]] = {}
    for name in args.variants.split(","):
        m = copy.deepcopy(base)
        low = torch.bfloat16 if name.endswith("bf16") else None
        if dev.type == "cpu" and not name.startswith("compile"):
            apply_cpu_kernels(m, skip=("time_mod",))
        if name.startswith(("int8", "fp8")):
            if low is not None:
                m = m.to(low)
            quantize_blocks(m.blocks, name.split("-")[0], dev)
        elif name == "bf16":
            m = m.to(torch.bfloat16)
        elif name.startswith("compile"):
            if low is not None:
                m = m.to(low)
            compile_blocks(m.blocks)
        elif name != "fp32":
            raise SystemExit(f"unknown variant {name}")
        variants[name] = (m, low)

    def call(name: str) -> torch.Tensor:
        m, low = variants[name]
        with (
            torch.inference_mode(),
            torch.autocast(dev.type, dtype=low or torch.float32, enabled=low is not None),
        ):
            out = m(x, t, cond)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out.float()

    ref = call("fp32") if "fp32" in variants else None
    first: dict[str, float] = {}
    outs: dict[str, torch.Tensor] = {}
    for name in variants:  # warm-up (compile happens here)
        t0 = time.perf_counter()
        outs[name] = call(name)
        first[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(args.repeats):
        for name in variants:
            t0 = time.perf_counter()
            call(name)
            times[name].append(time.perf_counter() - t0)
    tokens = f * h * w // (cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
    print(
        f"{args.config} width, {args.layers} blocks, {tokens} tokens, batch 2, on {args.device} ({cpu_name() if dev.type == 'cpu' else torch.cuda.get_device_name(dev)}), torch {torch.__version__}"
    )
    print(f"{'variant':14} {'ms/call':>9} {'vs fp32':>8} {'block MB':>9} {'rel err':>9} {'first call s':>12}")
    rows = []
    fp32_ms = statistics.median(times["fp32"]) * 1000 if "fp32" in times else None
    for name in variants:
        ms = statistics.median(times[name]) * 1000
        mb = stored_bytes(variants[name][0].blocks) / 2**20 / args.layers
        err = float((outs[name] - ref).norm() / ref.norm()) if ref is not None else float("nan")
        speed = fp32_ms / ms if fp32_ms else float("nan")
        print(f"{name:14} {ms:9.1f} {speed:7.2f}x {mb:9.1f} {err:9.2e} {first[name]:12.1f}")
        rows.append(
            {
                "variant": name,
                "ms": ms,
                "speed_vs_fp32": speed,
                "block_mb": mb,
                "rel_err": err,
                "first_s": first[name],
            }
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {"config": args.config, "layers": args.layers, "tokens": tokens, "rows": rows}, fh, indent=1
            )


if __name__ == "__main__":
    main()
