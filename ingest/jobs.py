"""Upload jobs: run by a thread of the worker that accepted them, recorded in the object store.

A job's work (``api.service``) parses and chunks its file in a child process
(``ingest.parse_pool``), embeds the chunks batch by batch, and commits everything (the
new chunks and the deletion of the document's old ones) as one write at the end: a job
that fails or is cancelled before that commit has written nothing.

Durable state, under ``.sys/``, a prefix no namespace can have (namespace names are
``[A-Za-z0-9][A-Za-z0-9_-]{0,62}``; ``Catalog.list_namespaces`` skips other names):

    .sys/jobs/<id>.json              the record (:class:`Job`); rewritten at each change of
                                     status and every ``job_heartbeat_s`` while the job runs
    .sys/jobs/<id>.cancel            a cancel request, written by DELETE on any worker
    .sys/active/<owner-hash>/<id>    one per unfinished job of an API key (per-key limit)

So any worker answers ``GET /v1/jobs/{id}``, before and after a restart. The running
worker's heartbeat thread rewrites the record (progress, ``heartbeat_at``) and looks for
a cancel request; the work stops at its next checkpoint (between embedding batches, while
waiting for the parse, and before the commit) and the job ends ``cancelled``. A record
that still says queued or running but has had no heartbeat for ``job_stale_s`` belongs
to a worker that died: it is reported ``failed`` with error code ``interrupted`` (and a
worker that could not write its heartbeat for that long gives the job up before its
commit, so such a job never commits later).

Limits, refused with 429 and ``Retry-After``: ``max_jobs_per_worker`` running jobs in
this process, and ``max_jobs_per_key`` unfinished jobs of one API key across all workers
(counted by listing its active markers; uploads of one key racing on different workers
may both pass). Jobs without a key (an open server) have only the per-worker limit.

Garbage: records and markers not rewritten for ``job_retention_s`` are deleted by a
sweep that a worker starts, in the background, when it starts a job and has not swept
for ``min(1 h, job_retention_s / 2)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from storage.base import ObjectStore
from storage.errors import ObjectNotFound
from vectordb.catalog import get_fresh
from vectordb.errors import NotFound, TooManyRequests, VectorDBError
from vectordb.settings import Settings

log = logging.getLogger(__name__)

JOBS_PREFIX = ".sys/jobs/"
ACTIVE_PREFIX = ".sys/active/"
STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = frozenset({"done", "failed", "cancelled"})
# What a refused upload is told to wait: about what a small file's job takes.
RETRY_AFTER_S = 5.0
_SWEEP_EVERY_S = 3600.0
_FINAL_SAVE_TRIES = 3
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class Job:
    """A job record, as stored and as ``GET /v1/jobs/{id}`` answers it.

    ``status``: queued -> running -> done | failed | cancelled. ``error`` (a failed job):
    ``{"code", "message", "status"}``, the code and HTTP status the same failure has on a
    synchronous route. ``heartbeat_at``: when the running worker last wrote the record.
    ``cancel_requested``: a DELETE has asked it to stop. ``http_status`` (not a field of the
    record) is what ``?wait=true`` answers: the error's status, 409 when cancelled.
    """

    id: str
    namespace: str
    description: str
    status: str = "queued"
    chunks_total: int = 0
    chunks_done: int = 0
    documents: int = 0
    version: int | None = None
    error: dict | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    owner: str | None = None
    heartbeat_at: float | None = None
    cancel_requested: bool = False
    http_status: int | None = field(default=None, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict:
        out = asdict(self)
        del out["http_status"]
        return out

    @classmethod
    def from_json(cls, data: dict) -> Job:
        names = {f.name for f in dataclasses.fields(cls)} - {"http_status"}
        job = cls(**{k: v for k, v in data.items() if k in names})
        if job.status == "cancelled":
            job.http_status = 409
        elif job.error is not None:
            job.http_status = job.error.get("status", 500)
        return job


class JobNotFound(NotFound):
    code = "job_not_found"


class JobInterrupted(VectorDBError):
    """The worker running a job stopped, or lost the store for longer than ``job_stale_s``."""

    status = 503
    code = "interrupted"


class JobCancelled(Exception):
    """Raised at a checkpoint of a job that was asked to stop; the job ends ``cancelled``."""


def _error(code: str, message: str, status: int) -> dict:
    """A failed job's ``error``: what the synchronous route would have answered."""
    return {"code": code, "message": message, "status": status}


def record_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.json"


def cancel_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.cancel"


def active_prefix(owner: str) -> str:
    # Key ids are the auth layer's business: hashed, any string makes a valid key segment.
    return f"{ACTIVE_PREFIX}{hashlib.sha256(owner.encode()).hexdigest()[:32]}/"


class JobRun:
    """A running job as its work sees it: the record to update, and the checkpoints."""

    def __init__(self, jobs: Jobs, job: Job) -> None:
        self.job = job
        self._jobs = jobs
        self.lock = threading.Lock()  # between the heartbeat's writes and the final one
        self.stopping = threading.Event()  # no more heartbeats: the final record is coming
        self.cancel_seen = threading.Event()
        self.saved_at = time.monotonic()

    def checkpoint(self) -> None:
        """Raise JobCancelled if a cancel request has been seen. No I/O: the heartbeat
        thread looks for requests, so this may be called as often as convenient."""
        if self.cancel_seen.is_set():
            raise JobCancelled()

    def before_commit(self) -> None:
        """The last checkpoint: asks the store for a cancel request now, and gives the job
        up (JobInterrupted) if this worker has not managed to write its heartbeat for
        ``job_stale_s``, since other workers may already report the job as interrupted."""
        self._jobs.poll_cancel(self)
        self.checkpoint()
        silent = time.monotonic() - self.saved_at
        if silent > self._jobs.settings.job_stale_s:
            raise JobInterrupted(f"could not record the job's progress for {silent:.0f} s; upload the file again")


class Jobs:
    """The jobs of one worker process, and access to every job's record in ``store``."""

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._runs: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._owner_lock = threading.Lock()  # one key's uploads on this worker check in turn
        self._swept_at: float | None = None

    # --- starting and running ------------------------------------------------------------
    def start(self, namespace: str, description: str, work: Callable[[JobRun], None], owner: str | None = None) -> Job:
        """Record a new job and run ``work(run)`` in a thread; returns the live record.

        Raises TooManyRequests past ``max_jobs_per_worker`` or ``max_jobs_per_key``, and
        StorageUnavailable if the record cannot be written.
        """
        job = Job(uuid.uuid4().hex[:16], namespace, description, owner=owner)
        run = JobRun(self, job)
        limit = self.settings.max_jobs_per_worker
        with self._lock:
            if len(self._runs) >= limit:
                raise TooManyRequests(
                    f"this worker is running {len(self._runs)} upload jobs, its limit (max_jobs_per_worker); "
                    "retry later", RETRY_AFTER_S,
                )
            self._runs[job.id] = run
        try:
            if owner is None:
                self._save(run, raise_errors=True)
            else:
                with self._owner_lock:
                    self._check_owner(owner)
                    self._save(run, raise_errors=True)  # the record first: a marker must lead to one
                    self.store.put(active_prefix(owner) + job.id, job.id.encode())
        except BaseException:
            with self._lock:
                self._runs.pop(job.id, None)
            raise
        self._maybe_sweep()
        threading.Thread(target=self._run, args=(run, work), name=f"job-{job.id}", daemon=True).start()
        return job

    def _check_owner(self, owner: str) -> None:
        """Raise TooManyRequests if ``owner`` has ``max_jobs_per_key`` unfinished jobs;
        markers of jobs that ended without removing theirs (a dead worker) are removed."""
        limit = self.settings.max_jobs_per_key
        prefix = active_prefix(owner)
        ids = [info.key[len(prefix) :] for info in self.store.list(prefix)]
        if len(ids) < limit:
            return
        live = 0
        for job_id in ids:
            try:
                job = self.get(job_id)
            except JobNotFound:
                job = None
            if job is None or job.finished:
                self.store.delete(prefix + job_id)
            else:
                live += 1
        if live >= limit:
            raise TooManyRequests(
                f"this API key has {live} upload jobs running, its limit (max_jobs_per_key); retry when one "
                "has finished", RETRY_AFTER_S,
            )

    def _run(self, run: JobRun, work: Callable[[JobRun], None]) -> None:
        job = run.job
        with run.lock:
            job.status = "running"
        self._save(run)
        threading.Thread(target=self._heartbeat, args=(run,), name=f"job-{job.id}-heartbeat", daemon=True).start()
        error, http_status = None, None
        try:
            work(run)
            status = "done"
        except JobCancelled:
            status, http_status = "cancelled", 409
        except VectorDBError as exc:
            status, error, http_status = "failed", _error(exc.code, exc.message, exc.status), exc.status
        except Exception as exc:  # reported in the job; the server log has the rest
            log.exception("job %s failed", job.id)
            status, error, http_status = "failed", _error("internal", f"{type(exc).__name__}: {exc}", 500), 500
        run.stopping.set()
        with run.lock:  # waits for a heartbeat write in progress
            final = dataclasses.replace(job, status=status, error=error, finished_at=time.time())
        self._save_final(final)
        self._tidy(final)
        with self._lock:
            self._runs.pop(job.id, None)
        with run.lock:  # last: ?wait=true answers once finished_at is set, the slot is free by then
            job.status, job.error, job.http_status = status, error, http_status
            job.heartbeat_at, job.finished_at = final.heartbeat_at, final.finished_at

    def _heartbeat(self, run: JobRun) -> None:
        while not run.stopping.wait(self.settings.job_heartbeat_s):
            self.poll_cancel(run)
            self._save(run)

    def poll_cancel(self, run: JobRun) -> None:
        """Look for a cancel request of ``run`` in the store (errors are ignored: the next
        heartbeat looks again)."""
        try:
            if self.store.head(cancel_key(run.job.id)) is not None:
                run.job.cancel_requested = True
                run.cancel_seen.set()
        except VectorDBError as exc:
            log.warning("job %s: cannot look for a cancel request: %s", run.job.id, exc.message)

    def _save(self, run: JobRun, raise_errors: bool = False) -> None:
        with run.lock:
            if run.stopping.is_set():
                return
            run.job.heartbeat_at = time.time()
            data = json.dumps(run.job.to_json()).encode()
            try:
                self.store.put(record_key(run.job.id), data)
            except VectorDBError as exc:
                if raise_errors:
                    raise
                log.warning("job %s: cannot write its record: %s", run.job.id, exc.message)
                return
            run.saved_at = time.monotonic()

    def _save_final(self, job: Job) -> None:
        job.heartbeat_at = time.time()
        for attempt in range(_FINAL_SAVE_TRIES):
            try:
                self.store.put(record_key(job.id), json.dumps(job.to_json()).encode())
                return
            except VectorDBError as exc:
                log.warning("job %s: cannot write its final record (try %d): %s", job.id, attempt + 1, exc.message)
                time.sleep(0.5 * 2**attempt)
        log.error("job %s ended %s but its record says otherwise; it will read as interrupted", job.id, job.status)

    def _tidy(self, job: Job) -> None:
        """Remove the markers of a finished job (best effort: the sweep gets what is left)."""
        keys = [cancel_key(job.id)] + ([active_prefix(job.owner) + job.id] if job.owner is not None else [])
        for key in keys:
            try:
                self.store.delete(key)
            except VectorDBError as exc:
                log.warning("job %s: cannot delete %s: %s", job.id, key, exc.message)

    # --- reading and cancelling ----------------------------------------------------------
    def get(self, job_id: str) -> Job:
        """The job as it stands now, from this worker's memory or from the store. Raises
        JobNotFound; a job whose worker died reads as failed (``interrupted``)."""
        run = self._local(job_id)
        if run is not None:
            with run.lock:
                return dataclasses.replace(run.job, cancel_requested=run.cancel_seen.is_set())
        job = self._read(job_id)
        if not job.finished:
            job.cancel_requested = job.cancel_requested or self.store.head(cancel_key(job_id)) is not None
            self._mark_if_dead(job)
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop; it ends ``cancelled`` at its next checkpoint (or ``done`` if
        its commit had already begun). A finished job is returned as it is. Raises
        JobNotFound."""
        job = self.get(job_id)
        if job.finished:
            return job
        self.store.put(cancel_key(job_id), b"cancel")
        run = self._local(job_id)
        if run is not None:
            run.job.cancel_requested = True
            run.cancel_seen.set()
        job.cancel_requested = True
        return job

    def running(self) -> int:
        """Jobs running in this process."""
        with self._lock:
            return len(self._runs)

    def _local(self, job_id: str) -> JobRun | None:
        if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
            raise JobNotFound(f"no job {str(job_id)[:80]!r}")
        with self._lock:
            return self._runs.get(job_id)

    def _read(self, job_id: str) -> Job:
        try:
            return Job.from_json(json.loads(get_fresh(self.store, record_key(job_id))))
        except ObjectNotFound:
            raise JobNotFound(f"no job {job_id!r} (finished jobs are kept for job_retention_s)") from None

    def _mark_if_dead(self, job: Job) -> None:
        """Report an unfinished job without a recent heartbeat as failed (not written back:
        the record stays as its worker left it)."""
        last = job.heartbeat_at or job.created_at
        silent = time.time() - last
        if silent <= self.settings.job_stale_s:
            return
        job.status, job.finished_at, job.http_status = "failed", last, JobInterrupted.status
        job.error = _error(
            JobInterrupted.code,
            f"the worker running this job stopped: no heartbeat for {silent:.0f} s "
            f"(job_stale_s is {self.settings.job_stale_s:g}); upload the file again",
            JobInterrupted.status,
        )

    # --- garbage -------------------------------------------------------------------------
    def _maybe_sweep(self) -> None:
        every = min(_SWEEP_EVERY_S, self.settings.job_retention_s / 2)
        now = time.monotonic()
        with self._lock:
            if self._swept_at is not None and now - self._swept_at < every:
                return
            self._swept_at = now
        threading.Thread(target=self._sweep_quietly, name="job-sweep", daemon=True).start()

    def _sweep_quietly(self) -> None:
        try:
            self.sweep()
        except VectorDBError as exc:
            log.warning("job sweep failed: %s", exc.message)

    def sweep(self, now: float | None = None) -> int:
        """Delete job records and cancel requests not written for ``job_retention_s``, and
        active markers as old whose job has ended; returns how many objects went."""
        cutoff = (time.time() if now is None else now) - self.settings.job_retention_s
        deleted = 0
        for info in list(self.store.list(JOBS_PREFIX)):
            if info.last_modified < cutoff:
                self.store.delete(info.key)
                deleted += 1
        for info in list(self.store.list(ACTIVE_PREFIX)):
            if info.last_modified >= cutoff:
                continue
            try:
                alive = not self.get(info.key.rsplit("/", 1)[1]).finished
            except JobNotFound:
                alive = False
            if not alive:
                self.store.delete(info.key)
                deleted += 1
        return deleted
