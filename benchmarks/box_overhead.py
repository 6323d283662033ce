"""Time per clip with box control vs without, on one model, in one process (a ratio).

    python benchmarks/box_overhead.py [--model DIR] [--runs 6] [--tracks 2]

Without --model: the embedded default model, with an untrained box adapter attached for the boxed
runs (the adapter's compute does not depend on its weights). Clips alternate between the two, each
at the model's defaults; the report is the median seconds per clip of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--tracks", type=int, default=2)
    args = ap.parse_args()

    from tubelet.models.box_adapter import BoxAdapter, BoxAdapterConfig, BoxedDiT
    from tubelet.pipelines import load_pipeline

    plain = load_pipeline(args.model)
    boxed = load_pipeline(args.model)
    if not boxed.has_box_control:
        base = boxed.transformer
        boxed.transformer = BoxedDiT(base, BoxAdapter(BoxAdapterConfig.for_dit(base.config))).eval()
        if base.patch_embed.weight.device.type == "cpu":
            from tubelet.kernels import apply_cpu_kernels

            apply_cpu_kernels(boxed.transformer.adapter)
    if plain.has_box_control:  # a box model: the same model without boxes is the baseline
        plain = boxed
    prompt = "a red circle moving right and a blue square moving left"
    n = plain.config.num_frames
    tracks = [
        {
            "object": k,
            "keyframes": [
                [0, 0.1, 0.1 + 0.4 * k, 0.3, 0.3 + 0.4 * k],
                [n - 1, 0.7, 0.1 + 0.4 * k, 0.9, 0.3 + 0.4 * k],
            ],
        }
        for k in range(args.tracks)
    ]
    plain(prompt, seed=0, progress=False)  # warm up both
    boxed(prompt, seed=0, boxes=tracks, progress=False)
    times: dict[str, list[float]] = {"without": [], "with": []}
    for i in range(args.runs):
        for name in ("without", "with") if i % 2 == 0 else ("with", "without"):
            t0 = time.perf_counter()
            if name == "with":
                boxed(prompt, seed=i, boxes=tracks, progress=False)
            else:
                plain(prompt, seed=i, progress=False)
            times[name].append(time.perf_counter() - t0)
    a, b = statistics.median(times["without"]), statistics.median(times["with"])
    report = {
        "model": args.model or "embedded default (+ untrained adapter)",
        "tracks": args.tracks,
        "threads": torch.get_num_threads(),
        "seconds_per_clip_without_boxes": round(a, 3),
        "seconds_per_clip_with_boxes": round(b, 3),
        "ratio": round(b / a, 3),
        "all": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
