"""Time text-to-video generation with a model's default settings (the default model unless --model).

Two measurements:

1. in process: the model is loaded once and warmed up with one clip, then `--runs` clips are generated
   one at a time (different prompts and seeds); reports the median and min/max seconds per clip. This
   excludes process start and model loading.
2. whole process: `tubelet generate PROMPT -o OUT.mp4` run `--cli-runs` times as a subprocess, wall
   time from spawn to exit (Python start, imports, model load, generation, mp4 write).

    python benchmarks/generate_speed.py [--model DIR] [--runs 10] [--cli-runs 3] [--steps S]
        [--guidance G] [--sampler NAME] [--dtype float32|bfloat16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "a red circle moving right",
    "a big blue square moving up and a small yellow triangle staying still, on a white background",
    "一个绿色三角形向左移动",
    "一个小的紫色圆形向下移动和一个橙色正方形向右移动，黑色背景",
    "a small orange triangle moving down, on a gray background",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=None, help="pipeline directory (default: the embedded model)"
    )
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cli-runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype override")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args()

    import torch

    from tubelet.pipelines import TextToVideoPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[args.dtype]
    t0 = time.perf_counter()
    pipe = TextToVideoPipeline.from_pretrained(args.model)
    if dtype is not None:
        pipe.compute_dtype = dtype
    load_s = time.perf_counter() - t0
    kwargs = {
        k: v
        for k, v in (
            ("num_inference_steps", args.steps),
            ("guidance_scale", args.guidance),
            ("sampler", args.sampler),
        )
        if v is not None
    }
    pipe(PROMPTS[0], seed=0, progress=False, **kwargs)  # warm-up (allocations, RoPE tables)
    times = []
    meta = {}
    for i in range(args.runs):
        t0 = time.perf_counter()
        res = pipe(PROMPTS[i % len(PROMPTS)], seed=100 + i, progress=False, **kwargs)
        times.append(time.perf_counter() - t0)
        meta = res.metadata

    cli = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cli_runs):
            cmd = [sys.executable, "-m", "tubelet", "generate", PROMPTS[i % len(PROMPTS)], "--seed", str(i),
                   "-o", str(Path(tmp) / f"{i}.mp4"), "--no-progress"]  # fmt: skip
            if args.model is not None:
                cmd += ["--model", str(args.model)]
            for flag, value in (
                ("--steps", args.steps),
                ("--guidance", args.guidance),
                ("--sampler", args.sampler),
            ):
                if value is not None:
                    cmd += [flag, str(value)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            cli.append(time.perf_counter() - t0)

    out = {
        "model": pipe.source,
        "settings": {
            k: meta.get(k)
            for k in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "sampler")
        },
        "compute_dtype": str(pipe.compute_dtype or "float32 (model weights' dtype)"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_s": round(load_s, 3),
        "seconds_per_clip_median": round(statistics.median(times), 3),
        "seconds_per_clip_min_max": [round(min(times), 3), round(max(times), 3)],
        "runs": args.runs,
        "whole_process_generate_s_median": round(statistics.median(cli), 3) if cli else None,
        "whole_process_generate_s_all": [round(x, 3) for x in cli],
    }
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
