"""Peak memory of VAE decoding: flat in clip length (causal chunks), bounded in resolution (tiles).

    python benchmarks/vae_memory.py [--base-dim 96] [--size 240x416] [--frames 17,33,65,129]
        [--tile-size 480x832] [--tile 32] [--overlap 8]

The Wan2.1 VAE layout (`VAE_PRESETS["wan2.1"]`, random weights; `--base-dim` scales its width, 96 is
Wan2.1's own), decoding on the CPU. Every measurement runs in a fresh process: peak resident memory
(`ru_maxrss`) during the decode minus the resident memory just before it (model and latents already
there), so the number is what decoding adds: its activations plus the output clip itself
(129 frames of 240x416 in float32 are 155 MB of the total). Part 1 decodes `--frames` at `--size`;
part 2 decodes 17 frames at `--tile-size` whole and tiled, and reports their difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time


def rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb * 1024


def child(args: argparse.Namespace) -> None:
    import torch

    from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE
    from tubelet.models.vae_tiling import VAETiling, decode_tiled

    torch.manual_seed(0)
    cfg = dataclasses.replace(VAE_PRESETS["wan2.1"], base_dim=args.base_dim)
    vae = CausalVideoVAE(cfg).eval()
    h, w = (int(v) for v in args.size.split("x"))
    lf = 1 + (args.frames - 1) // 4
    z = torch.randn(1, cfg.z_dim, lf, h // 8, w // 8)
    before = rss()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = vae.decode(z) if not args.tile else decode_tiled(vae, z, VAETiling(args.tile, args.overlap))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    res = {"frames": int(out.shape[2]), "size": args.size, "tile": args.tile, "peak_added_mb": round((peak - before) / 2**20, 1),
           "output_mb": round(out.numel() * 4 / 2**20, 1), "seconds": round(seconds, 1)}  # fmt: skip
    if args.compare:
        with torch.no_grad():
            whole = vae.decode(z)
        d = (out - whole).abs()
        res.update(max_diff=round(float(d.max()), 5), mean_diff=round(float(d.mean()), 6))
    print(json.dumps(res))


def run(extra: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *extra], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-dim", type=int, default=96)
    ap.add_argument("--size", default="240x416")
    ap.add_argument("--frames", default="17,33,65,129")
    ap.add_argument("--tile-size", default="480x832")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.child:
        ap.add_argument("--frames-one", type=int)
        child(argparse.Namespace(**{**vars(args), "frames": int(args.frames)}))
        return
    common = ["--base-dim", str(args.base_dim), "--overlap", str(args.overlap)]
    rows = []
    for f in args.frames.split(","):
        rows.append(run([*common, "--size", args.size, "--frames", f, "--tile", "0"]))
        print(json.dumps(rows[-1]), flush=True)
    for tile in (0, args.tile):
        extra = ["--compare"] if tile else []
        rows.append(run([*common, "--size", args.tile_size, "--frames", "17", "--tile", str(tile), *extra]))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "base_dim": args.base_dim, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
