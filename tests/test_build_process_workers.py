"""Background builds in child processes, among separate server processes on one real S3
store (SeaweedFS): an ingest worker whose automatic builds run in children while it keeps
acknowledging upserts, overwrites and deletes; a query worker that answered before any
build and then sat idle; ``vectordb gc``; a drop. The stale worker's answers must equal a
fresh reader's, hold every acknowledged write and never name a deleted row."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from api.service import Service
from tests.s3server import s3_env
from tests.test_int8_workers import _answers
from tests.test_lagging_workers import _gc
from vectordb.settings import Settings
from vectordb.testing import start_server

pytestmark = [pytest.mark.s3, pytest.mark.integration]

DIMS = 16
WORDS = ["vitamin", "cancer", "risk", "statin", "iron", "sleep", "diet", "heart"]


def _docs(lo: int, hi: int, rng: np.random.Generator) -> list[dict]:
    return [{"id": f"d{i}", "vector": rng.normal(size=DIMS).round(4).tolist(),
             "text": " ".join(rng.choice(WORDS, 4)) + f" doc {i}",
             "attributes": {"year": 2000 + i % 25, "tenant": f"t{i % 7}"}} for i in range(lo, hi)]


QUERIES = [
    {"vector": [0.3] * DIMS, "top_k": 20},
    {"vector": [0.1, -0.4] * (DIMS // 2), "top_k": 20, "filter": {"year": {"$gte": 2010}}},
    {"text": "vitamin risk", "mode": "bm25", "top_k": 20},
]


@contextlib.contextmanager
def _workers(s3_endpoint: str, tmp_path, prefix: str, **env: str):
    """A ``vectordb serve --role ingest`` and a ``--role query`` process on one SeaweedFS
    prefix (``env`` added), namespace ``n`` created: yields (the ingest server, its client,
    the query worker's client, the env)."""
    env = s3_env(s3_endpoint, prefix, VECTORDB_GROUP_COMMIT_MS="5", **env)
    ingest = start_server(env, tmp_path, "ingest")
    query = start_server(env, tmp_path, "query")
    try:
        with ingest.client() as w, query.client() as q:
            r = w.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "metric": "l2"})
            assert r.status_code in (200, 201), r.text
            yield ingest, w, q, env
    finally:
        ingest.stop()
        query.stop()


def test_a_stale_query_worker_beside_an_ingest_worker_building_in_children(s3_endpoint, tmp_path):
    rng = np.random.default_rng(11)
    with _workers(s3_endpoint, tmp_path, "child-builds", VECTORDB_INDEX_THRESHOLD_ROWS="1000",
                  VECTORDB_FLAT_MAX_ROWS="200", VECTORDB_ROWS_PER_PARTITION="100") as (_, w, q, env):
        first = _docs(0, 500, rng)
        assert w.post("/v1/namespaces/n/documents", json={"documents": first}).status_code == 200
        assert all(_answers(q, body) for body in QUERIES)  # the query worker holds the tail, then idles

        live: dict[str, dict] = {d["id"]: d for d in first}
        deleted: set[str] = set()
        for lo in range(500, 8000, 500):
            batch = _docs(lo, lo + 500, rng)
            assert w.post("/v1/namespaces/n/documents", json={"documents": batch}).status_code == 200
            again = _docs(lo - 500, lo - 480, rng)  # overwrites of the last batch's first rows
            assert w.post("/v1/namespaces/n/documents", json={"documents": again}).status_code == 200
            gone = [f"d{i}" for i in range(lo - 400, lo - 390)]
            assert w.post("/v1/namespaces/n/documents/delete", json={"ids": gone}).status_code == 200
            live.update({d["id"]: d for d in batch + again})
            deleted |= set(gone)
            time.sleep(0.1)  # builds start and commit between the writes
        deadline = time.monotonic() + 120
        while True:  # the background builds that were started have ended
            stats = w.get("/healthz").json()["stats"]["background_builds"]
            if stats["started"] == stats["built"] + stats["failed"] + stats["stopped"] + stats["preempted"]:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.2)
        assert stats["started"] >= 2 and stats["built"] >= 2 and stats["failed"] == 0, stats
        described = w.get("/v1/namespaces/n").json()
        assert described["rows"]["indexed"] > 0 and len(described["segments"]) >= 1
        _gc(env, "n")

        fresh = Service(Settings(store_uri=env["VECTORDB_STORE_URI"], s3_endpoint=s3_endpoint,
                                 s3_access_key=env["VECTORDB_S3_ACCESS_KEY"],
                                 s3_secret_key=env["VECTORDB_S3_SECRET_KEY"], preload_embedder="",
                                 flat_max_rows=200, rows_per_partition=100))
        try:
            for body in QUERIES:
                got = _answers(q, body)
                want = [(h.id, round(h.score, 4)) for h in fresh.query("n", **body).hits]
                assert got == want, body
                assert got and not deleted & {i for i, _ in got}
        finally:
            fresh.close()
        expected = sorted(set(live) - deleted)
        for at in range(0, len(expected), 1000):
            ids = expected[at : at + 1000]
            r = q.post("/v1/namespaces/n/documents/get", json={"ids": ids})
            assert r.status_code == 200, r.text
            got = {d["id"]: d["text"] for d in r.json()["documents"]}
            assert got == {i: live[i]["text"] for i in ids}  # every write, its last text
        r = q.post("/v1/namespaces/n/documents/get", json={"ids": sorted(deleted)})
        assert r.status_code == 200 and not r.json()["documents"]

        # Dropped and re-created: the stale worker sees only the new namespace.
        assert w.delete("/v1/namespaces/n").status_code == 200
        r = w.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "metric": "l2"})
        assert r.status_code in (200, 201), r.text
        assert w.post("/v1/namespaces/n/documents", json={"documents": _docs(9000, 9300, rng)}).status_code == 200
        got = _answers(q, {"vector": [0.3] * DIMS, "top_k": 50})
        assert len(got) == 50 and {i for i, _ in got} <= {f"d{i}" for i in range(9000, 9300)}


def _build_children(parent: int) -> list[int]:
    """The pids of ``parent``'s background build processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and b"ingest.build_process" in cmdline:
                found.append(int(entry.name))
    return found


def _stop_build_children(parent: int) -> list[int]:
    """SIGSTOP to ``parent``'s background build processes; their pids."""
    children = _build_children(parent)
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    return children


def test_post_index_stops_the_ingest_workers_starved_background_build(s3_endpoint, tmp_path):
    """The ingest worker's background build, in a child at the idle priority, gets no CPU
    while the server is busy: stopped here (SIGSTOP, the extreme of it). POST /index does
    not wait for it: it stops the child and builds every acknowledged row itself."""
    rng = np.random.default_rng(5)
    with _workers(s3_endpoint, tmp_path, "starved-build", VECTORDB_INDEX_THRESHOLD_ROWS="120000",
                  VECTORDB_FLAT_MAX_ROWS="1000", VECTORDB_ROWS_PER_PARTITION="200") as (ingest, w, q, _):
        children: list[int] = []
        for lo in range(0, 200_000, 5000):
            docs = [{"id": f"d{i}", "vector": v} for i, v in
                    zip(range(lo, lo + 5000), rng.normal(size=(5000, DIMS)).round(4).tolist())]
            assert w.post("/v1/namespaces/n/documents", json={"documents": docs}).status_code == 200
            if not children:  # the first build starts past 120,000 rows: stop it as it starts
                children = _stop_build_children(ingest.proc.pid)
        deadline = time.monotonic() + 30
        while not children:
            assert time.monotonic() < deadline, "no background build started"
            children = _stop_build_children(ingest.proc.pid)
            time.sleep(0.01)
        try:
            r = w.post("/v1/namespaces/n/index", json={}, timeout=120)
        finally:
            for pid in children:  # whatever happened, nothing stays stopped
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        assert r.status_code == 200, r.text
        stats = w.get("/healthz").json()["stats"]["background_builds"]
        assert stats["preempted"] == 1 and stats["failed"] == 0, stats
        assert not _build_children(ingest.proc.pid)
        described = q.get("/v1/namespaces/n").json()
        assert described["rows"]["indexed"] == 200_000 and described["rows"]["unindexed"] == 0, described
        for at in range(0, 200_000, 20_000):
            ids = [f"d{i}" for i in range(at, at + 20_000, 97)]
            r = q.post("/v1/namespaces/n/documents/get", json={"ids": ids})
            assert {d["id"] for d in r.json()["documents"]} == set(ids)
