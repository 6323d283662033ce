"""The job queue of `tubelet serve`: one SQLite database (WAL) that the web server and the worker share.

    store = JobStore(data_dir / "jobs.sqlite")
    job = store.add(request_dict)            # status "queued"
    job = store.claim()                      # the worker: the oldest queued job -> "in_progress"
    store.progress(job.id, step, steps, eta) # per step (and an event row for the progress stream)
    store.finish(job.id, "completed", result={...})

Statuses: queued -> in_progress -> completed | failed | cancelled (and queued -> cancelled). The
database is the only channel between the two processes: the server writes jobs, cancel flags and
"someone is watching" marks; the worker writes progress, events and results. Every change is one
transaction, so a process killed at any moment leaves every job in one of the states above.

After a crash (`recover`, called by the server before its worker starts): a job left `in_progress`
goes back to the queue, ahead of the others, unless it was already interrupted once
(`MAX_ATTEMPTS`); then it fails with that reason, so one job that kills the machine cannot take the
server down again and again. A job whose cancel was asked before the crash ends cancelled.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
FINAL = ("completed", "failed", "cancelled")
MAX_ATTEMPTS = 2  # a job interrupted by a crash runs again once; the second interruption fails it
ID_PREFIX = "vid_"
ID_HEX = 24

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    uploads TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    eta REAL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    watched_at REAL NOT NULL DEFAULT 0,
    preview_step INTEGER NOT NULL DEFAULT 0,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def new_id() -> str:
    return ID_PREFIX + uuid.uuid4().hex[:ID_HEX]


def is_job_id(text: str) -> bool:
    """Only ids of this form reach the database or a file name."""
    body = text[len(ID_PREFIX) :]
    return text.startswith(ID_PREFIX) and len(body) == ID_HEX and all(c in "0123456789abcdef" for c in body)


@dataclass
class Job:
    """One row of the queue."""

    seq: int
    id: str
    status: str
    request: dict[str, Any]
    uploads: dict[str, str]  # field -> file name under the job's upload folder
    created_at: float
    started_at: float | None
    finished_at: float | None
    step: int
    steps: int
    eta: float | None
    error: str | None
    attempts: int
    cancel: bool
    watched_at: float
    preview_step: int
    result: dict[str, Any] | None

    @property
    def final(self) -> bool:
        return self.status in FINAL


def _job(row: sqlite3.Row) -> Job:
    return Job(
        seq=row["seq"],
        id=row["id"],
        status=row["status"],
        request=json.loads(row["request"]),
        uploads=json.loads(row["uploads"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        step=row["step"],
        steps=row["steps"],
        eta=row["eta"],
        error=row["error"],
        attempts=row["attempts"],
        cancel=bool(row["cancel"]),
        watched_at=row["watched_at"],
        preview_step=row["preview_step"],
        result=json.loads(row["result"]) if row["result"] else None,
    )


class JobStore:
    """Thread-safe access to the queue database (one connection per store, serialised by a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._tx() as db:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the writer lock is taken up front)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _event(self, db: sqlite3.Connection, job_id: str, kind: str, data: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO events (job, type, data, at) VALUES (?, ?, ?, ?)",
            (job_id, kind, json.dumps(data), time.time()),
        )

    # ------------------------------------------------------------------ the server's side
    def add(
        self, request: dict[str, Any], *, uploads: dict[str, str] | None = None, job_id: str | None = None
    ) -> Job:
        jid = job_id or new_id()
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, status, request, uploads, created_at) VALUES (?, 'queued', ?, ?, ?)",
                (jid, json.dumps(request), json.dumps(uploads or {}), now),
            )
            self._event(db, jid, "queued", {})
        job = self.get(jid)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def list_jobs(
        self, *, limit: int = 20, after: str | None = None, order: str = "desc"
    ) -> tuple[list[Job], bool]:
        """A page of jobs, newest first (order "desc") or oldest first; `after`: the last id of the
        previous page. Returns (jobs, has_more)."""
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        with self._lock:
            if after is not None:
                row = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                start = row["seq"] if row is not None else None
            else:
                start = None
            if start is None:
                rows = self._db.execute(
                    f"SELECT * FROM jobs ORDER BY seq {direction} LIMIT ?", (limit + 1,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT * FROM jobs WHERE seq {op} ? ORDER BY seq {direction} LIMIT ?",
                    (start, limit + 1),
                ).fetchall()
        jobs = [_job(r) for r in rows]
        return jobs[:limit], len(jobs) > limit

    def active_count(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'in_progress')"
            ).fetchone()
        return int(row[0])

    def queue_position(self, job: Job) -> int | None:
        """0 = next to run; None when the job is not queued."""
        if job.status != "queued":
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < ?", (job.seq,)
            ).fetchone()
        return int(row[0])

    def mean_duration(self, last: int = 20) -> float | None:
        """Mean run time of the last finished jobs (for queue ETAs); None before the first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT finished_at - started_at FROM jobs WHERE status = 'completed' "
                "AND started_at IS NOT NULL ORDER BY seq DESC LIMIT ?",
                (last,),
            ).fetchall()
        times = [r[0] for r in rows if r[0] is not None]
        return sum(times) / len(times) if times else None

    def running_eta(self) -> float | None:
        """The ETA of the running job (None when none runs or it has no estimate yet)."""
        with self._lock:
            row = self._db.execute("SELECT eta FROM jobs WHERE status = 'in_progress' LIMIT 1").fetchone()
        return row[0] if row is not None else None

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or ask the worker to stop a running one at its next step."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == "queued":
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', cancel = 1, finished_at = ? WHERE id = ?",
                    (time.time(), job_id),
                )
                self._event(db, job_id, "cancelled", {})
            elif row["status"] == "in_progress":
                db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's row and events (its files are the caller's)."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM jobs WHERE id = ? AND status IN ('completed', 'failed', 'cancelled')", (job_id,)
            )
            db.execute("DELETE FROM events WHERE job = ?", (job_id,))
        return cur.rowcount > 0

    def watch(self, job_id: str) -> None:
        """Someone is looking at this job: the worker decodes previews for the next few seconds."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET watched_at = ? WHERE id = ?", (time.time(), job_id))

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, type, data FROM events WHERE job = ? AND seq > ? ORDER BY seq", (job_id, after)
            ).fetchall()
        return [(r["seq"], r["type"], json.loads(r["data"])) for r in rows]

    def recover(self) -> list[tuple[str, str]]:
        """After a crash: put interrupted jobs back (module doc). Returns (id, what happened) pairs."""
        out: list[tuple[str, str]] = []
        now = time.time()
        with self._tx() as db:
            rows = db.execute("SELECT id, attempts, cancel FROM jobs WHERE status = 'in_progress'").fetchall()
            for r in rows:
                jid = r["id"]
                if r["cancel"]:
                    db.execute(
                        "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?", (now, jid)
                    )
                    self._event(db, jid, "cancelled", {})
                    out.append((jid, "cancelled"))
                elif r["attempts"] >= MAX_ATTEMPTS:
                    msg = (
                        f"interrupted {r['attempts']} times while running (the server stopped or crashed); "
                        "not retried again"
                    )
                    db.execute(
                        "UPDATE jobs SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                        (msg, now, jid),
                    )
                    self._event(db, jid, "failed", {"error": msg})
                    out.append((jid, "failed"))
                else:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', step = 0, steps = 0, eta = NULL, "
                        "started_at = NULL WHERE id = ?",
                        (jid,),
                    )
                    self._event(db, jid, "requeued", {"reason": "the server stopped while this job ran"})
                    out.append((jid, "requeued"))
        return out

    def fail_running(self, message: str) -> list[str]:
        """The worker died: fail the job it held (a crash that may repeat is not retried)."""
        now = time.time()
        with self._tx() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE status = 'in_progress'").fetchall()]
            for jid in ids:
                db.execute(
                    "UPDATE jobs SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                    (message, now, jid),
                )
                self._event(db, jid, "failed", {"error": message})
        return ids

    # ------------------------------------------------------------------ the worker's side
    def claim(self) -> Job | None:
        """Take the oldest queued job (atomic: two workers never get the same job)."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'in_progress', started_at = ?, attempts = attempts + 1, step = 0 "
                "WHERE id = ?",
                (time.time(), row["id"]),
            )
            self._event(db, row["id"], "started", {})
        return self.get(row["id"])

    def requeue(self, job_id: str) -> None:
        """An orderly stop of the worker mid-job: back to the queue, the attempt not counted."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', step = 0, steps = 0, eta = NULL, started_at = NULL, "
                "attempts = MAX(attempts - 1, 0) WHERE id = ? AND status = 'in_progress'",
                (job_id,),
            )
            self._event(db, job_id, "requeued", {"reason": "the server is stopping"})

    def progress(self, job_id: str, step: int, steps: int, eta: float | None) -> bool:
        """Record a finished step; returns True when a cancel was asked for."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET step = ?, steps = ?, eta = ? WHERE id = ?", (step, steps, eta, job_id)
            )
            self._event(
                db, job_id, "progress",
                {"step": step, "steps": steps, "progress": _percent(step, steps), "eta_seconds": eta},
            )  # fmt: skip
            row = db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row is not None and row["cancel"])

    def wants_preview(self, job_id: str, within: float = 10.0) -> bool:
        with self._lock:
            row = self._db.execute("SELECT watched_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and time.time() - row["watched_at"] < within

    def preview(self, job_id: str, step: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET preview_step = ? WHERE id = ?", (step, job_id))
            self._event(db, job_id, "preview", {"step": step})

    def finish(
        self, job_id: str, status: str, *, error: str | None = None, result: dict[str, Any] | None = None
    ) -> None:
        assert status in FINAL
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = ?, error = ?, result = ?, finished_at = ?, eta = NULL WHERE id = ?",
                (status, error, json.dumps(result) if result is not None else None, time.time(), job_id),
            )
            data: dict[str, Any] = {"error": error} if error else {}
            self._event(db, job_id, status, data)

    # ------------------------------------------------------------------ shared key/values
    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def get_meta(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row is not None else None


def _percent(step: int, steps: int) -> int:
    return int(100 * step / steps) if steps > 0 else 0
