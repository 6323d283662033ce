"""The worker of `tubelet serve`: one process per device that loads the model once and runs jobs in order.

It talks to the web server only through the job database (`tubelet.serve.store`) and the files under
the data directory (`DataDir`). Per step it records progress (and checks the cancel flag); while
someone watches a job it decodes a small preview of the current clean-latent estimate every
`preview_every` steps. Results are written into a temporary folder and renamed into place, so a
result folder is either complete or absent.

The worker dies with its server (Linux: PR_SET_PDEATHSIG; elsewhere it notices at its next step),
and holds `worker.lock` while it runs, so two workers never share one data directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tubelet.serve.store import Job, JobStore

log = logging.getLogger("tubelet.serve")

UPLOAD_FIELDS = ("image", "last_image", "video", "video_b")
PREVIEW_SIDE = 128  # previews: this many pixels on the long side, up to 4 frames side by side


@dataclass(frozen=True)
class DataDir:
    """Where `tubelet serve` keeps its state: the database, uploads, results and previews."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "jobs.sqlite"

    def uploads(self, job_id: str) -> Path:
        return self.root / "uploads" / job_id

    def result(self, job_id: str) -> Path:
        return self.root / "results" / job_id

    def preview(self, job_id: str) -> Path:
        return self.root / "previews" / f"{job_id}.png"

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    def remove_job_files(self, job_id: str) -> None:
        for d in (self.uploads(job_id), self.result(job_id)):
            shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.preview(job_id).unlink()


# Seconds from the last sampling step to the written result (decode + encode), per task, last job.
_TAIL_SECONDS: dict[str, float] = {}


class _Cancelled(Exception):
    pass


class _Stopping(Exception):
    pass


def request_for(job: Job, files: DataDir) -> dict[str, Any]:
    """The job's request with its uploads as file paths (the only paths a job ever names)."""
    req = dict(job.request)
    for field, name in job.uploads.items():
        if field in UPLOAD_FIELDS:
            req[field] = str(files.uploads(job.id) / name)
    return req


def model_info(pipe: Any, name: str) -> dict[str, Any]:
    """What the page and `/v1/models` show: the model's defaults and abilities."""
    from tubelet.diffusion.sampling import SAMPLERS
    from tubelet.pipelines.request import TASKS

    cfg = pipe.config
    tasks = list(TASKS) if pipe.vae is not None else ["t2v"]
    return {
        "id": name,
        "object": "model",
        "defaults": {
            "num_frames": cfg.num_frames,
            "height": cfg.height,
            "width": cfg.width,
            "num_inference_steps": cfg.num_inference_steps,
            "guidance_scale": cfg.guidance_scale,
            "sampler": cfg.sampler,
            "negative_prompt": cfg.negative_prompt,
        },
        "fps": cfg.fps,
        "frame_counts": pipe.frame_counts(8),
        "tasks": tasks,
        "samplers": sorted(SAMPLERS),
        "box_control": bool(pipe.has_box_control),
        "device": str(pipe.device),
        "runtime": pipe.runtime_metadata(),  # offload / quantize / dtype / compile, as the worker runs it
    }


def run_job(
    pipe: Any,
    store: JobStore,
    job: Job,
    files: DataDir,
    *,
    preview_every: int = 4,
    should_stop: Any = None,
) -> str:
    """Run one claimed job to its end; returns the final status (or "requeued" when stopping)."""
    from tubelet.errors import TubeletError
    from tubelet.pipelines import GenerationRequest

    passes = 2 if job.request.get("task") == "loop" else 1
    t0 = last_step = time.perf_counter()
    count = 0

    def callback(i: int, n: int, x: Any, denoised: Any) -> None:
        nonlocal count, last_step
        count += 1
        total = n * passes
        last_step = time.perf_counter()
        # the steps left at the mean pace so far, plus decoding and writing as long as last time
        eta = (last_step - t0) / count * max(total - count, 0) + _TAIL_SECONDS.get(
            str(job.request.get("task")), 0.0
        )
        if store.progress(job.id, count, total, round(eta, 2)):
            raise _Cancelled
        if should_stop is not None and should_stop():
            raise _Stopping
        if preview_every > 0 and count % preview_every == 0 and count < total and store.wants_preview(job.id):
            write_preview(pipe, denoised, files.preview(job.id))
            store.preview(job.id, count)

    notes: list[str] = []
    try:
        request = GenerationRequest.from_dict(request_for(job, files))
        result = pipe.generate(request, callback=callback, progress=False, on_note=notes.append)
        write_result(result, files.result(job.id))
        _TAIL_SECONDS[str(job.request.get("task"))] = time.perf_counter() - last_step
    except _Cancelled:
        store.finish(job.id, "cancelled")
        return "cancelled"
    except _Stopping:
        store.requeue(job.id)
        return "requeued"
    except TubeletError as e:
        store.finish(job.id, "failed", error=str(e))
        return "failed"
    except Exception as e:  # a bug, or out of memory: the job fails with the CLI's one-line message
        from tubelet.cli import describe_error

        message, _ = describe_error(e)
        log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        store.finish(job.id, "failed", error=message.removeprefix("error: "))
        return "failed"
    meta = result.metadata
    store.finish(
        job.id,
        "completed",
        result={
            "seed": meta.get("request", {}).get("seed"),
            "num_frames": int(result.frames.shape[0]),
            "height": int(result.frames.shape[1]),
            "width": int(result.frames.shape[2]),
            "fps": result.fps,
            "notes": notes,
            "seconds": round(time.perf_counter() - t0, 3),
            **({"cache": meta["cache"]} if "cache" in meta else {}),
        },
    )
    return "completed"


def write_result(result: Any, folder: Path) -> None:
    """video.mp4 (+ its sidecar .json) and thumbnail.png, into a temporary folder renamed into place."""
    from PIL import Image

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    result.save(tmp / "video.mp4")
    frames = result.frames
    Image.fromarray(frames[len(frames) // 2]).save(tmp / "thumbnail.png")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def write_preview(pipe: Any, denoised: Any, path: Path) -> None:
    """Up to 4 frames of the clean-latent estimate, each decoded alone, side by side, small."""
    import numpy as np
    import torch
    from PIL import Image

    from tubelet.media import unit_to_frames

    z = denoised[:1].float()
    f = z.shape[2]
    idx = sorted({round(i * (f - 1) / 3) for i in range(4)}) if f > 1 else [0]
    zs = z[:, :, idx].permute(2, 1, 0, 3, 4)  # (k, C, 1, H', W'): every latent frame alone
    with torch.no_grad():
        video = pipe.decode(zs)  # (k, 3, T, H, W)
    frames = unit_to_frames(video[:, :, 0].permute(0, 2, 3, 1)).cpu().numpy()  # (k, H, W, 3)
    h, w = frames.shape[1:3]
    scale = PREVIEW_SIDE / max(h, w)  # small models are enlarged (nearest: no invented detail)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    tiles = [np.asarray(Image.fromarray(fr).resize(size, resample)) for fr in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.concatenate(tiles, axis=1)).save(tmp, format="PNG")
    os.replace(tmp, path)


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent dies (kill -9 included)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def worker_main(
    root: str,
    model: str | None,
    device: str,
    parent_pid: int,
    preview_every: int,
    stop_event: Any,
    threads: int | None = None,
    runtime: dict[str, str] | None = None,
) -> None:
    """The worker process: load the model once, then run queued jobs until told to stop.
    runtime: how to run it (`ServeConfig.runtime`: offload, quantize, dtype)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server, which stops us in order
    files = DataDir(Path(root))
    logging.basicConfig(
        filename=str(files.worker_log), level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    import fcntl

    lock = open(files.root / "worker.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # waits for an older worker of this data directory to be gone
    store = JobStore(files.db)
    store.set_meta("worker", {"state": "loading", "pid": os.getpid(), "since": time.time()})
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        from tubelet.devices import resolve_dtype
        from tubelet.pipelines import load_pipeline
        from tubelet.pipelines.loading import default_model_dir

        rt = runtime or {}
        pipe = load_pipeline(
            model,
            device=device,
            offload=rt.get("offload"),
            dtype=resolve_dtype(rt.get("dtype", "auto"), device),
        )
        if rt.get("quantize"):
            pipe.quantize(rt["quantize"])
        name = Path(model).name if model else default_model_dir().name
        store.set_meta("model", model_info(pipe, name))
    except BaseException as e:
        from tubelet.cli import describe_error

        message, _ = describe_error(e)
        log.error("loading the model failed:\n%s", traceback.format_exc())
        store.set_meta("worker", {"state": "error", "error": message.removeprefix("error: ")})
        sys.exit(3)
    store.set_meta("worker", {"state": "ready", "pid": os.getpid(), "since": time.time()})
    log.info("model %s loaded on %s", name, pipe.device)

    def should_stop() -> bool:
        return bool(stop_event.is_set()) or os.getppid() != parent_pid

    while not should_stop():
        job = store.claim()
        if job is None:
            stop_event.wait(0.1)
            continue
        log.info("job %s started", job.id)
        status = run_job(pipe, store, job, files, preview_every=preview_every, should_stop=should_stop)
        log.info("job %s %s", job.id, status)
