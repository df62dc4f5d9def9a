"""The torch search path (query/gpu.py), exercised on CPU tensors.

The backend must answer like the FAISS kernels of vectordb/ivf.py on the same data (same
rows, scores within 1e-5), and the service with ``search_device="torch-cpu"`` like the
default. CUDA checks run only where torch sees a GPU.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from api.service import Service
from query import gpu
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import ivf
from vectordb.errors import VectorDBError
from vectordb.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
METRICS = ["cosine", "dot", "l2"]



def _in_threads(n: int, call) -> list:
    """``[call(0), ..., call(n - 1)]``, each made from its own thread, all at once."""
    got: list = [None] * n

    def caller(i):
        got[i] = call(i)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got

def _segment(rng, rows: int, dims: int, nlist: int, metric: str, empty: int = 0):
    """Vectors sorted by partition, centroids, row offsets (``empty`` extra far-away
    centroids own no rows)."""
    vectors = rng.normal(size=(rows, dims)).astype(np.float32)
    if metric == "cosine":
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    centroids = ivf.train_centroids(vectors, nlist, metric)
    labels = ivf.assign(vectors, centroids, metric)
    if empty:
        far = rng.normal(size=(empty, dims)).astype(np.float32) * 50
        centroids = np.concatenate([centroids, far])
    order = np.argsort(labels, kind="stable")
    part_rows = np.zeros(len(centroids) + 1, np.int64)
    np.cumsum(np.bincount(labels, minlength=len(centroids)), out=part_rows[1:])
    return vectors[order], centroids, part_rows


def _reference(vectors, centroids, part_rows, q, k, nprobe, metric, dead=frozenset()):
    """ivf.probe + ivf.scan over the probed partitions (the FAISS path), as segment rows."""
    parts = [int(p) for p in ivf.probe(centroids, q.reshape(1, -1), nprobe, metric)[0] if p >= 0]
    rows = np.concatenate([np.arange(part_rows[p], part_rows[p + 1]) for p in parts]).astype(np.int64)
    rows = np.array([r for r in rows if r not in dead], np.int64)
    if not len(rows):
        return np.zeros(0, np.float32), rows
    scores, sub = ivf.scan(vectors[rows], q, k, metric)
    return scores, rows[sub]


def _assert_same(got_scores, got_rows, want_scores, want_rows):
    n = len(want_rows)
    assert list(got_rows[:n]) == list(want_rows)
    # float32 rounding: the l2 expansion |q|² - 2q·x + |x|² loses a few ulps of large distances
    np.testing.assert_allclose(got_scores[:n], want_scores, rtol=1e-6, atol=1e-5)
    assert (got_rows[n:] == -1).all() and np.isneginf(got_scores[n:]).all()


def _loader(vectors, part_rows, calls):
    def load(parts):
        calls.append(list(parts))
        return [(vectors[part_rows[p] : part_rows[p + 1]], [f"r{r}" for r in range(part_rows[p], part_rows[p + 1])]) for p in parts]

    return load


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("lazy", [False, True])
def test_backend_answers_like_ivf(metric, lazy):
    rng = np.random.default_rng(3)
    vectors, centroids, part_rows = _segment(rng, 3000, 24, 30, metric, empty=3)
    calls: list = []
    if lazy:
        index = gpu.DeviceIndex(centroids, part_rows, metric, "cpu", loader=_loader(vectors, part_rows, calls))
    else:
        index = gpu.DeviceIndex(centroids, part_rows, metric, "cpu", vectors=vectors)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    if metric == "cosine":
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for nprobe in (1, 4, 33):
        batch_scores, batch_rows = index.search(queries, 10, nprobe)
        for i, q in enumerate(queries):
            want = _reference(vectors, centroids, part_rows, q, 10, nprobe, metric)
            one_scores, one_rows = index.search(q, 10, nprobe)  # batch of 1
            _assert_same(one_scores[0], one_rows[0], *want)
            _assert_same(batch_scores[i], batch_rows[i], *want)
    if lazy:
        loaded = [p for call in calls for p in call]
        assert len(loaded) == len(set(loaded))  # each partition copied once
        assert all(part_rows[p + 1] > part_rows[p] for p in loaded)  # empty ones never
        assert index.ids[5] == "r5"


@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_the_probed_rows_and_excluded_rows(metric):
    rng = np.random.default_rng(5)
    vectors, centroids, part_rows = _segment(rng, 300, 8, 6, metric, empty=2)
    index = gpu.DeviceIndex(centroids, part_rows, metric, "cpu", vectors=vectors)
    queries = rng.normal(size=(7, 8)).astype(np.float32)
    dead = frozenset(range(0, 300, 3))
    for nprobe in (1, 2, 8):
        scores, rows = index.search(queries, 500, nprobe)
        kept_scores, kept_rows = index.search(queries, 500, nprobe, exclude=lambda r: np.isin(r, list(dead)))
        for i, q in enumerate(queries):
            _assert_same(scores[i], rows[i], *_reference(vectors, centroids, part_rows, q, 500, nprobe, metric))
            want = _reference(vectors, centroids, part_rows, q, 500, nprobe, metric, dead)
            _assert_same(kept_scores[i], kept_rows[i], *want)


def test_query_chunks_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(8)
    vectors, centroids, part_rows = _segment(rng, 2000, 16, 20, "dot")
    index = gpu.DeviceIndex(centroids, part_rows, "dot", "cpu", vectors=vectors)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    whole = index.search(queries, 10, 20)
    monkeypatch.setattr(gpu, "_CHUNK_ELEMENTS", 2000 * 3)  # 3 queries per matmul
    chunked = index.search(queries, 10, 20)
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_allclose(whole[0], chunked[0], rtol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_gathered_rows_answer_like_slices(monkeypatch, metric):
    """CPU tensors score probed runs in place; a GPU gathers them first. Both must agree."""
    rng = np.random.default_rng(12)
    vectors, centroids, part_rows = _segment(rng, 2000, 16, 40, metric, empty=1)
    index = gpu.DeviceIndex(centroids, part_rows, metric, "cpu", vectors=vectors)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    dead = np.arange(0, 2000, 7)
    in_place = index.search(queries, 10, 3, exclude=lambda r: np.isin(r, dead))
    monkeypatch.setattr(gpu, "_MAX_RUNS", 0)
    gathered = index.search(queries, 10, 3, exclude=lambda r: np.isin(r, dead))
    np.testing.assert_array_equal(in_place[1], gathered[1])
    np.testing.assert_allclose(in_place[0], gathered[0], rtol=1e-6)
    for i, q in enumerate(queries):
        want = _reference(vectors, centroids, part_rows, q, 10, 3, metric, frozenset(dead.tolist()))
        _assert_same(gathered[0][i], gathered[1][i], *want)


def test_everything_empty():
    centroids = np.eye(4, dtype=np.float32)
    index = gpu.DeviceIndex(centroids, np.zeros(5, np.int64), "dot", "cpu", vectors=np.zeros((0, 4), np.float32))
    scores, rows = index.search(np.ones((2, 4), np.float32), 3, 2)
    assert (rows == -1).all() and np.isneginf(scores).all()


def test_resolve_device():
    assert gpu.resolve_device("cpu") is None
    assert gpu.resolve_device("torch-cpu") == "cpu"
    import torch

    if torch.cuda.is_available():
        assert gpu.resolve_device("auto") == gpu.resolve_device("cuda") == "cuda"
    else:
        assert gpu.resolve_device("auto") is None
        with pytest.raises(VectorDBError):
            gpu.resolve_device("cuda")
    with pytest.raises(VectorDBError):
        gpu.resolve_device("tpu")


# --- micro-batching ----------------------------------------------------------------------


def test_microbatcher_gives_each_concurrent_caller_its_own_answer():
    sizes: list[int] = []

    def run(items):
        sizes.append(len(items))
        return [x * 2 for x in items]

    batcher = gpu.MicroBatcher(run, max_batch=8, max_wait_us=2000)
    answers: dict[int, int] = {}
    errors: list = []

    def caller(t):
        try:
            for i in range(50):
                x = t * 1000 + i
                answers[x] = batcher(x)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert not errors
    assert len(answers) == 800 and all(v == 2 * x for x, v in answers.items())
    assert sum(sizes) == 800 and max(sizes) <= 8 and batcher.batches == len(sizes)


def test_microbatcher_search_matches_direct_search_and_async_callers():
    rng = np.random.default_rng(11)
    vectors, centroids, part_rows = _segment(rng, 1500, 16, 15, "cosine")
    index = gpu.DeviceIndex(centroids, part_rows, "cosine", "cpu", vectors=vectors)
    queries = rng.normal(size=(64, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    want_scores, want_rows = index.search(queries, 10, 3)

    def run(batch):
        scores, rows = index.search(np.stack(batch), 10, 3)
        return list(zip(scores, rows))

    batcher = gpu.MicroBatcher(run, max_batch=16, max_wait_us=1000)
    got = _in_threads(len(queries), lambda i: batcher(queries[i]))
    for i, (scores, rows) in enumerate(got):
        assert list(rows) == list(want_rows[i])
        np.testing.assert_allclose(scores, want_scores[i], atol=1e-6)

    async def many():
        return await asyncio.gather(*(batcher.asubmit(q) for q in queries))

    for i, (_, rows) in enumerate(asyncio.run(many())):
        assert list(rows) == list(want_rows[i])
    batcher.close()


def test_microbatcher_reports_errors_to_every_caller_of_the_batch():
    def run(items):
        raise ValueError("boom")

    batcher = gpu.MicroBatcher(run, max_batch=4, max_wait_us=100)
    futures = [batcher.submit(i) for i in range(3)]
    for f in futures:
        with pytest.raises(ValueError, match="boom"):
            f.result(timeout=10)
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(1)


def test_segment_tensors_micro_batch_concurrent_queries_of_several_shapes():
    """On a GPU the service micro-batches; each caller must still get its own k and nprobe."""
    rng = np.random.default_rng(13)
    vectors, centroids, part_rows = _segment(rng, 1200, 16, 12, "l2")
    index = gpu.DeviceIndex(centroids, part_rows, "l2", "cpu", vectors=vectors)
    tensors = gpu.SegmentTensors("cpu", 1 << 30, micro_batch=True)
    queries = rng.normal(size=(48, 16)).astype(np.float32)
    shapes = [(5 + i % 3 * 10, 1 + i % 4) for i in range(len(queries))]  # (k, nprobe)
    got = _in_threads(len(queries), lambda i: tensors.search(index, queries[i], *shapes[i]))
    for i, (k, nprobe) in enumerate(shapes):
        want = index.search(queries[i], k, nprobe)
        assert got[i][1].tolist() == want[1][0].tolist()
        np.testing.assert_allclose(got[i][0], want[0][0], rtol=1e-6)
    # A caller with rows to exclude is answered on its own, correctly.
    scores, rows = tensors.search(index, queries[0], 10, 3, exclude=lambda r: r % 2 == 0)
    assert len(rows) == 10 and all(r % 2 == 1 for r in rows if r >= 0)


def test_held_tensors_do_not_keep_a_service_reader_alive():
    import gc
    import weakref

    rng = np.random.default_rng(2)
    svc = Service(_settings("torch-cpu"), store=MemoryStore())
    svc.create_namespace("ns", "none", 8, "dot")
    svc.upsert("ns", _docs(rng.normal(size=(120, 8)).astype(np.float32)))
    svc.index("ns")
    svc.query("ns", vector=rng.normal(size=8).tolist())
    reader = weakref.ref(svc.reader)
    held = gpu.segment_tensors(svc.reader, "cpu", 1)
    assert held._held
    tensors = weakref.ref(held)
    svc.close()
    del svc, held
    gc.collect()
    assert reader() is None and tensors() is None


# --- through the service -------------------------------------------------------------------


def _settings(device: str) -> Settings:
    return unit_settings("memory://gpu", search_device=device)


def _docs(vectors, prefix="d", start=0):
    return [{"id": f"{prefix}{start + i}", "vector": v.tolist()} for i, v in enumerate(vectors)]


@pytest.mark.parametrize("metric", METRICS)
def test_service_answers_the_same_on_torch_cpu(metric):
    rng = np.random.default_rng(21)
    store = MemoryStore()
    faiss_svc, torch_svc = Service(_settings("cpu"), store=store), Service(_settings("torch-cpu"), store=store)
    try:
        faiss_svc.create_namespace("ns", "none", 16, metric)
        faiss_svc.upsert("ns", _docs(rng.normal(size=(400, 16)).astype(np.float32)))
        faiss_svc.index("ns")
        faiss_svc.upsert("ns", _docs(rng.normal(size=(300, 16)).astype(np.float32), start=400))
        faiss_svc.index("ns")  # a second segment; overwrites nothing yet
        queries = rng.normal(size=(25, 16)).astype(np.float32)

        def check(**kwargs):
            for q in queries:
                for nprobe in (None, 2, 20):
                    want = faiss_svc.query("ns", vector=q.tolist(), nprobe=nprobe, **kwargs).hits
                    got = torch_svc.query("ns", vector=q.tolist(), nprobe=nprobe, **kwargs).hits
                    assert [h.id for h in got] == [h.id for h in want]
                    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)

        check(top_k=10)
        check(top_k=1000)  # more than any probe returns
        # Tombstones (deletes, overwrites folded into a segment) and a tail that overrides rows.
        faiss_svc.delete("ns", [f"d{i}" for i in range(0, 700, 4)])
        faiss_svc.upsert("ns", _docs(rng.normal(size=(50, 16)).astype(np.float32), start=1))
        faiss_svc.index("ns")
        faiss_svc.delete("ns", [f"d{i}" for i in range(2, 700, 9)])
        faiss_svc.upsert("ns", _docs(rng.normal(size=(20, 16)).astype(np.float32), start=100))
        check(top_k=10)
        check(top_k=30, consistency="eventual")
        # Filtered queries stay on the FAISS path and still agree.
        check(top_k=10, filter={"id": {"$in": [f"d{i}" for i in range(0, 700, 3)]}})
        assert gpu.segment_tensors(torch_svc.reader, "cpu", 1)._held  # the torch path ran
    finally:
        faiss_svc.close()
        torch_svc.close()


def test_segments_over_the_device_budget_fall_back_to_faiss():
    rng = np.random.default_rng(4)
    store = MemoryStore()
    settings = _settings("torch-cpu").model_copy(update={"cache_bytes": 1000})
    faiss_svc, torch_svc = Service(_settings("cpu"), store=store), Service(settings, store=store)
    try:
        faiss_svc.create_namespace("ns", "none", 16, "dot")
        faiss_svc.upsert("ns", _docs(rng.normal(size=(200, 16)).astype(np.float32)))
        faiss_svc.index("ns")
        q = rng.normal(size=16).tolist()
        assert [h.id for h in torch_svc.query("ns", vector=q).hits] == [h.id for h in faiss_svc.query("ns", vector=q).hits]
        assert not gpu.segment_tensors(torch_svc.reader, "cpu", 1000)._held
    finally:
        faiss_svc.close()
        torch_svc.close()


# --- imports ---------------------------------------------------------------------------------


def test_the_torch_path_needs_neither_faiss_nor_torch_at_import():
    code = (
        "import sys; sys.modules['faiss'] = None\n"
        "import query.gpu, query.vector_search\n"
        "assert 'torch' not in sys.modules, 'torch imported at module import'\n"
        "import numpy as np\n"
        "i = query.gpu.DeviceIndex(np.eye(2, dtype=np.float32), np.array([0, 1, 2]), 'l2', 'cpu',"
        " vectors=np.eye(2, dtype=np.float32))\n"
        "print(i.search(np.eye(2, dtype=np.float32), 1, 1)[1].ravel().tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1]"


def test_the_benchmark_runs_without_faiss(tmp_path):
    """bench/gpu.py end to end on a tiny set, with faiss made unimportable (the GPU machine
    has none)."""
    code = (
        "import sys, runpy; sys.modules['faiss'] = None\n"
        f"sys.argv = ['gpu.py', '--device', 'cpu', '--rows', '3000', '--minutes', '0.05', '--skip-embedding',"
        f" '--cpu-threads', '1', '--out', {str(tmp_path)!r}]\n"
        "runpy.run_path('bench/gpu.py', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "queries/s, batch 1024" in out.stdout
    (written,) = tmp_path.glob("*-gpu-cpu-3000.json")
    record = json.loads(written.read_text())
    for side in ("cpu", "device"):
        assert record["results"][side]["recall_at_10"] > 0.9
        assert record["results"][side]["qps_b1_microbatch"] > 0


# --- CUDA ---------------------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_answers_like_cpu_tensors(metric):
    rng = np.random.default_rng(9)
    vectors, centroids, part_rows = _segment(rng, 5000, 32, 50, metric, empty=2)
    queries = rng.normal(size=(100, 32)).astype(np.float32)
    on_cpu = gpu.DeviceIndex(centroids, part_rows, metric, "cpu", vectors=vectors).search(queries, 10, 5)
    calls: list = []
    on_gpu = gpu.DeviceIndex(centroids, part_rows, metric, "cuda", loader=_loader(vectors, part_rows, calls))
    got = on_gpu.search(queries, 10, 5)
    np.testing.assert_allclose(got[0], on_cpu[0], atol=1e-4)
    assert (got[1] == on_cpu[1]).mean() > 0.99  # float rounding may swap near-ties
