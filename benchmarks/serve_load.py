"""Load on `tubelet serve`: concurrent clients, many jobs, status latency and throughput vs `pipe()`.

    python benchmarks/serve_load.py                         # 20 clients, 200 jobs, the embedded model
    python benchmarks/serve_load.py --clients 4 --jobs 20   # quicker

1. Baseline: `--baseline` back-to-back `pipe.generate(...)` + `result.save(...)` calls in this process
   (the same work the worker does for a job), with the server idle.
2. Load: a `tubelet serve` subprocess; `--clients` threads share `--jobs` submissions (each client posts
   its jobs, retrying on 429) and then polls its jobs' status every `--poll` seconds until all end.
   Every status request made while the worker was busy counts for the latency percentiles.
3. Checks: every job completed, ids unique, the server lists exactly these jobs, every mp4 downloads.
   Throughput: jobs / (last completion - first start), as a ratio to the baseline's clips per second.

Prints a JSON summary (and writes it to --out when given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "a big red circle moving right",
    "a small blue square moving up on a black background",
    "a green triangle moving left and a yellow circle moving down",
    "一个向右移动的大红圆",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def baseline(n: int, steps: int | None, work: Path) -> float:
    """Seconds per clip of back-to-back generate + save (the worker's work per job)."""
    from tubelet.pipelines import GenerationRequest, load_pipeline

    pipe = load_pipeline(None, device="cpu")
    pipe.generate(GenerationRequest(PROMPTS[0], seed=0, num_inference_steps=steps), progress=False)  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        r = pipe.generate(
            GenerationRequest(PROMPTS[i % len(PROMPTS)], seed=i, num_inference_steps=steps), progress=False
        )
        r.save(work / f"base-{i}.mp4")
    return (time.perf_counter() - t0) / n


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps per job (default: the model's)")
    ap.add_argument("--baseline", type=int, default=20, help="back-to-back pipe() calls for the baseline")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between a client's status requests")
    ap.add_argument(
        "--poll-all", action="store_true", help="poll every pending job each round, not the oldest"
    )
    ap.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        per_clip = baseline(args.baseline, args.steps, work)
        print(
            f"baseline: {per_clip:.3f} s per clip ({args.baseline} back-to-back generate + save)",
            file=sys.stderr,
        )

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tubelet",
                "serve",
                "--data-dir",
                str(work / "data"),
                "--port",
                str(port),
                "--device",
                "cpu",
                "--max-queue",
                str(args.jobs + 10),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            end = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=2).json()["worker"] == "ready":
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > end or server.poll() is not None:
                    raise SystemExit("the server did not come up")
                time.sleep(0.2)
            result = load(base, args)
        finally:
            server.terminate()
            server.wait(30)
        result.update(
            {
                "baseline_seconds_per_clip": round(per_clip, 4),
                "baseline_clips_per_second": round(1 / per_clip, 4),
                "throughput_ratio": round(result["jobs_per_second"] * per_clip, 4),
                "steps": args.steps,
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "date": time.strftime("%Y-%m-%d"),
            }
        )
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(base: str, args: argparse.Namespace) -> dict[str, Any]:
    counts = [
        args.jobs // args.clients + (1 if i < args.jobs % args.clients else 0) for i in range(args.clients)
    ]
    ids: list[list[str]] = [[] for _ in range(args.clients)]
    latencies: list[float] = []
    retries = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + args.timeout

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            for j in range(counts[k]):
                body = {"prompt": PROMPTS[(k + j) % len(PROMPTS)], "seed": 1000 * k + j}
                if args.steps:
                    body["num_inference_steps"] = args.steps
                while True:
                    r = c.post("/v1/videos", json=body)
                    if r.status_code != 429:
                        break
                    with lock:
                        retries[0] += 1
                    time.sleep(float(r.headers.get("retry-after", "1")))
                r.raise_for_status()
                ids[k].append(r.json()["id"])
            # Wait for the jobs in order: poll the oldest one not yet ended (or, with --poll-all,
            # every pending job) every --poll seconds.
            pending = list(ids[k])
            while pending and time.monotonic() < deadline:
                for jid in list(pending) if args.poll_all else pending[:1]:
                    t0 = time.perf_counter()
                    r = c.get(f"/v1/videos/{jid}")
                    dt = time.perf_counter() - t0
                    job = r.json()
                    with lock:
                        latencies.append(dt)
                    if job["status"] in ("completed", "failed", "cancelled"):
                        pending.remove(jid)
                        if not args.poll_all:
                            continue
                time.sleep(args.poll)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    all_ids = [i for chunk in ids for i in chunk]
    with httpx.Client(base_url=base, timeout=30) as c:
        listed: list[dict[str, Any]] = []
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100, "order": "asc"}
            if after:
                params["after"] = after
            page = c.get("/v1/videos", params=params).json()
            listed += page["data"]
            if not page["has_more"]:
                break
            after = page["last_id"]
        statuses: dict[str, int] = {}
        for v in listed:
            statuses[v["status"]] = statuses.get(v["status"], 0) + 1
        downloaded = sum(1 for jid in all_ids if len(c.get(f"/v1/videos/{jid}/content").content) > 0)
    started = min(v["started_at"] for v in listed if v["started_at"])
    finished = max(v["completed_at"] for v in listed if v["completed_at"])
    lat_ms = [x * 1000 for x in latencies]
    return {
        "clients": args.clients,
        "poll_seconds": args.poll,
        "poll_all": args.poll_all,
        "jobs_submitted": len(all_ids),
        "jobs_unique": len(set(all_ids)),
        "jobs_listed": len(listed),
        "listed_equals_submitted": sorted(v["id"] for v in listed) == sorted(all_ids),
        "statuses": statuses,
        "downloaded": downloaded,
        "retries_429": retries[0],
        "wall_seconds": round(wall, 2),
        "jobs_per_second": round(len(listed) / (finished - started), 4),
        "worker_seconds_per_job": round(
            statistics.mean(v["result"]["seconds"] for v in listed if v["result"]), 4
        ),
        "status_requests": len(lat_ms),
        "status_latency_ms": {
            "p50": round(statistics.median(lat_ms), 2),
            "p99": round(percentile(lat_ms, 99), 2),
            "max": round(max(lat_ms), 2),
        },
    }


if __name__ == "__main__":
    main()
