"""The HTTP side of `tubelet serve`: a job API over `GenerationRequest`, the progress stream and the page.

    POST   /v1/videos                 JSON request, or multipart: `request` (JSON) + image/last_image/video/video_b
    GET    /v1/videos?limit=&after=   newest first
    GET    /v1/videos/{id}            status, progress 0-100, ETA, queue position, settings, error
    GET    /v1/videos/{id}/content    ?variant=video (mp4) | gif | thumbnail (png)
    GET    /v1/videos/{id}/preview    the latest preview (png; 204 before the first)
    GET    /v1/videos/{id}/events     Server-Sent Events: started, progress, preview, completed|failed|cancelled
    DELETE /v1/videos/{id}            cancel a queued/running job, or remove a finished one
    GET    /v1/models, /healthz, /docs (OpenAPI), /  (the page)

Errors are JSON ``{"error": {"message", "type", "param"}}`` with 400 (a bad request: the same message
as the CLI), 401 (token), 404, 409 (not finished), 411/413 (upload size), 415, 429 (queue full), 503.
The server never loads the model: its worker process does (`tubelet.serve.worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tubelet.errors import ConfigError, TubeletError, check_choice
from tubelet.serve.store import FINAL, Job, JobStore, is_job_id
from tubelet.serve.worker import UPLOAD_FIELDS, DataDir, worker_main

log = logging.getLogger("tubelet.serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_JSON_BYTES = 1 << 20
STATIC_FILES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "i18n.js": "text/javascript",
    "docs.js": "text/javascript",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; script-src 'self'; "
        "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class ServeConfig:
    """Settings of one `tubelet serve` (the CLI's options)."""

    model: str | None = None  # pipeline directory or run; None: the embedded default model
    data_dir: Path = Path("tubelet-serve")
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    insecure: bool = False
    max_queue: int = 100  # queued + running jobs; more is 429
    max_upload_mb: float = 64.0
    max_prompt_chars: int = 2000
    device: str = "auto"
    preview_every: int = 4  # steps between previews (only while someone watches); 0: none
    worker_threads: int | None = None  # torch threads in the worker (None: torch's default)
    # how the worker runs the model: {"offload": "model"|"blocks", "quantize": "int8"|"fp8", "dtype": ...}
    runtime: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        from tubelet.devices import resolve_dtype
        from tubelet.kernels.quant import QUANT_MODES
        from tubelet.pipelines.offload import OFFLOAD_MODES

        for key, allowed in (("offload", OFFLOAD_MODES), ("quantize", QUANT_MODES)):
            if self.runtime.get(key) is not None:
                check_choice(f"--{key}", self.runtime[key], allowed, ConfigError)
        resolve_dtype(self.runtime.get("dtype", "auto"), "cpu")
        if self.runtime.get("quantize"):
            from tubelet.kernels.quant import _torchao

            _torchao()  # installed? (now, not in the worker)
        if self.host not in LOCAL_HOSTS and not self.token and not self.insecure:
            raise ConfigError(
                f"--host {self.host} makes the server reachable from other machines: set --token TOKEN "
                "(clients send 'Authorization: Bearer TOKEN'), or pass --insecure to serve without one"
            )
        if self.max_queue < 1:
            raise ConfigError(f"--max-queue must be >= 1, got {self.max_queue}")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if self.preview_every < 0:
            raise ConfigError(f"--preview-every must be >= 0, got {self.preview_every}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("--token must have at least 8 characters")


class APIError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


# ---------------------------------------------------------------------------------------------- worker
class Supervisor:
    """Starts the worker process, restarts it when it dies (failing the job it held), stops it."""

    def __init__(self, cfg: ServeConfig, files: DataDir, store: JobStore) -> None:
        self.cfg, self.files, self.store = cfg, files, store
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._stopping = False
        self.proc: Any = None
        self._thread: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="tubelet-serve-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        self.proc = self._ctx.Process(
            target=worker_main,
            args=(
                str(self.files.root),
                self.cfg.model,
                self.cfg.device,
                os.getpid(),
                self.cfg.preview_every,
                self._stop,
                self.cfg.worker_threads,
                dict(self.cfg.runtime),
            ),
            name="tubelet-serve-worker",
            daemon=True,
        )
        self.proc.start()

    def _watch(self) -> None:
        while not self._stopping:
            time.sleep(0.25)
            p = self.proc
            if p is None or p.is_alive() or self._stopping:
                continue
            code = p.exitcode
            state = self.store.get_meta("worker") or {}
            if state.get("state") == "error":  # the model did not load: restarting will not help
                log.error("the worker could not load the model: %s", state.get("error"))
                return
            failed = self.store.fail_running(
                f"the worker process stopped (exit code {code}) while running this job, e.g. out of memory; "
                f"see {self.files.worker_log.name} in the data directory"
            )
            log.error("worker exited with code %s (failed: %s); restarting", code, failed)
            self.restarts += 1
            time.sleep(min(5.0, 0.5 * self.restarts))
            if not self._stopping:
                self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._stop.set()
        p = self.proc
        if p is not None:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(5)


# ---------------------------------------------------------------------------------------------- app
def create_app(cfg: ServeConfig, *, start_worker: bool = True) -> Any:
    """The FastAPI application (the lifespan takes the data directory's lock and runs the worker)."""
    cfg.check()
    files = DataDir(Path(cfg.data_dir).resolve())
    state: dict[str, Any] = {}
    gif_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        lock = _lock_data_dir(files.root)
        store = JobStore(files.db)
        for jid, what in store.recover():
            log.warning("job %s was interrupted by a stop of the server: %s", jid, what)
        store.set_meta("worker", {"state": "starting"})
        state["store"] = store
        try:  # a weightless copy of the model: submitted requests are checked against it
            from tubelet.pipelines.loading import load_pipeline_skeleton

            state["skeleton"] = await asyncio.to_thread(load_pipeline_skeleton, cfg.model)
        except TubeletError as e:  # the worker reports a model that cannot load; jobs wait for it
            log.warning("requests are checked against the model when they run, not now: %s", e)
            state["skeleton"] = None
        sup = Supervisor(cfg, files, store)
        state["supervisor"] = sup
        if start_worker:
            sup.start()
        try:
            yield
        finally:
            sup.stop()
            store.close()
            lock.close()

    app = FastAPI(
        title="tubelet",
        summary="Text-to-video jobs: a queue, progress, previews and results.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # /docs is our own page (below): FastAPI's loads Swagger UI from a CDN
        redoc_url=None,
    )

    def store() -> JobStore:
        return state["store"]

    # -------------------------------------------------------------- errors, headers, auth
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        if e.status == 429:
            headers = {"Retry-After": "5"}
        return JSONResponse(
            {"error": {"message": e.message, "type": e.kind, "param": e.param}},
            status_code=e.status,
            headers=headers,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        return JSONResponse(
            {"error": {"message": str(e.detail), "type": "invalid_request_error", "param": None}},
            status_code=e.status_code,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body", "path"))
        msg = f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg", "invalid"))
        return JSONResponse(
            {"error": {"message": msg, "type": "invalid_request_error", "param": where or None}},
            status_code=400,
        )

    @app.middleware("http")
    async def _headers_and_auth(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if cfg.token and path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), cfg.token.encode()
            ):
                return JSONResponse(
                    {"error": {"message": "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                               "type": "authentication_error", "param": None}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer", **SECURITY_HEADERS},
                )  # fmt: skip
        response: Response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    # -------------------------------------------------------------- helpers
    def get_job(job_id: str) -> Job:
        job = store().get(job_id) if is_job_id(job_id) else None
        if job is None:
            raise APIError(404, f"no video with id {job_id!r}", "not_found_error", "id")
        return job

    def video_object(job: Job) -> dict[str, Any]:
        s = store()
        pos = s.queue_position(job)
        eta = job.eta
        if job.status == "queued":
            mean = s.mean_duration()
            running = s.running_eta()
            eta = None if mean is None else round((running or 0.0) + (pos or 0) * mean + mean, 1)
        progress = 100 if job.status == "completed" else (int(100 * job.step / job.steps) if job.steps else 0)
        base = f"/v1/videos/{job.id}"
        return {
            "id": job.id,
            "object": "video",
            "status": job.status,
            "progress": progress,
            "step": job.step,
            "steps": job.steps,
            "eta_seconds": eta,
            "queue_position": pos,
            "created_at": round(job.created_at, 3),
            "started_at": job.started_at and round(job.started_at, 3),
            "completed_at": job.finished_at and round(job.finished_at, 3),
            "cancel_requested": job.cancel and job.status == "in_progress",
            "settings": job.request,
            "error": job.error,
            "result": job.result,
            "preview_step": job.preview_step,
            "urls": {
                "content": f"{base}/content" if job.status == "completed" else None,
                "gif": f"{base}/content?variant=gif" if job.status == "completed" else None,
                "thumbnail": f"{base}/content?variant=thumbnail" if job.status == "completed" else None,
                "preview": f"{base}/preview",
                "events": f"{base}/events",
            },
        }

    # -------------------------------------------------------------- routes
    @app.get("/healthz", tags=["server"])
    def healthz() -> dict[str, Any]:
        """Liveness, the worker's state (starting | loading | ready | error) and the queue length."""
        worker = store().get_meta("worker") or {}
        return {"status": "ok", "worker": worker.get("state"), "queue": store().active_count()}

    @app.get("/v1/models", tags=["models"])
    def models() -> dict[str, Any]:
        """The served model: its defaults, frame counts, tasks, samplers, and whether it takes boxes."""
        info = store().get_meta("model")
        if info is None:
            worker = store().get_meta("worker") or {}
            if worker.get("state") == "error":
                raise APIError(503, f"the model could not be loaded: {worker.get('error')}", "server_error")
            raise APIError(503, "the model is loading; try again in a moment", "server_error")
        return {"object": "list", "data": [info]}

    @app.post("/v1/videos", tags=["videos"])
    async def create_video(request: Request) -> dict[str, Any]:
        """Queue a clip. JSON: the fields of `GenerationRequest` (prompt, task, negative_prompt, num_frames,
        height, width, num_inference_steps, guidance_scale, sampler, seed, backward, context_latents,
        strength, boxes). Multipart: a `request` part with that JSON plus the files (image, last_image,
        video, video_b)."""
        s = store()
        if s.active_count() >= cfg.max_queue:
            raise APIError(
                429, f"the queue is full ({cfg.max_queue} jobs); try again later", "rate_limit_error"
            )
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        limit = int(cfg.max_upload_mb * (1 << 20))
        uploads: dict[str, bytes] = {}
        if ctype == "multipart/form-data":
            length = request.headers.get("content-length")
            if length is None:
                raise APIError(411, "uploads need a Content-Length header")
            if not length.isdigit() or int(length) > limit * len(UPLOAD_FIELDS) + MAX_JSON_BYTES:
                raise APIError(
                    413,
                    f"the upload is too large: at most {cfg.max_upload_mb:g} MB per file",
                    "request_too_large",
                )
            try:
                form = await request.form(
                    max_files=len(UPLOAD_FIELDS), max_fields=4, max_part_size=MAX_JSON_BYTES
                )
            except Exception as e:
                raise APIError(400, f"the multipart body cannot be read: {e}") from None
            raw = form.get("request")
            if raw is None or not isinstance(raw, str):
                raise APIError(
                    400, "multipart requests need a 'request' field holding the JSON request", param="request"
                )
            data = _parse_json(raw.encode())
            for key, value in form.multi_items():
                if key == "request":
                    continue
                if key not in UPLOAD_FIELDS or isinstance(value, str):
                    raise APIError(
                        400,
                        f"unexpected form field {key!r}; files go in {', '.join(UPLOAD_FIELDS)}",
                        param=key,
                    )
                content = await value.read()
                if len(content) > limit:
                    raise APIError(
                        413,
                        f"{key}: the file is too large: at most {cfg.max_upload_mb:g} MB",
                        "request_too_large",
                        key,
                    )
                uploads[key] = content
        elif ctype in ("application/json", ""):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_JSON_BYTES:
                    raise APIError(
                        413,
                        f"the request is too large: at most {MAX_JSON_BYTES} bytes of JSON",
                        "request_too_large",
                    )
            data = _parse_json(body)
        else:
            raise APIError(415, f"send application/json or multipart/form-data, not {ctype}")
        job_data = await asyncio.to_thread(_check_request, data, uploads, s, cfg, state.get("skeleton"))
        from tubelet.serve.store import new_id

        jid = new_id()
        names: dict[str, str] = {}
        if uploads:
            from tubelet.serve.uploads import UploadError, store_upload

            try:
                for key, content in uploads.items():
                    names[key] = await asyncio.to_thread(store_upload, key, content, files.uploads(jid))
            except UploadError as e:
                shutil.rmtree(files.uploads(jid), ignore_errors=True)
                raise APIError(400, str(e), param=str(e).split(":")[0]) from None
            job_data.update(names)
        if s.active_count() >= cfg.max_queue:
            shutil.rmtree(files.uploads(jid), ignore_errors=True)
            raise APIError(
                429, f"the queue is full ({cfg.max_queue} jobs); try again later", "rate_limit_error"
            )
        job = s.add(job_data, uploads=names, job_id=jid)
        return video_object(job)

    @app.get("/v1/videos", tags=["videos"])
    def list_videos(limit: int = 20, after: str | None = None, order: str = "desc") -> dict[str, Any]:
        """A page of jobs (newest first by default); pass the last id as `after` for the next page."""
        if not 1 <= limit <= 100:
            raise APIError(400, f"limit must be in [1, 100], got {limit}", param="limit")
        if order not in ("asc", "desc"):
            raise APIError(400, f"order must be asc or desc, got {order!r}", param="order")
        if after is not None and get_job(after) is None:
            raise APIError(404, f"no video with id {after!r}", param="after")
        jobs, more = store().list_jobs(limit=limit, after=after, order=order)
        data = [video_object(j) for j in jobs]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    @app.get("/v1/videos/{video_id}", tags=["videos"])
    def get_video(video_id: str) -> dict[str, Any]:
        """Status (queued | in_progress | completed | failed | cancelled), progress, ETA, settings, error."""
        return video_object(get_job(video_id))

    @app.get("/v1/videos/{video_id}/content", tags=["videos"])
    def content(video_id: str, variant: str = "video") -> Response:
        """The finished clip: variant video (mp4), gif, or thumbnail (png of the middle frame)."""
        job = get_job(video_id)
        if variant not in ("video", "gif", "thumbnail"):
            raise APIError(400, f"variant must be video, gif or thumbnail, got {variant!r}", param="variant")
        if job.status != "completed":
            raise APIError(
                409,
                f"video {job.id} is {job.status}; its content is there once it is completed",
                "conflict_error",
            )
        folder = files.result(job.id)
        name = _download_name(job)
        if variant == "thumbnail":
            return FileResponse(folder / "thumbnail.png", media_type="image/png")
        if variant == "gif":
            gif = folder / "video.gif"
            with gif_lock:
                if not gif.exists():
                    _make_gif(folder)
            return FileResponse(gif, media_type="image/gif", filename=name + ".gif")
        return FileResponse(folder / "video.mp4", media_type="video/mp4", filename=name + ".mp4")

    @app.get("/v1/videos/{video_id}/preview", tags=["videos"])
    def preview(video_id: str) -> Response:
        """The latest low-resolution preview of a running job (asking for it turns previews on)."""
        job = get_job(video_id)
        if job.status in ("queued", "in_progress"):
            store().watch(job.id)
        path = files.preview(job.id)
        if not path.exists():
            return Response(status_code=204)
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/v1/videos/{video_id}/events", tags=["videos"])
    async def events(request: Request, video_id: str, previews: bool = True) -> Response:
        """Server-Sent Events, from the start (or after `Last-Event-ID`), until the job ends:
        queued, started, progress {step, steps, progress, eta_seconds}, preview {step, url},
        requeued, completed | failed {error} | cancelled."""
        job = get_job(video_id)
        try:
            last = int(request.headers.get("last-event-id", "0"))
        except ValueError:
            last = 0

        async def stream() -> AsyncIterator[str]:
            nonlocal last
            s = store()
            beat = watched = 0.0
            yield "retry: 1000\n\n"
            while True:
                now = time.monotonic()
                if previews and now - watched > 2.0:
                    s.watch(job.id)
                    watched = now
                for seq, kind, data in s.events(job.id, last):
                    last = seq
                    if kind == "preview":
                        data = {**data, "url": f"/v1/videos/{job.id}/preview"}
                    yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
                    if kind in FINAL:
                        return
                if s.get(job.id) is None or await request.is_disconnected():
                    return
                if now - beat > 15.0:
                    yield ": keep-alive\n\n"
                    beat = now
                await asyncio.sleep(0.2)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.delete("/v1/videos/{video_id}", tags=["videos"])
    def delete_video(video_id: str) -> dict[str, Any]:
        """Cancel a queued job (at once) or a running one (at its next step); remove a finished one."""
        job = get_job(video_id)
        s = store()
        if job.status in ("queued", "in_progress"):
            updated = s.cancel(job.id)
            if updated is None:
                raise APIError(404, f"no video with id {video_id!r}", "not_found_error", "id")
            return video_object(updated)
        if not s.delete(job.id):
            raise APIError(409, f"video {job.id} changed while being removed; try again", "conflict_error")
        files.remove_job_files(job.id)
        return {"id": job.id, "object": "video.deleted", "deleted": True}

    # -------------------------------------------------------------- the page
    static = resources.files("tubelet.serve") / "static"

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response((static / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> Response:
        return Response((static / "docs.html").read_bytes(), media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise APIError(404, "not found", "not_found_error")
        return Response((static / name).read_bytes(), media_type=STATIC_FILES[name] + "; charset=utf-8")

    app.state.tubelet = state
    return app


# ---------------------------------------------------------------------------------------------- checks
def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object with at least a prompt")
    return data


def _check_request(
    data: dict[str, Any], uploads: dict[str, bytes], store: JobStore, cfg: ServeConfig, skeleton: Any = None
) -> dict[str, Any]:
    """The library's own checks (`GenerationRequest.validate`), plus what the served model cannot do:
    the model's own checks on a weightless copy of it (`TextToVideoPipeline.check_request`: the
    prompt's words or length for its text encoder, box tracks bound to the prompt's objects)."""
    from tubelet.pipelines import GenerationRequest
    from tubelet.pipelines.request import RequestError

    for key in UPLOAD_FIELDS:
        if data.get(key) is not None:
            raise APIError(
                400,
                f"{key}: send the file itself (multipart/form-data, part {key!r}); the API reads no paths on the server",
                param=key,
            )
    data = dict(data)
    for key in uploads:
        data[key] = (
            f"{key}.upload"  # a placeholder until the upload is stored (validate checks the task's inputs)
        )
    try:
        req = GenerationRequest.from_dict(data)
        if isinstance(req.prompt, str) and len(req.prompt) > cfg.max_prompt_chars:
            raise RequestError(
                f"prompt has {len(req.prompt)} characters; this server takes at most {cfg.max_prompt_chars}"
            )
        req.validate(check_files=False)
    except TubeletError as e:
        raise APIError(400, str(e), param=_param_of(str(e))) from None
    model = store.get_meta("model")
    if model is not None:
        if req.boxes is not None and not model.get("box_control"):
            raise APIError(
                400,
                f"this model ({model.get('id')}) has no box control (its pipeline directory has no box_adapter/); "
                "send boxes to a model trained with a box adapter (docs/box-control.md)",
                param="boxes",
            )
        if req.task not in model.get("tasks", [req.task]):
            raise APIError(400, f"this model ({model.get('id')}) cannot do task {req.task!r}", param="task")
    if skeleton is not None:
        from tubelet.boxes import BoxError
        from tubelet.models.text import TextEncodingError

        try:
            skeleton.check_request(req)
        except BoxError as e:
            raise APIError(400, str(e), param="boxes") from None
        except TextEncodingError as e:
            raise APIError(400, str(e), param="prompt") from None
        except TubeletError as e:
            raise APIError(400, str(e), param=_param_of(str(e))) from None
    if req.seed is None:  # the seed is fixed when the job is made, so its settings can remake it
        req.seed = random.randrange(0, 2**31 - 1)
    out = req.to_dict()
    for key in UPLOAD_FIELDS:
        if key not in uploads:
            out.pop(key, None)
    return {k: v for k, v in out.items() if (v is not None and v is not False) or k in ("prompt", "task")}


def _param_of(message: str) -> str | None:
    """The request field a library message starts with ("num_frames=-3 is out of range" -> num_frames)."""
    import re
    from dataclasses import fields

    from tubelet.pipelines import GenerationRequest

    names = {f.name for f in fields(GenerationRequest)}
    for word in re.findall(r"[a-z_]+", message):
        if word in names:
            return word
    return None


def _download_name(job: Job) -> str:
    from tubelet.cli.generate import slugify

    return f"{slugify(str(job.request.get('prompt', '')), 40)}-{job.request.get('seed', 0)}"


def _make_gif(folder: Path) -> None:
    from tubelet.media import read_video, write_video

    meta_fps = 8.0
    with contextlib.suppress(Exception):
        meta_fps = float(json.loads((folder / "video.json").read_text()).get("fps", 8.0))
    video = read_video(folder / "video.mp4")
    write_video(folder / "video.gif", video.frames, meta_fps, sidecar=False)


def check_data_dir(root: Path) -> None:
    """Fail early (before the server starts) when another server holds this data directory."""
    _lock_data_dir(root).close()


def _lock_data_dir(root: Path) -> Any:
    """Hold `server.lock`: one server per data directory (a second one is a clear error)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    f = open(root / "server.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip()
        f.close()
        raise ConfigError(
            f"{root} is in use by another tubelet serve{f' (pid {other})' if other else ''}; "
            "stop it or pass another --data-dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tubelet")
    except Exception:
        return "0"
