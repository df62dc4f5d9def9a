"""Integration tier: real server processes, the real model, a real S3 server (SeaweedFS)."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from minio import Minio

from tests.s3server import s3_env as env_of
from vectordb.testing import ACCESS_KEY, SECRET_KEY, nfcorpus_docs, siftsmall, start_server

pytestmark = [pytest.mark.s3, pytest.mark.integration]


@pytest.fixture
def s3_env(s3_endpoint):
    # No model preloaded: most tests send vectors; the model test turns it on.
    return env_of(s3_endpoint, "it", VECTORDB_GROUP_COMMIT_MS="10")


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(env, role="all", **extra):
        server = start_server({**env, **{k: str(v) for k, v in extra.items()}}, tmp_path, role)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _bucket_objects(env) -> dict[str, bytes]:
    bucket, prefix = env["VECTORDB_STORE_URI"][len("s3://"):].split("/", 1)
    client = Minio(env["VECTORDB_S3_ENDPOINT"], ACCESS_KEY, SECRET_KEY, secure=False)
    out = {}
    for obj in client.list_objects(bucket, prefix=prefix + "/", recursive=True):
        resp = client.get_object(bucket, obj.object_name)
        try:
            out[obj.object_name] = resp.read()
        finally:
            resp.close()
            resp.release_conn()
    return out


def _holds(key: str, blob: bytes, marker: str) -> bool:
    """Whether an object holds ``marker``, looking inside (compressed) Parquet too."""
    if marker.encode() in blob:
        return True
    if key.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(blob))
        return any(marker in str(v) for col in table.column_names for v in table.column(col).to_pylist())
    return False


def test_ingest_then_query_from_a_fresh_worker_with_real_model(s3_env, servers):
    docs = nfcorpus_docs(40)
    s3_env = {**s3_env, "VECTORDB_PRELOAD_EMBEDDER": "minilm"}
    ingest = servers(s3_env, "ingest")
    with ingest.client() as c:
        assert c.put("/v1/namespaces/nf", json={"embedder": "minilm"}).status_code == 200
        r = c.post("/v1/namespaces/nf/documents", json={"documents": docs[:30]})
        assert r.status_code == 200, r.text
    query_a = servers(s3_env, "query")
    questions = ["vitamin D deficiency", "breast cancer risk", "cholesterol and diet"]
    body = {"top_k": 5, "include": ["text", "attributes"]}
    with query_a.client() as qa:
        before = [qa.post("/v1/namespaces/nf/query", json={"text": q, **body}).json() for q in questions]
        # Read-your-writes: acknowledged by the ingest process, seen at once by the query process.
        with ingest.client() as c:
            ack = c.post("/v1/namespaces/nf/documents", json={"documents": docs[30:]}).json()
        r = qa.post("/v1/namespaces/nf/query", json={"text": docs[35]["text"], **body}).json()
        assert r["version"] >= ack["version"]
        assert r["results"][0]["attributes"]["doc_id"] == docs[35]["id"]
    with ingest.client() as c:
        assert c.post("/v1/namespaces/nf/index", json={}).json()["indexed_rows"] >= 40  # long texts are chunks
    # A new worker process, empty cache, answers exactly like the first one.
    query_b = servers(s3_env, "query")
    with query_a.client() as qa, query_b.client() as qb:
        for q, old in zip(questions, before):
            ra = qa.post("/v1/namespaces/nf/query", json={"text": q, **body}).json()
            rb = qb.post("/v1/namespaces/nf/query", json={"text": q, **body}).json()
            assert ra == rb
            # The first 30 documents rank the same before and after the later ingest and indexing.
            first = {d["id"] for d in docs[:30]}
            kept = [h["id"] for h in rb["results"] if h["attributes"]["doc_id"] in first]
            assert kept[:2] == [h["id"] for h in old["results"]][:2]


def test_two_writer_processes_conflict_retry_and_keep_all_1000(s3_env, servers):
    writers = [servers(s3_env, "ingest"), servers(s3_env, "ingest")]
    with writers[0].client() as c:
        c.put("/v1/namespaces/cw", json={"embedder": "none", "dimensions": 8, "metric": "l2"})
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1000, 8)).round(4)
    errors = []

    def write(w: int) -> None:
        with writers[w].client() as c:
            for b in range(50):
                lo = w * 500 + b * 10
                docs = [{"id": f"doc-{i}", "vector": vectors[i].tolist()} for i in range(lo, lo + 10)]
                r = c.post("/v1/namespaces/cw/documents", json={"documents": docs})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    conflicts = 0
    for w in writers:
        with w.client() as c:
            conflicts += c.get("/healthz").json()["stats"]["commits"]["conflicts"]
    assert conflicts > 0, "the two writers never raced: the retry path was not exercised"
    reader = servers(s3_env, "all")
    with reader.client() as c:
        assert c.get("/v1/namespaces/cw").json()["rows"]["unindexed"] == 1000
        assert c.post("/v1/namespaces/cw/index", json={}).json()["indexed_rows"] == 1000
        for i in (0, 499, 500, 999):
            r = c.post("/v1/namespaces/cw/query", json={"vector": vectors[i].tolist(), "top_k": 1, "nprobe": 100})
            assert r.json()["results"][0]["id"] == f"doc-{i}"


def test_writer_killed_mid_ingest_loses_no_acknowledged_write(s3_env, servers):
    env = {**s3_env, "VECTORDB_INDEX_THRESHOLD_ROWS": "300"}  # background indexing runs during the kill too
    writer = servers(env, "ingest")
    with writer.client() as c:
        c.put("/v1/namespaces/crash", json={"embedder": "none", "dimensions": 4, "metric": "l2"})
    acked: list[str] = []
    stop = threading.Event()

    def write(t: int) -> None:
        with writer.client(timeout=10) as c:
            b = 0
            while not stop.is_set():
                ids = [f"t{t}-b{b}-{i}" for i in range(20)]
                try:
                    r = c.post("/v1/namespaces/crash/documents",
                               json={"documents": [{"id": d, "vector": [b, i, 1, 2]} for i, d in enumerate(ids)]})
                except Exception:
                    return
                if r.status_code == 200:
                    acked.extend(ids)
                b += 1

    threads = [threading.Thread(target=write, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 600 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.kill()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 600
    restarted = servers(env, "all")
    with restarted.client() as c:
        info = c.get("/v1/namespaces/crash").json()
        assert info["rows"]["indexed"] + info["rows"]["unindexed"] >= len(acked)
        missing = [d for d in acked if c.get(f"/v1/namespaces/crash/documents/{d}").status_code != 200]
        assert not missing
        r = c.post("/v1/namespaces/crash/documents", json={"documents": [{"id": "after", "vector": [9, 9, 9, 9]}]})
        assert r.status_code == 200
        assert c.post("/v1/namespaces/crash/index", json={}).status_code == 200
        hit = c.post("/v1/namespaces/crash/query", json={"vector": [9, 9, 9, 9], "top_k": 1}).json()["results"][0]
        assert hit["id"] == "after"


def test_siftsmall_recall_through_the_full_stack(s3_env, servers):
    base, queries, truth = siftsmall()
    server = servers(s3_env, "all")
    with server.client() as c:
        c.put("/v1/namespaces/sift", json={"embedder": "none", "dimensions": 128, "metric": "l2"})
        for lo in range(0, len(base), 1000):
            docs = [{"id": str(i), "vector": base[i].tolist()} for i in range(lo, lo + 1000)]
            assert c.post("/v1/namespaces/sift/documents", json={"documents": docs}).status_code == 200
        r = c.post("/v1/namespaces/sift/index", json={}).json()
        assert r["indexed_rows"] == len(base)
        assert c.get("/v1/namespaces/sift").json()["segments"][0]["partitions"] > 1  # a real IVF, not a flat scan
        found = 0
        for q, gt in zip(queries, truth):
            hits = c.post("/v1/namespaces/sift/query", json={"vector": q.tolist(), "top_k": 10}).json()["results"]
            found += len({int(h["id"]) for h in hits} & set(gt[:10].tolist()))
    recall = found / (10 * len(queries))
    assert recall >= 0.95, recall


def test_deleted_ids_never_returned_and_their_bytes_are_collected(s3_env, servers):
    env = {**s3_env, "VECTORDB_GC_GRACE_S": "0", "VECTORDB_RETAIN_MANIFESTS": "1"}
    server = servers(env, "all")
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(300, 16))
    with server.client() as c:
        c.put("/v1/namespaces/del", json={"embedder": "none", "dimensions": 16, "metric": "cosine"})
        docs = [{"id": f"d{i}", "vector": v.tolist(), "text": f"row {i}"} for i, v in enumerate(vectors)]
        docs[6]["text"] = "TOP-SECRET-MARKER-6"
        c.post("/v1/namespaces/del/documents", json={"documents": docs})
        c.post("/v1/namespaces/del/index", json={})
        assert any(_holds(k, blob, "TOP-SECRET-MARKER-6") for k, blob in _bucket_objects(env).items())
        doomed = [f"d{i}" for i in range(0, 300, 3)]
        c.post("/v1/namespaces/del/documents/delete", json={"ids": doomed})
        for phase in ("tail", "indexed"):
            for i in range(0, 300, 30):
                hits = c.post("/v1/namespaces/del/query", json={"vector": vectors[i].tolist(), "top_k": 20}).json()
                assert not {h["id"] for h in hits["results"]} & set(doomed), phase
            c.post("/v1/namespaces/del/index", json={})
        r = c.post("/v1/namespaces/del/index", json={"compact": True, "gc": True}).json()
        assert r["gc"]["objects_deleted"] > 0
        assert c.get("/v1/namespaces/del").json()["rows"] == {"indexed": 200, "unindexed": 0}
    blobs = _bucket_objects(env)
    assert not any(_holds(k, blob, "TOP-SECRET-MARKER-6") for k, blob in blobs.items())
    assert not any(_holds(k, blob, "row 99") for k, blob in blobs.items())
