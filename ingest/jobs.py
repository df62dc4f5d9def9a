"""Background ingest jobs (file uploads) with visible progress.

A job parses, chunks and embeds in a worker thread, reporting ``chunks_done`` of
``chunks_total`` as embedding proceeds, then commits everything (new chunks plus the
deletion of the document's old chunks) as one write. Job records live in the memory of
the ingest process that runs them: they are progress reports, not durable state; what a
finished job wrote is durable like any other write.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from vectordb.errors import NotFound, VectorDBError

_KEEP_FINISHED = 1000


@dataclass
class Job:
    id: str
    namespace: str
    description: str
    status: str = "queued"  # queued -> running -> done | failed
    chunks_total: int = 0
    chunks_done: int = 0
    documents: int = 0
    version: int | None = None
    error: dict | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


class JobNotFound(NotFound):
    code = "job_not_found"


class Jobs:
    def __init__(self) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, namespace: str, description: str, work: Callable[[Job], None]) -> Job:
        """Run ``work(job)`` in a thread; it updates the job's counters as it goes."""
        job = Job(uuid.uuid4().hex[:16], namespace, description)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > _KEEP_FINISHED:
                oldest = next(iter(self._jobs.values()))
                if oldest.finished_at is None:
                    break
                self._jobs.popitem(last=False)

        def run() -> None:
            job.status = "running"
            try:
                work(job)
                job.status = "done"
            except VectorDBError as exc:
                job.error = {"code": exc.code, "message": exc.message}
                job.status = "failed"
            except Exception as exc:  # reported in the job; the server log has the rest
                job.error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}
                job.status = "failed"
            finally:
                job.finished_at = time.time()

        threading.Thread(target=run, name=f"job-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} on this ingest worker")
        return job
