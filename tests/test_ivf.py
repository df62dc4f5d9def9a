"""The IVF kernels against brute force: the numpy path a fresh worker starts on and the
FAISS path it moves to must pick the same rows and partitions."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tests.fakes import scan_blocks
from vectordb import ivf

METRICS = ["cosine", "dot", "l2"]


def brute_force(vectors: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    v, q = vectors.astype(np.float64), q.astype(np.float64)
    return -((v - q) ** 2).sum(axis=1) if metric == "l2" else v @ q


def data(metric: str, rows: int = 2000, dims: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, dims)).astype(np.float32)
    queries = rng.standard_normal((5, dims)).astype(np.float32)
    if metric == "cosine":
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return vectors, queries


@pytest.fixture(params=["numpy", "faiss"])
def kernel(request, monkeypatch):
    """Run a test with FAISS treated as not yet imported (numpy), or as imported."""
    if request.param == "numpy":
        monkeypatch.setattr(ivf, "_faiss_if_loaded", lambda: None)
    else:
        monkeypatch.setattr(ivf, "_faiss_if_loaded", lambda: faiss)
    return request.param


@pytest.mark.parametrize("metric", METRICS)
def test_scan_is_exact(kernel, metric):
    vectors, queries = data(metric)
    for q in queries:
        scores, rows = ivf.scan(vectors, q, 10, metric)
        truth = brute_force(vectors, q, metric)
        assert list(rows) == list(np.argsort(-truth, kind="stable")[:10])
        np.testing.assert_allclose(scores, truth[rows], rtol=1e-4, atol=1e-3)
        assert scores.dtype == np.float32 and rows.dtype == np.int64


@pytest.mark.parametrize("metric", METRICS)
def test_probe_picks_the_closest_centroids(kernel, metric):
    centroids, queries = data(metric, rows=64)
    parts = ivf.probe(centroids, queries, 6, metric)
    assert parts.shape == (5, 6)
    for q, row in zip(queries, parts):
        assert list(row) == list(np.argsort(-brute_force(centroids, q, metric), kind="stable")[:6])


def test_k_beyond_the_rows_and_empty_inputs(kernel):
    vectors, queries = data("cosine", rows=4)
    scores, rows = ivf.scan(vectors, queries[0], 10, "cosine")
    assert sorted(rows) == [0, 1, 2, 3] and list(scores) == sorted(scores, reverse=True)
    scores, rows = ivf.scan(vectors[:0], queries[0], 10, "cosine")
    assert len(scores) == len(rows) == 0
    assert ivf.probe(vectors, queries, 99, "cosine").shape == (5, 4)


def test_equal_scores_come_in_row_order():
    vectors = np.tile(np.eye(3, dtype=np.float32), (4, 1))  # the same three rows, four times over
    q = np.array([1, 0, 0], np.float32)
    rows = ivf._top(vectors @ q, 4)
    assert list(rows) == [0, 3, 6, 9]


def test_a_fresh_process_answers_before_faiss_is_imported():
    import subprocess
    import sys

    code = (
        "import sys, time, numpy as np\n"
        "from vectordb import ivf\n"
        "v = np.eye(4, dtype=np.float32)\n"
        "print(ivf.scan(v, v[2], 1, 'dot')[1][0], 'faiss' in sys.modules)\n"
        "ivf.load_faiss_soon()\n"
        "time.sleep(ivf._FAISS_IMPORT_DELAY_S + 3)\n"
        "print(ivf._faiss_if_loaded() is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["2", "False", "True"]


@pytest.mark.parametrize("metric", METRICS)
def test_both_kernels_report_identical_scores(monkeypatch, metric):
    """A fresh worker (numpy) and a warm one (FAISS) must answer with the same numbers."""
    vectors, queries = data(metric)
    answers = []
    for kernel in (lambda: None, lambda: faiss):
        monkeypatch.setattr(ivf, "_faiss_if_loaded", kernel)
        answers.append([ivf.scan(vectors, q, 10, metric) for q in queries])
    for (s1, r1), (s2, r2) in zip(*answers):
        assert list(r1) == list(r2)
        assert s1.tobytes() == s2.tobytes()


@pytest.mark.parametrize("metric", METRICS)
def test_a_block_scan_is_one_exact_scan_over_all_blocks(kernel, metric):
    vectors, queries = data(metric, rows=300)
    cuts = [0, 40, 40, 41, 200, 200, 300]  # empty blocks too
    blocks = [vectors[a:b] for a, b in zip(cuts, cuts[1:])]
    for q in queries:
        scores, which, rows = scan_blocks(blocks, q, 12, metric)
        got = [cuts[w] + r for w, r in zip(which, rows)]
        truth = brute_force(vectors, q, metric)
        assert got == list(np.argsort(-truth, kind="stable")[:12])
        single = ivf.scan(vectors, q, 12, metric)
        assert scores.tobytes() == single[0].tobytes()  # the same numbers as any other scan
    assert [len(x) for x in scan_blocks([vectors[:0]], queries[0], 5, metric)] == [0, 0, 0]


@pytest.mark.parametrize("metric", METRICS)
def test_blocks_scanned_as_they_arrive_answer_as_one_scan_of_all(kernel, metric):
    vectors, queries = data(metric, rows=300)
    cuts = [0, 40, 40, 41, 200, 200, 300]  # empty blocks too
    blocks = [vectors[a:b] for a, b in zip(cuts, cuts[1:])]
    rng = np.random.default_rng(1)
    for q in queries:
        want = scan_blocks(blocks, q, 12, metric)
        got = scan_blocks(blocks, q, 12, metric, rng.permutation(len(blocks)))  # any order of arrival
        assert [x.tolist() for x in got] == [x.tolist() for x in want]
        assert got[0].tobytes() == want[0].tobytes()
    assert [len(x) for x in ivf.BlockScan(queries[0], 5, metric).result()] == [0, 0, 0]


@pytest.mark.parametrize("metric", METRICS)
def test_blocks_with_dead_rows_answer_as_a_scan_of_their_live_rows(kernel, metric):
    vectors, queries = data(metric, rows=300)
    cuts = [0, 40, 41, 200, 300]
    rng = np.random.default_rng(2)
    live = rng.random(300) > 0.6  # most rows dead: a block picks k + its dead ones
    live[40] = False  # a block of dead rows only
    blocks = [vectors[a:b] for a, b in zip(cuts, cuts[1:])]
    for q in queries:
        scan = ivf.BlockScan(q, 12, metric)
        for i in (3, 0, 2, 1):
            scan.add(i, blocks[i], live[cuts[i] : cuts[i + 1]])
        scores, which, rows = scan.result()
        got = [cuts[w] + r for w, r in zip(which, rows)]
        truth = np.where(live, brute_force(vectors, q, metric), -np.inf)
        assert got == list(np.argsort(-truth, kind="stable")[:12])
    tied = np.repeat(vectors[:1], 30, axis=0)  # 30 equal rows: k = 5 of them, or all with ties
    scan = ivf.BlockScan(queries[0], 5, metric)
    scan.add(0, tied[:20], np.ones(20, bool))
    scan.add(1, tied[20:])
    assert len(scan.result()[0]) == 5
    assert len(scan.result(ties=True)[0]) == 10  # each block picked its own k: ties beyond are not seen


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("stored", ["float16", "float32"])
def test_a_layout_ranks_its_centroids_as_stored_as_an_exact_ranking_does(kernel, metric, stored):
    from vectordb import segment

    centroids, queries = data(metric, rows=500)
    part_rows = np.arange(501, dtype=np.int64)
    layout = segment.Layout.from_bytes(segment.Layout(centroids, part_rows * 8, part_rows,
                                                      "int8" if stored == "float16" else "float32").to_bytes())
    assert layout.stored_centroids.dtype == np.dtype(stored) and layout.centroids.dtype == np.float32
    for q in queries:
        scores, parts = layout.top_centroids(q, 20, metric)
        truth = ivf.exact_scores(layout.centroids, q, metric)
        assert list(parts) == list(np.argsort(-truth, kind="stable")[:20])
        np.testing.assert_allclose(scores, truth[parts], rtol=1e-5, atol=1e-4)
    assert len(layout.top_centroids(queries[0], 10_000, metric)[1]) == 500


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_two_level_assignment_finds_nearly_every_nearest_centroid(metric):
    """Past TWO_LEVEL_MIN_CENTROIDS, rows are compared with a few groups' centroids only;
    rows near a centroid (as IVF rows are: the centroids were trained on them) still find
    it, and every label is a centroid of the set. Below it, assignment is exact (and for
    the dot metric always)."""
    rng = np.random.default_rng(7)
    dims, nlist = 16, ivf.TWO_LEVEL_MIN_CENTROIDS + 100
    centroids = rng.normal(size=(nlist, dims)).astype(np.float32)
    if metric == "cosine":
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    near = rng.integers(0, nlist, 20_000)
    rows = (centroids[near] + 0.05 * rng.normal(size=(len(near), dims))).astype(np.float32)
    if metric == "cosine":
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    exact = ivf.assign(rows, centroids, metric)
    assigner = ivf.Assigner(centroids, metric)
    assert assigner.groups is not None and sorted(np.concatenate(assigner.groups).tolist()) == list(range(nlist))
    two = assigner(rows)
    assert two.min() >= 0 and two.max() < nlist
    assert np.mean(two == exact) >= 0.99
    small = ivf.Assigner(centroids[:500], metric)
    assert small.groups is None and np.array_equal(small(rows), ivf.assign(rows, centroids[:500], metric))
    assert ivf.Assigner(centroids, "dot").groups is None


def test_query_scans_run_faiss_on_one_thread_and_builds_get_every_thread_back():
    """A query scans one vector: FAISS's OpenMP team only spins beside it (libgomp keeps
    the thread count per calling thread). Builds in the same thread get every thread back;
    other threads are untouched."""
    import threading

    import faiss

    here = faiss.omp_get_max_threads()
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    seen = {}

    def query_then_build():
        ivf.scan(vectors, vectors[0], 5, "cosine")
        seen["after scan"] = faiss.omp_get_max_threads()
        ivf.train_centroids(vectors, 4, "cosine")
        seen["after build"] = faiss.omp_get_max_threads()
        ivf.scan_rows(vectors, np.arange(0, 500, 3), vectors[1], 5, "cosine")
        seen["after filtered scan"] = faiss.omp_get_max_threads()

    thread = threading.Thread(target=query_then_build)
    thread.start()
    thread.join()
    # The process default: what threads that set nothing have (captured at the first call).
    assert seen == {"after scan": 1, "after build": ivf._default_threads, "after filtered scan": 1}
    assert faiss.omp_get_max_threads() == here


def _runs(numbers: np.ndarray) -> int:
    """Runs of consecutive numbers in ``numbers``."""
    s = np.sort(numbers)
    return int(np.sum(np.diff(s) > 1)) + 1


def test_spatial_order_puts_a_querys_probes_in_few_runs(monkeypatch):
    """Centroids numbered in spatial order (what train_centroids returns): a query's
    nprobe nearest ones form a few runs of consecutive numbers, where k-means' own
    numbering scatters them; the order is a permutation and deterministic."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((40, 32))
    points = (centres[rng.integers(0, 40, 2000)] + 0.3 * rng.standard_normal((2000, 32))).astype(np.float32)
    order = ivf.spatial_order(points)
    assert sorted(order.tolist()) == list(range(2000))
    assert np.array_equal(order, ivf.spatial_order(points.copy()))
    queries = points[rng.integers(0, 2000, 50)] + 0.1 * rng.standard_normal((50, 32)).astype(np.float32)
    shuffled = points[rng.permutation(2000)]  # as k-means numbers them: no order in space
    before = [_runs(p) for p in ivf.probe(shuffled, queries, 40, "l2")]
    after = [_runs(p) for p in ivf.probe(points[order], queries, 40, "l2")]
    assert np.mean(after) < 0.4 * np.mean(before)
    assert ivf.spatial_order(points[:2]).tolist() == [0, 1] and len(ivf.spatial_order(points[:0])) == 0
    ordered = []
    real = ivf.spatial_order
    monkeypatch.setattr(ivf, "spatial_order", lambda c: ordered.append(len(c)) or real(c))
    assert ivf.train_centroids(points, 64, "l2").shape == (64, 32) and ordered == [64]


def test_the_same_rows_train_the_same_centroids_in_any_order():
    """k-means starts from rows chosen by their values (ivf.content_order), not their
    places: a compaction or a Ray build that reads the same rows in another order trains
    the same centroids."""
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((5000, 24)).astype(np.float32)  # all of them train (40 x 128 at most)
    once = ivf.train_centroids(rows, 40, "l2")
    again = ivf.train_centroids(rows[rng.permutation(len(rows))], 40, "l2")
    assert np.allclose(once, again, atol=1e-4)
    order = ivf.content_order(rows)
    assert sorted(order.tolist()) == list(range(len(rows)))
    assert np.array_equal(rows[order], rows[::-1][ivf.content_order(rows[::-1])])
