"""Step cache (first-block residual cache): DiT work saved vs quality lost, on the embedded model.

    python benchmarks/step_cache.py [--configs 0.1,0.15,0.3:4:2] [--suite shapes-heldout]
        [--limit N] [--timing-runs 5] [--json out.json]

A config is THRESHOLD[:WARMUP[:MAX_SKIPS]] (`StepCache` fields; 1:4:2 skips on a fixed schedule,
two calls of every three after four, whatever the change: the baseline a criterion must beat).
For every config, in one run on this machine: the held-out oracle suite is generated with the
model's defaults and the cache (each prompt its own seed), and scored with the exact shapes oracle
(every attribute and whole prompt, as `tubelet eval oracle`); each clip is also compared with the
uncached clip of the same prompt and seed (PSNR over all frames, uint8). "full calls" is the mean
number of model calls per clip that ran every block (the rest ran the first block only); "DiT
evaluations saved" is steps / full calls. Wall time: `--timing-runs` prompts generated one at a time
(batch 1, after a warm-up), median seconds per clip including text encoding and VAE decoding,
interleaved across thresholds so that a busy machine does not favour one.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.devices import cpu_name


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="0.1,0.15,0.2,0.3,0.2:4:2,0.3:4:2,1:4:2")
    ap.add_argument("--suite", default="shapes-heldout")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--timing-runs", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from tubelet.diffusion.step_cache import StepCache
    from tubelet.pipelines import load_pipeline
    from tubelet.recipes.shapes import suite_path
    from tubelet.recipes.shapes.oracle import aggregate, read_suite, score_clip

    def config(spec: str) -> StepCache:
        parts = spec.split(":")
        return StepCache(float(parts[0]), *(int(p) for p in parts[1:]))

    thresholds: list[StepCache | None] = [None] + [config(x) for x in args.configs.split(",")]
    pipe = load_pipeline(device="cpu")
    items = read_suite(suite_path(Path(args.suite)))[: args.limit]
    rows: list[dict[str, Any]] = []
    reference: list[np.ndarray] = []
    for thr in thresholds:
        t0 = time.perf_counter()
        results, frames, full = [], [], []
        outs: list[Any] = []
        for i in range(0, len(items), args.batch_size):
            chunk = items[i : i + args.batch_size]
            got = pipe([it.prompt for it in chunk], seed=[it.seed for it in chunk], cache=thr, progress=False)
            outs.extend(got if isinstance(got, list) else [got])
        for it, out in zip(items, outs):
            res = score_clip(out.frames, it.prompt)
            if it.lang is not None:
                res.lang = it.lang
            results.append(res)
            frames.append(out.frames)
            full.append(
                out.metadata["cache"]["full_calls"]
                if thr is not None
                else out.metadata["num_inference_steps"]
            )
        if thr is None:
            reference = frames
        rep = aggregate(results)
        steps = pipe.config.num_inference_steps
        row = {
            "cache": None if thr is None else f"{thr.threshold:g}:{thr.warmup}:{thr.max_skips}",
            "whole_prompt": round(100 * rep["whole_prompt"], 1),
            "attributes": round(100 * rep["accuracy"], 1),
            **{k: round(100 * v["accuracy"], 1) for k, v in rep["per_attribute"].items()},
            "full_calls": round(statistics.mean(full), 2),
            "evals_saved": round(steps / statistics.mean(full), 2),
            "psnr_mean": round(statistics.mean(psnr(a, b) for a, b in zip(frames, reference)), 2),
            "psnr_min": round(min(psnr(a, b) for a, b in zip(frames, reference)), 2),
            "suite_seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    # wall time, batch 1, interleaved
    times: dict[str, list[float]] = {str(t): [] for t in thresholds}
    pipe(items[0].prompt, seed=0, progress=False)  # warm-up
    for it in items[: args.timing_runs]:
        for thr in thresholds:
            t0 = time.perf_counter()
            pipe(it.prompt, seed=it.seed, cache=thr, progress=False)
            times[str(thr)].append(time.perf_counter() - t0)
    base = statistics.median(times["None"])
    for row in rows:
        med = statistics.median(times[str(thresholds[rows.index(row)])])
        row["seconds_per_clip"] = round(med, 3)
        row["speedup"] = round(base / med, 2)
    out = {
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "suite": args.suite,
        "clips": len(items),
        "steps": pipe.config.num_inference_steps,
        "sampler": pipe.config.sampler,
        "guidance": pipe.config.guidance_scale,
        "rows": rows,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
