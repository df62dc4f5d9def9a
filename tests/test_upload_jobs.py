"""Upload limits and durable jobs (unit and API tier): caps, the parse time limit, cancel,
records in the store that any worker reads, dead workers, per-worker and per-key limits."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.service import Service
from ingest import jobs as jobs_module
from ingest.chunker import ChunkingConfig, TokenizerCounter, _SectionPacker
from ingest.jobs import Job, JobNotFound, cancel_key, record_key
from ingest.parse_pool import ParsePool
from storage.local import LocalStore
from storage.memory import MemoryStore
from tests.fakes import FAKE_DIMS, HashEmbedder, unit_settings
from vectordb import embedders
from vectordb.catalog import Catalog
from vectordb.errors import InvalidArgument, PayloadTooLarge, TooManyRequests, VectorDBError

HOSTILE_HTML = b"&amp;" * 1_000_000  # 5 MB: the upload of issue 11
WAIT_S = 60.0
HEADERS = {"X-Requested-With": "tests"}  # what a non-browser client sends (api/access.py)  # the longest any job here may take; a bound against hangs, not a timing assertion


class GatedEmbedder(HashEmbedder):
    """The fake embedder, but each batch waits until the test opens the gate: a job that
    stays running exactly as long as a test needs it to."""

    def __init__(self, gate: threading.Event, entered: threading.Event) -> None:
        self.gate, self.entered = gate, entered

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        return super().embed_documents(texts)


@pytest.fixture
def gated():
    """Registers embedder 'gated'; yields (gate, entered); opens the gate at the end."""
    gate, entered = threading.Event(), threading.Event()
    embedders.register("gated", FAKE_DIMS, lambda settings: GatedEmbedder(gate, entered))
    yield gate, entered
    gate.set()


@pytest.fixture
def services():
    """Service factory on one shared store (two "workers"); closes them at the end."""
    made = []
    store = MemoryStore()

    def make(**overrides) -> Service:
        settings = unit_settings(**{"preload_embedder": "", "job_heartbeat_s": 0.05, **overrides})
        svc = Service(settings, store=store)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


def _wait(svc: Service, job_id: str, until=lambda job: job.finished) -> Job:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = svc.job(job_id)
        if until(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {svc.job(job_id).status}")


def _ended(live: Job) -> Job:
    """The job object ``ingest_file`` returned, once its worker has finished it."""
    deadline = time.monotonic() + WAIT_S
    while live.finished_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return live


def _markdown(sections: int) -> bytes:
    return "\n\n".join(f"## Part {n}\n\nThe pump number {n} is cleaned every week." for n in range(sections)).encode()


def _rows(svc: Service, ns: str) -> int:
    rows = svc.describe(ns)["rows"]
    return rows["indexed"] + rows["unindexed"]


# ---------------------------------------------------------------------------- records


def test_a_job_is_recorded_in_the_store_and_a_second_worker_reads_it(services):
    a, b = services(), services()
    a.create_namespace("docs", "fake", chunking={"chunk_tokens": 16, "overlap_tokens": 2})
    job = a.ingest_file("docs", "guide.md", _markdown(12), "text/markdown", None, {"team": "ops"})
    assert job.status in ("queued", "running")
    # The record is written before the upload is answered: any worker finds it at once.
    assert b.job(job.id).namespace == "docs"
    done = _wait(b, job.id)
    assert done.status == "done" and done.chunks_done == done.chunks_total == 12 and done.version is not None
    assert done.documents == 1 and done.finished_at >= done.created_at and done.error is None
    stored = json.loads(a.store.get(record_key(job.id)))
    assert {"id", "namespace", "status", "chunks_total", "chunks_done", "documents", "version", "error",
            "created_at", "finished_at", "owner", "heartbeat_at", "cancel_requested"} <= set(stored)
    # A worker started after the job ended (a restart, a scale from zero) still answers.
    fresh = Service(unit_settings(preload_embedder=""), store=a.store)
    assert fresh.job(job.id).to_json() == done.to_json()
    assert _rows(fresh, "docs") == 12
    fresh.close()


def test_unknown_and_malformed_job_ids_are_404(services):
    svc = services()
    for job_id in ("0123456789abcdef", "../x", "", "a" * 65, ".sys"):
        with pytest.raises(JobNotFound):
            svc.job(job_id)
        with pytest.raises(JobNotFound):
            svc.cancel_job(job_id)


@pytest.mark.parametrize("backend", ["memory", "local"])
def test_the_jobs_prefix_is_never_a_namespace(backend, tmp_path):
    store = LocalStore(tmp_path) if backend == "local" else MemoryStore()
    svc = Service(unit_settings(preload_embedder=""), store=store)
    svc.create_namespace("docs", "fake")
    job = svc.ingest_file("docs", "a.txt", b"some text to index", "text/plain", None, None)
    _wait(svc, job.id)
    assert store.list_prefixes("") == [".sys", "docs"]
    assert svc.list_namespaces() == ["docs"]
    assert Catalog(store).list_namespaces() == ["docs"]
    svc.close()


def test_a_job_whose_worker_died_reads_as_interrupted(services):
    svc = services(job_stale_s=5)
    now = time.time()
    dead = Job("deaddeaddeaddead", "docs", "big.pdf", status="running", chunks_total=100, chunks_done=40,
               created_at=now - 60, heartbeat_at=now - 6)
    alive = Job("a11vea11vea11vea", "docs", "small.md", status="running", created_at=now - 60, heartbeat_at=now - 1)
    for job in (dead, alive):
        svc.store.put(record_key(job.id), json.dumps(job.to_json()).encode())
    job = svc.job(dead.id)
    assert job.status == "failed" and job.error["code"] == "interrupted" and "no heartbeat" in job.error["message"]
    assert job.error["status"] == 503 and job.http_status == 503
    assert job.finished_at == dead.heartbeat_at and job.chunks_done == 40
    assert svc.job(alive.id).status == "running"
    # Cancelling a dead job changes nothing: it has ended.
    assert svc.cancel_job(dead.id).status == "failed" and svc.store.head(cancel_key(dead.id)) is None


def test_old_records_are_swept(services):
    svc = services(job_retention_s=3600)
    svc.create_namespace("docs", "fake")
    job = svc.ingest_file("docs", "a.txt", b"some text to index", "text/plain", None, None)
    _wait(svc, job.id)
    assert svc.jobs.sweep() == 0 and svc.job(job.id).status == "done"
    assert svc.jobs.sweep(now=time.time() + 3601) == 1
    with pytest.raises(JobNotFound):
        svc.job(job.id)
    assert list(svc.store.list(".sys/")) == []


# ---------------------------------------------------------------------------- limits


def test_the_hostile_html_is_answered_at_once_and_its_job_stopped_by_the_time_limit(services):
    svc = services(parse_timeout_s=0.5)
    svc.create_namespace("docs", "fake", chunking={"chunk_tokens": 32, "overlap_tokens": 4})
    live = svc.ingest_file("docs", "amp.html", HOSTILE_HTML, "text/html", None, None)
    assert live.status in ("queued", "running") and live.chunks_total == 0  # nothing parsed before the answer
    job = _wait(svc, live.id)
    assert job.status == "failed" and job.error["code"] == "payload_too_large"
    assert "parse_timeout_s" in job.error["message"]
    assert _ended(live).http_status == 413  # what ?wait=true answers
    assert _rows(svc, "docs") == 0


def test_a_file_over_the_chunk_cap_fails_its_job_and_writes_nothing(services):
    svc = services(max_chunks_per_file=10)
    svc.create_namespace("docs", "fake", chunking={"chunk_tokens": 16, "overlap_tokens": 2})
    job = _wait(svc, svc.ingest_file("docs", "guide.md", _markdown(11), None, None, None).id)
    assert job.status == "failed" and job.error["code"] == "payload_too_large"
    assert "11 chunks" in job.error["message"] and "max_chunks_per_file" in job.error["message"]
    lines = "\n".join(json.dumps({"id": f"d{n}", "text": f"text {n}"}) for n in range(11)).encode()
    job = _wait(svc, svc.ingest_file("docs", "docs.jsonl", lines, None, None, None).id)
    assert job.status == "failed" and job.error["code"] == "payload_too_large"
    assert _rows(svc, "docs") == 0
    job = _wait(svc, svc.ingest_file("docs", "guide.md", _markdown(10), None, None, None).id)
    assert job.status == "done" and _rows(svc, "docs") == 10


def test_what_is_known_at_once_is_refused_at_once(services):
    svc = services(max_body_bytes=1000)
    svc.create_namespace("docs", "fake")
    with pytest.raises(PayloadTooLarge):
        svc.ingest_file("docs", "a.txt", b"x" * 1001, None, None, None)
    with pytest.raises(InvalidArgument, match="unsupported file type"):
        svc.ingest_file("docs", "a.exe", b"MZ", None, None, None)
    assert svc.jobs.running() == 0


def test_parse_errors_fail_the_job_with_their_code(services):
    svc = services()
    svc.create_namespace("docs", "fake")
    job = _ended(svc.ingest_file("docs", "a.txt", b"\x00\x01binary", None, None, None))
    assert job.status == "failed" and job.error["code"] == "invalid_argument" and job.http_status == 400


def test_per_worker_limit_is_a_429_with_retry_after(gated):
    gate, entered = gated
    settings = unit_settings(store_uri="memory://worker-limit", preload_embedder="", max_jobs_per_worker=1)
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))
    with TestClient(app, headers=HEADERS) as c:
        c.put("/v1/namespaces/g", json={"embedder": "gated"})
        first = c.post("/v1/namespaces/g/files", files={"file": ("a.txt", b"first file", "text/plain")})
        assert first.status_code == 202
        assert entered.wait(WAIT_S)
        refused = c.post("/v1/namespaces/g/files", files={"file": ("b.txt", b"second file", "text/plain")})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1 and "max_jobs_per_worker" in refused.json()["error"]["message"]
        gate.set()
        waited = c.post("/v1/namespaces/g/files?wait=true", files={"file": ("b.txt", b"second", "text/plain")})
        for _ in range(int(WAIT_S / 0.02)):  # the first job's slot frees as it ends
            if waited.status_code != 429:
                break
            time.sleep(0.02)
            waited = c.post("/v1/namespaces/g/files?wait=true", files={"file": ("b.txt", b"second", "text/plain")})
        assert waited.status_code == 200 and waited.json()["job"]["status"] == "done"


def test_per_key_limit_counts_jobs_on_every_worker(gated, services):
    gate, entered = gated
    a, b = services(max_jobs_per_key=1), services(max_jobs_per_key=1)
    a.create_namespace("g", "gated")
    first = a.ingest_file("g", "a.txt", b"first", None, None, None, owner="key-1")
    assert entered.wait(WAIT_S)
    for svc in (a, b):  # the same key on another worker is refused too
        with pytest.raises(TooManyRequests, match="max_jobs_per_key") as refused:
            svc.ingest_file("g", "b.txt", b"second", None, None, None, owner="key-1")
        assert refused.value.headers["Retry-After"] == "5"
    other = b.ingest_file("g", "c.txt", b"other key", None, None, None, owner="key-2")
    anonymous = b.ingest_file("g", "d.txt", b"no key", None, None, None)
    gate.set()
    for job in (first, other, anonymous):
        assert _wait(a, job.id).status == "done"
    assert _wait(b, b.ingest_file("g", "e.txt", b"again", None, None, None, owner="key-1").id).status == "done"
    assert list(a.store.list(jobs_module.ACTIVE_PREFIX)) == []


def test_the_marker_of_a_dead_workers_job_does_not_count(services):
    svc = services(max_jobs_per_key=1, job_stale_s=5)
    svc.create_namespace("docs", "fake")
    dead = Job("deaddeaddeaddead", "docs", "big.pdf", status="running", owner="key-1",
               created_at=time.time() - 60, heartbeat_at=time.time() - 30)
    svc.store.put(record_key(dead.id), json.dumps(dead.to_json()).encode())
    svc.store.put(jobs_module.active_prefix("key-1") + dead.id, dead.id.encode())
    job = svc.ingest_file("docs", "a.txt", b"some text", None, None, None, owner="key-1")
    assert _wait(svc, job.id).status == "done"
    assert svc.store.head(jobs_module.active_prefix("key-1") + dead.id) is None


# ---------------------------------------------------------------------------- cancel


def test_cancel_on_another_worker_stops_the_job_and_nothing_is_committed(gated, services):
    gate, entered = gated
    a, b = services(embed_batch_size=2), services()
    a.create_namespace("g", "gated", chunking={"chunk_tokens": 16, "overlap_tokens": 2})
    job = a.ingest_file("g", "guide.md", _markdown(20), None, None, None)
    assert entered.wait(WAIT_S)
    asked = b.cancel_job(job.id)
    assert asked.cancel_requested and not asked.finished
    assert b.job(job.id).cancel_requested
    _wait(a, job.id, lambda j: j.cancel_requested)  # the running worker has seen the request
    gate.set()
    ended = _wait(b, job.id)
    assert ended.status == "cancelled" and ended.version is None and ended.error is None
    assert ended.chunks_done < ended.chunks_total == 20
    assert _rows(a, "g") == 0
    assert b.cancel_job(job.id).status == "cancelled"  # again: nothing to do
    assert a.store.head(cancel_key(job.id)) is None  # tidied


def test_cancel_during_the_parse_kills_it(services):
    svc = services(parse_timeout_s=WAIT_S)
    svc.create_namespace("docs", "fake", chunking={"chunk_tokens": 32, "overlap_tokens": 4})
    job = svc.ingest_file("docs", "amp.html", HOSTILE_HTML, "text/html", None, None)
    svc.cancel_job(job.id)
    ended = _wait(svc, job.id)
    assert ended.status == "cancelled" and ended.chunks_total == 0 and _rows(svc, "docs") == 0


def test_delete_route_and_wait_answers(gated):
    gate, entered = gated
    settings = unit_settings(store_uri="memory://cancel-route", preload_embedder="", max_chunks_per_file=3)
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))
    with TestClient(app, headers=HEADERS) as c:
        c.put("/v1/namespaces/g", json={"embedder": "gated", "chunking": {"chunk_tokens": 16, "overlap_tokens": 2}})
        job = c.post("/v1/namespaces/g/files", files={"file": ("a.txt", b"first file", "text/plain")}).json()["job"]
        assert entered.wait(WAIT_S)
        r = c.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 202 and r.json()["job"]["cancel_requested"] is True
        gate.set()
        for _ in range(int(WAIT_S / 0.02)):
            r = c.get(f"/v1/jobs/{job['id']}")
            if r.json()["job"]["status"] != "running":
                break
            time.sleep(0.02)
        assert r.json()["job"]["status"] == "cancelled"
        again = c.delete(f"/v1/jobs/{job['id']}")
        assert again.status_code == 200 and again.json()["job"]["status"] == "cancelled"
        assert c.delete("/v1/jobs/0123456789abcdef").status_code == 404
        big = c.post("/v1/namespaces/g/files?wait=true", files={"file": ("b.md", _markdown(4), "text/markdown")})
        assert big.status_code == 413 and big.json()["job"]["error"]["code"] == "payload_too_large"
        ok = c.post("/v1/namespaces/g/files?wait=true", files={"file": ("c.md", _markdown(3), "text/markdown")})
        assert ok.status_code == 200 and ok.json()["job"]["chunks_done"] == 3


# ---------------------------------------------------------------------------- parse processes


def test_the_parse_pool_kills_a_task_at_its_deadline_and_keeps_serving():
    pool = ParsePool(size=1)
    try:
        with pytest.raises(PayloadTooLarge, match="longer than the limit of 0.3 s"):
            pool.run(time.sleep, 30, timeout_s=0.3)
        assert pool.run(sorted, [3, 1, 2], timeout_s=WAIT_S) == [1, 2, 3]
        child = pool._idle[0]
        assert pool.run(sorted, [2, 1], timeout_s=WAIT_S) == [1, 2] and pool._idle == [child]  # reused
        with pytest.raises(InvalidArgument, match="line 1: invalid JSON"):
            pool.run(_bad_json, None, timeout_s=WAIT_S)
        with pytest.raises(VectorDBError, match="parsing failed: ZeroDivisionError"):
            pool.run(_divide, 0, timeout_s=WAIT_S)

        def cancel() -> None:
            raise KeyboardInterrupt  # any exception from check stops the task

        with pytest.raises(KeyboardInterrupt):
            pool.run(time.sleep, 30, timeout_s=WAIT_S, check=cancel)
        with pytest.raises(VectorDBError, match="ended unexpectedly"):
            pool.run(_exit, 3, timeout_s=WAIT_S)
    finally:
        pool.close()
    assert pool._idle == []


def _bad_json(_) -> None:
    from ingest.parsers import parse_jsonl

    parse_jsonl(b"{", max_docs=1)


def _divide(n: int) -> float:
    return 1 / n


def _exit(code: int) -> None:
    import os

    os._exit(code)


def test_cutting_a_long_run_of_punctuation_is_exact_and_equals_the_search():
    """The guided cut of ingest.chunker gives the spans the old search gave, where the
    tokenizer counts a slice as it counts the whole (here: one token per '&')."""
    counter = TokenizerCounter()
    text = "&" * 20_000
    for config in (ChunkingConfig(32, 4), ChunkingConfig(256, 32)):
        packer = _SectionPacker(text, config, counter)
        spans = packer._cut_word(0, len(text))
        searched, start = [], 0
        while start < len(text):
            stop, tokens = packer._searched_span(start, len(text))
            searched.append((start, stop, tokens))
            start = stop
        assert spans == searched
        assert all(tokens == config.chunk_tokens for _, _, tokens in spans[:-1])


# ---------------------------------------------------------------------------- over HTTP


@pytest.mark.parametrize("chunking", [{"chunk_tokens": 16, "overlap_tokens": 2}, False])
def test_a_jsonl_upload_indexes_each_line_with_its_other_fields_as_attributes(chunking):
    # Before: every line with a title failed the job with "unknown fields ['title']".
    settings = unit_settings(store_uri="memory://jsonl-upload", preload_embedder="")
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))
    lines = [
        {"id": "pumps", "title": "Pumps", "text": "The pump is cleaned every week.", "url": "https://e.org/p"},
        {"id": "valves", "title": "Valves", "text": "Valves are checked monthly.", "attributes": {"team": "ops"}},
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    with TestClient(app, headers=HEADERS) as c:
        c.put("/v1/namespaces/j", json={"embedder": "fake", "chunking": chunking})
        r = c.post("/v1/namespaces/j/files?wait=true", data={"attributes": '{"source": "export", "team": "all"}'},
                   files={"file": ("kb.jsonl", data, "application/jsonl")})
        assert r.status_code == 200, r.text
        assert r.json()["job"]["status"] == "done" and r.json()["job"]["documents"] == 2
        pumps = c.get("/v1/namespaces/j/documents/pumps").json()
        assert pumps["text"] == "The pump is cleaned every week."
        assert {"title": "Pumps", "url": "https://e.org/p", "source": "export", "team": "all"}.items() \
            <= pumps["attributes"].items()
        valves = c.get("/v1/namespaces/j/documents/valves").json()
        assert valves["attributes"]["team"] == "ops" and valves["attributes"]["title"] == "Valves"
        hits = c.post("/v1/namespaces/j/query", json={"text": "pump cleaned", "mode": "bm25", "top_k": 1}).json()
        assert hits["results"][0]["id"] == "pumps"
        bad = c.post("/v1/namespaces/j/files?wait=true",
                     files={"file": ("v.jsonl", b'{"id": "v", "vector": [1, 2]}', "application/jsonl")})
        assert bad.status_code == 400 and "takes no 'vector'" in bad.json()["job"]["error"]["message"]


def test_a_failed_job_keeps_the_status_and_code_the_synchronous_route_gives(services):
    # Before: GET /v1/jobs/{id} showed only {"code", "message"}; the status was lost.
    a, b = services(), services()  # b: another worker, which reads the record from the store
    with TestClient(create_app(a.settings, "all", a), headers=HEADERS) as ca, \
            TestClient(create_app(b.settings, "all", b), headers=HEADERS) as cb:
        ca.put("/v1/namespaces/f", json={"embedder": "fake"})
        waited = ca.post("/v1/namespaces/f/files?wait=true", files={"file": ("a.txt", b"\x00\x01bin", "text/plain")})
        assert waited.status_code == 400
        error = waited.json()["error"]
        assert error["code"] == "invalid_argument" and error["request_id"] == waited.headers["x-request-id"]
        job_id = waited.json()["job"]["id"]
        for client in (ca, cb):
            job = client.get(f"/v1/jobs/{job_id}").json()["job"]
            assert job["status"] == "failed"
            assert job["error"] == {"code": "invalid_argument", "message": error["message"], "status": 400}
        assert b.job(job_id).http_status == 400
