"""Integration tier for upload jobs: real ``vectordb serve`` processes, the real model (numpy
runtime), a real S3 server. A job's record outlives the worker that ran it (SIGKILL), and
a cancel sent to one server stops the job another server runs."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.s3server import s3_env
from vectordb.testing import Server, start_server

pytestmark = [pytest.mark.s3, pytest.mark.integration]

HEADERS = {"X-Requested-With": "tests"}  # a multipart POST needs it (api/access.py)
# ~800 chunks of 32 tokens, 8 per embedding batch: many seconds of work for the real model,
# with a checkpoint every batch.
TEXT = "\n\n".join(f"Paragraph {n}: the pump number {n} is cleaned every week by the night shift."
                   for n in range(1600)).encode()
WAIT_S = 60.0


@pytest.fixture
def env(s3_endpoint):
    return s3_env(
        s3_endpoint, "jobs",
        VECTORDB_GROUP_COMMIT_MS="10",
        VECTORDB_EMBED_RUNTIME="numpy",  # the same MiniLM vectors, loaded in ~0.1 s
        VECTORDB_EMBED_BATCH_SIZE="8",
        VECTORDB_JOB_HEARTBEAT_S="0.2",
        VECTORDB_JOB_STALE_S="2",
    )


@pytest.fixture
def servers(tmp_path):
    started: list[Server] = []

    def start(env: dict) -> Server:
        server = start_server(env, tmp_path, "all")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, headers=HEADERS)


def _start_job(c: httpx.Client) -> str:
    assert c.put("/v1/namespaces/manual", json={"embedder": "minilm",
                                                "chunking": {"chunk_tokens": 32, "overlap_tokens": 4}}).status_code == 200
    r = c.post("/v1/namespaces/manual/files", files={"file": ("manual.txt", TEXT, "text/plain")})
    assert r.status_code == 202, r.text
    return r.json()["job"]["id"]


def _poll(c: httpx.Client, job_id: str, until) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()["job"]
        if until(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {job}")


def _embedding(job: dict) -> bool:
    return job["status"] == "running" and job["chunks_done"] > 0


def test_a_killed_workers_job_reads_as_interrupted_on_a_new_server(env, servers):
    first = servers(env)
    with _client(first) as c:
        job_id = _start_job(c)
        running = _poll(c, job_id, _embedding)
    assert running["chunks_total"] > 100 and running["chunks_done"] < running["chunks_total"]
    first.kill()
    second = servers(env)
    with _client(second) as c:
        job = _poll(c, job_id, lambda job: job["status"] != "running")
        assert job["status"] == "failed" and job["error"]["code"] == "interrupted", job
        assert job["namespace"] == "manual" and job["version"] is None
        rows = c.get("/v1/namespaces/manual").json()["rows"]
        assert rows["indexed"] + rows["unindexed"] == 0  # nothing of the job was committed


def test_a_cancel_sent_to_another_server_stops_the_job(env, servers):
    runner, other = servers(env), servers(env)
    with _client(runner) as a, _client(other) as b:
        job_id = _start_job(a)
        _poll(a, job_id, _embedding)
        r = b.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 202 and r.json()["job"]["cancel_requested"] is True
        job = _poll(b, job_id, lambda job: job["status"] != "running")
        assert job["status"] == "cancelled" and job["version"] is None
        assert job["chunks_done"] < job["chunks_total"]
        assert a.get(f"/v1/jobs/{job_id}").json()["job"]["status"] == "cancelled"
        rows = b.get("/v1/namespaces/manual").json()["rows"]
        assert rows["indexed"] + rows["unindexed"] == 0
