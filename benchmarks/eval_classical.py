"""Time the classical (no-weights) evaluation dimensions.

Default workload: 100 shapes-world clips of 17 frames at 64x64 (the target is under a minute on a
2-core CPU). Two measurements:

1. in memory: each dimension's ``score`` over all clips (frames already decoded);
2. end to end: ``evaluate_folder`` on the same clips written as mp4 (decode + all dimensions).

    python benchmarks/eval_classical.py [--clips 100] [--frames 17] [--size 64] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

CLASSICAL = ("temporal_flickering", "motion_smoothness", "dynamic_degree", "shapes_oracle")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="cv2.setNumThreads (0: OpenCV's default)")
    args = ap.parse_args()

    import cv2

    from tubelet.eval.dimensions import Clip, make_dimension
    from tubelet.eval.report import evaluate_folder
    from tubelet.media import write_video
    from tubelet.recipes.shapes import make_clip

    if args.threads:
        cv2.setNumThreads(args.threads)
    shapes = [make_clip(i, frames=args.frames, size=args.size) for i in range(args.clips)]
    dims = [make_dimension(n) for n in CLASSICAL]

    timings: dict[str, float] = {}
    scores: dict[str, float | None] = {}
    for dim in dims:
        clips = [Clip(s.frames, fps=s.fps, name=str(i)) for i, s in enumerate(shapes)]  # fresh flow caches
        t0 = time.perf_counter()
        results = [dim.score(c, s.captions["en"]) for c, s in zip(clips, shapes)]
        timings[dim.name] = time.perf_counter() - t0
        scores[dim.name] = dim.aggregate(results)
    # All classical dimensions on shared clips (flow shared by the static filter and dynamic degree).
    clips = [Clip(s.frames, fps=s.fps, name=str(i)) for i, s in enumerate(shapes)]
    t0 = time.perf_counter()
    for c, s in zip(clips, shapes):
        for dim in dims:
            dim.score(c, s.captions["en"])
    together = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = []
        for i, s in enumerate(shapes):
            write_video(root / f"{i:04d}.mp4", s.frames, s.fps, sidecar=False)
            lines.append(json.dumps({"video": f"{i:04d}.mp4", "caption": s.captions["en"]}))
        (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        run = evaluate_folder(root, list(CLASSICAL), progress=False)
        end_to_end = time.perf_counter() - t0

    out = {
        "workload": f"{args.clips} clips x {args.frames} frames x {args.size}x{args.size}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"OpenCV threads {cv2.getNumThreads()}",
        "seconds_per_dimension_in_memory": {k: round(v, 3) for k, v in timings.items()},
        "seconds_all_dimensions_in_memory": round(together, 3),
        "seconds_end_to_end_evaluate_folder": round(end_to_end, 3),
        "scores_in_memory": scores,
        "scores_from_mp4": {k: v["score"] for k, v in run.report["dimensions"].items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
