"""IVF kernels: train centroids, assign rows, pick partitions, scan exactly.

Pure functions over numpy arrays, FAISS underneath (and numpy until FAISS has been
imported: see ``_faiss_if_loaded``, ``load_faiss_soon``). Scores are "higher is closer" for
every metric: inner product for ``cosine`` (vectors are stored unit-length) and ``dot``,
negative squared L2 distance for ``l2``.

A block of rows to scan is a float32 array or an int8 segment's codes
(:class:`vectordb.int8_rows.Int8Rows`, scanned by FAISS's 8-bit kernel).
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

from vectordb.int8_rows import Int8Rows

# k-means sees at most this many points per centroid: more adds build time, not quality.
_TRAIN_POINTS_PER_CENTROID = 128
_KMEANS_ITERATIONS = 12


def _faiss():
    """FAISS for a build (k-means, assignment): this thread's calls use every OpenMP thread
    (a thread that ran queries is given them back, see :func:`faiss_for_query`)."""
    import faiss  # heavy: imported on first use so workers start fast

    _set_threads(faiss, 0)
    return faiss


# OpenMP threads per calling thread (libgomp keeps the setting per thread): 1 for a query's
# scans, 0 for the process default (builds). Queries search one vector, which FAISS scans
# in one thread anyway, but each Python thread that calls it gets an OpenMP team of its
# own whose idle threads spin: with the reader's pool and the probe executor calling
# FAISS, a 1,000-row int8 partition scan took ~1.2 ms in a warm worker on this 2-core
# machine. Alone, the same scan took 50 us on two threads and 40-43 us on one; with other
# processes busy, 110-660 us on two and 40-44 us on one.
_omp = threading.local()
_default_threads: int | None = None


def _set_threads(faiss, n: int) -> None:
    global _default_threads
    if getattr(_omp, "n", None) == n:
        return
    if _default_threads is None:  # the first call of all: no thread has set its own yet
        _default_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n or _default_threads)
    _omp.n = n


def faiss_for_query():
    """FAISS, where imported, with this thread's scans on one OpenMP thread; else None."""
    faiss = _faiss_if_loaded()
    if faiss is not None:
        _set_threads(faiss, 1)
    return faiss


_FAISS_IMPORT_DELAY_S = 0.05
_faiss_import: threading.Timer | None = None
_faiss_lock = threading.Lock()


def _faiss_if_loaded():
    """FAISS if it has been imported (completely), else None: then numpy scans.

    A fresh query worker answers its first query with numpy rather than wait ~0.1 s for
    FAISS to import; :func:`load_faiss_soon` imports it once that answer is out, and from
    then on scans use it: its single-query scan reads memory ~1.5x faster than BLAS.
    """
    faiss = sys.modules.get("faiss")
    if faiss is not None and not getattr(faiss.__spec__, "_initializing", False):  # not half imported
        return faiss
    return None


def load_faiss_soon() -> None:
    """Import FAISS in a background thread shortly (once per process).

    Called when a query has been answered. Loading FAISS's library holds the interpreter
    lock for ~0.1-0.3 s, so it must not start while that first query is still in flight
    (the short delay lets its response go out).
    """
    global _faiss_import
    if _faiss_import is not None or "faiss" in sys.modules:
        return
    with _faiss_lock:
        if _faiss_import is None:
            _faiss_import = threading.Timer(_FAISS_IMPORT_DELAY_S, _faiss)
            _faiss_import.daemon = True
            _faiss_import.start()


def faiss_metric(metric: str) -> int:
    """FAISS's metric constant for ``metric``."""
    import faiss  # not _faiss(): a query's scan asks too, and must keep its one thread

    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def choose_nlist(rows: int, rows_per_partition: int, flat_max_rows: int) -> int:
    """Number of partitions for a segment of ``rows`` rows (1 = exact search)."""
    if rows <= flat_max_rows:
        return 1
    return max(1, round(rows / rows_per_partition))


def default_nprobe(nlist: int) -> int:
    """Partitions to search per query when the caller does not say: 1% of them, at least 8.
    (At 1M MiniLM-like vectors in 1,000 partitions, 8 gave recall@10 0.948, 16 gave 1.0.)"""
    return min(nlist, max(8, math.ceil(nlist / 100)))


def train_centroids(vectors: np.ndarray, nlist: int, metric: str, seed: int = 1234) -> np.ndarray:
    """k-means centroids (nlist × d). Spherical for cosine, so centroids stay unit-length.
    Started from the sample's rows first in :func:`content_order`, and numbered in
    :func:`spatial_order`."""
    if nlist == 1:
        return vectors.mean(axis=0, keepdims=True).astype(np.float32)
    faiss = _faiss()
    n, dims = vectors.shape
    picked = training_rows(n, nlist, seed)
    sample = vectors[picked] if picked is not None else vectors
    kmeans = faiss.Kmeans(
        dims,
        nlist,
        niter=_KMEANS_ITERATIONS,
        seed=seed,
        spherical=(metric == "cosine"),
        max_points_per_centroid=_TRAIN_POINTS_PER_CENTROID,
        verbose=False,
    )
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    kmeans.train(sample, init_centroids=sample[content_order(sample, seed)[:nlist]])
    centroids = kmeans.centroids.astype(np.float32)
    return centroids[spatial_order(centroids)]


def content_order(rows: np.ndarray, seed: int = 1234) -> np.ndarray:
    """An order of ``rows`` (float32) that follows from their values alone: by a 64-bit
    multiplicative hash of each row's bits. k-means starts from the first ``nlist`` rows
    in this order rather than from rows picked by position, so the same rows train the
    same centroids however a build read them (a compaction reads its segments partition
    by partition, a Ray build gathers its shards' samples one after another)."""
    n, dims = rows.shape
    bits = rows.view(np.uint32)
    mult = np.random.default_rng(seed).integers(1, 2**63, dims, dtype=np.uint64) | np.uint64(1)
    key = np.zeros(n, np.uint64)
    for lo in range(0, n, 1 << 13):  # 25 MB of scratch at 384 dimensions
        block = bits[lo : lo + (1 << 13)].astype(np.uint64)
        block *= mult  # wraps modulo 2**64
        key[lo : lo + len(block)] = block.sum(axis=1, dtype=np.uint64)
    return np.argsort(key, kind="stable")


_ORDER_ITERATIONS = 16  # power iterations for a set's principal direction


def spatial_order(centroids: np.ndarray) -> np.ndarray:
    """An order of ``centroids`` (a permutation) in which near ones mostly have near
    numbers: the set is split at the median of its projection on its principal direction,
    each half the same way, down to pairs, and the halves follow each other. A partition's
    number is its place in ``vectors.bin``, so a query's ``nprobe`` nearest centroids lie
    in a few runs of neighbouring partitions, which a cold query reads in a few ranged GETs
    (``NamespaceReader.partition_loads``): 100 probes of 10,000 centroids of the
    benchmark's vectors fell into ~22 runs instead of ~99 as k-means numbered them.
    Deterministic (the power iteration starts from the set's farthest member)."""
    n = len(centroids)
    x = centroids.astype(np.float64)
    out: list[int] = []
    stack = [np.arange(n)]
    while stack:
        ids = stack.pop()
        if len(ids) <= 2:
            out += ids.tolist()
            continue
        y = x[ids] - x[ids].mean(axis=0)
        v = y[int(np.argmax(np.einsum("ij,ij->i", y, y)))]
        for _ in range(_ORDER_ITERATIONS):
            v = y.T @ (y @ v)
            norm = np.linalg.norm(v)
            if not norm:
                break
            v /= norm
        by = np.argsort(y @ v, kind="stable")
        half = len(ids) // 2
        stack += [ids[by[half:]], ids[by[:half]]]  # the lower half comes out first
    return np.array(out, np.int64)


def training_rows(n: int, nlist: int, seed: int = 1234, max_rows: int | None = None) -> np.ndarray | None:
    """The rows (ascending) k-means trains on, out of ``n``; None: all of them. At most
    :data:`_TRAIN_POINTS_PER_CENTROID` per centroid, and ``max_rows`` (a streamed build's
    memory bound; at least ``nlist``). The same rows whether the build holds every vector
    (:func:`train_centroids`) or gathers these from a spill, so both train the same."""
    sample_size = min(n, nlist * _TRAIN_POINTS_PER_CENTROID)
    if max_rows is not None:
        sample_size = min(sample_size, max(nlist, max_rows))
    if sample_size >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, sample_size, replace=False))


def assign(vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """The partition of each row. Rows are assigned by the metric that queries use."""
    if len(centroids) == 1:
        return np.zeros(len(vectors), np.int64)
    _, labels = _faiss().knn(np.ascontiguousarray(vectors, np.float32), centroids, 1, metric=faiss_metric(metric))
    return labels[:, 0]


# Past this many centroids a build assigns rows in two levels (see Assigner).
TWO_LEVEL_MIN_CENTROIDS = 4096
_GROUPS_SEARCHED = 4


class Assigner:
    """Assigns rows to the nearest of ``centroids``, as :func:`assign` does, for a build
    that assigns many chunks to the same centroids.

    Up to :data:`TWO_LEVEL_MIN_CENTROIDS` centroids, exactly (:func:`assign`: one BLAS pass
    over all of them). Past that, where that pass is most of a build's time (10M rows on
    10,000 centroids: ~7 of 16 minutes on 2 cores), in two levels: the centroids are
    clustered into ~sqrt(nlist) groups (once); a row is compared with every group's
    centre, then with the centroids of its :data:`_GROUPS_SEARCHED` nearest groups only
    (each group's rows one BLAS product): ~1/20 of the work at 10,000 centroids. A row
    whose nearest centroid lies outside those groups goes to the nearest one inside them,
    a partition next to its own; queries probe many partitions, so recall barely moves
    (``bench/assign.py`` measures both). For ``dot`` (unnormalised vectors, where the
    biggest inner product need not be near in any sense a grouping can use) it stays exact.
    """

    def __init__(self, centroids: np.ndarray, metric: str) -> None:
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        self.metric = metric
        self.groups: list[np.ndarray] | None = None
        nlist = len(self.centroids)
        if nlist >= TWO_LEVEL_MIN_CENTROIDS and metric != "dot":
            count = math.ceil(math.sqrt(nlist))
            centres = train_centroids(self.centroids, count, metric, seed=4321)
            labels = assign(self.centroids, centres, metric)
            self.groups = [np.flatnonzero(labels == g) for g in range(count)]
            self.centres = np.ascontiguousarray(centres, np.float32)

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        if self.groups is None:
            return assign(vectors, self.centroids, self.metric)
        x = np.ascontiguousarray(vectors, np.float32)
        searched = min(_GROUPS_SEARCHED, len(self.groups))  # there are ~sqrt(nlist) >= 64 groups
        # Matrix products (numpy's BLAS, :func:`_scores`): faster than FAISS's knn at ~100 columns.
        near = np.argpartition(-_scores(self.centres, x, self.metric), searched - 1, axis=1)[:, :searched]
        flat = near.ravel()
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(len(self.groups) + 1))
        best = np.full(len(x), -np.inf, np.float32)
        labels = np.zeros(len(x), np.int64)
        for g, members in enumerate(self.groups):
            rows = order[bounds[g] : bounds[g + 1]] // searched
            if not len(rows) or not len(members):
                continue
            scores = _scores(self.centroids[members], x[rows], self.metric)
            at = scores.argmax(axis=1)
            score = scores[np.arange(len(rows)), at]
            better = score > best[rows]
            best[rows[better]] = score[better]
            labels[rows[better]] = members[at[better]]
        return labels


def probe(centroids: np.ndarray, queries: np.ndarray, nprobe: int, metric: str) -> np.ndarray:
    """The ``nprobe`` partitions closest to each query (q × nprobe), closest first."""
    nprobe = min(nprobe, len(centroids))
    queries = np.ascontiguousarray(queries, np.float32).reshape(-1, centroids.shape[1])
    faiss = faiss_for_query() if len(queries) == 1 else _faiss_if_loaded()
    if faiss is not None:
        _, parts = faiss.knn(queries, np.ascontiguousarray(centroids, np.float32), nprobe, metric=faiss_metric(metric))
        return parts
    scores = _scores(np.ascontiguousarray(centroids, np.float32), queries, metric)
    return np.stack([_top(row, nprobe) for row in scores]) if len(scores) else np.zeros((0, nprobe), np.int64)


def scan(vectors: np.ndarray | Int8Rows, query: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of one query over ``vectors``: (scores, row indices), best first.

    The rows are picked by FAISS (or by numpy before FAISS is imported); the scores of the
    picked rows are then recomputed by :func:`exact_scores`, so a row's score does not
    depend on which kernel found it and every worker answers with the same numbers.
    """
    k = min(k, len(vectors))
    if k == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    q = np.ascontiguousarray(query, np.float32).reshape(1, -1)
    idx = _pick(vectors, q, k, metric, faiss_for_query())
    scores = exact_scores(vectors[idx], q[0], metric)
    order = np.lexsort((idx, -scores))  # best first, equal scores in row order
    return scores[order], idx[order]


def _pick(vectors: np.ndarray | Int8Rows, q: np.ndarray, k: int, metric: str, faiss) -> np.ndarray:
    """The rows (int64) of the ``k`` (<= len) best of ``vectors`` for ``q`` (1 x d), in no
    particular order: by FAISS where it is imported, else by one numpy pass."""
    if isinstance(vectors, Int8Rows) and faiss is not None:
        _, idx = vectors.index(faiss, faiss_metric(metric)).search(q, k)
        return idx[0].astype(np.int64)
    vectors = _dense(vectors)
    if faiss is not None:
        _, idx = faiss.knn(q, vectors, k, metric=faiss_metric(metric))
        return idx[0].astype(np.int64)
    return _top(_scores(vectors, q, metric)[0], k)


def scan_rows(vectors: np.ndarray | Int8Rows, rows: np.ndarray, q, k: int, metric: str) -> np.ndarray:
    """The ``k`` of ``rows`` (ascending) whose vectors :func:`scan` of ``vectors[rows]``
    would pick, as rows of ``vectors``. Once FAISS is loaded its by-index kernel (for
    codes: its 8-bit scan with a bitmap of ``rows``) scores them where they are: a broad
    filter keeps a third of each of ~30 partitions at 1M rows, and copying those out cost
    more than scanning them. The caller scores the picked rows exactly
    (:func:`exact_scores`), as ``scan`` does."""
    faiss = faiss_for_query()
    if faiss is None:
        return rows[scan(vectors[rows], q, k, metric)[1]]
    k = min(k, len(rows))
    x = np.ascontiguousarray(q, np.float32).reshape(1, -1)
    if isinstance(vectors, Int8Rows):
        kept = np.zeros(len(vectors), bool)
        kept[rows] = True
        bitmap = np.packbits(kept, bitorder="little")  # FAISS's IDSelectorBitmap: bit i of byte i // 8
        params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(vectors), faiss.swig_ptr(bitmap)))
        _, picked = vectors.index(faiss, faiss_metric(metric)).search(x, k, params=params)
        return picked[0].astype(np.int64)
    vectors = np.ascontiguousarray(vectors, np.float32)  # as held: no copy
    subset = np.ascontiguousarray(rows, np.int64)
    found, picked = np.empty((1, k), np.float32), np.empty((1, k), np.int64)
    kernel = faiss.knn_L2sqr_by_idx if metric == "l2" else faiss.knn_inner_products_by_idx
    kernel(faiss.swig_ptr(x), faiss.swig_ptr(vectors), faiss.swig_ptr(subset), x.shape[1], 1, len(vectors),
           len(subset), k, faiss.swig_ptr(found), faiss.swig_ptr(picked), 0)
    return picked[0]


class BlockScan:
    """Exact top-k of one query over several row blocks (a query's probed partitions, of
    one segment or many), blocks added one at a time, as their reads land: each block's
    top ``k`` is picked when it is added (:func:`_pick`: by FAISS, or numpy before FAISS is
    imported; FAISS's scan with its own top-k per block beat numpy's pass + one selection
    by ~25%), so that picking overlaps the reads still in flight; :meth:`result` scores
    the picked rows of all blocks exactly at once (one :func:`exact_scores`, one sort: a
    grown namespace's query scans ~50 small blocks, and scoring each block's picks apart
    cost ~15 µs a block), with ties in block order. Block ``i`` is the caller's numbering, whatever the order of
    arrival, so the answer does not depend on which read landed first. :meth:`add` may
    be called from several threads at once (each block once)."""

    def __init__(self, query: np.ndarray, k: int, metric: str) -> None:
        self.q = np.ascontiguousarray(query, np.float32).reshape(1, -1)
        self.k, self.metric = k, metric
        self.picked: dict[int, tuple[np.ndarray | Int8Rows, np.ndarray]] = {}

    def add(self, i: int, block: np.ndarray | Int8Rows, live: np.ndarray | None = None) -> None:
        """Block ``i``; ``live``: which of its rows may be picked (None: all). A block with
        dead rows picks as many more rows as it has dead ones, then drops the dead."""
        n = len(block)
        if not n or not self.k:
            return
        dead = 0 if live is None else n - int(np.count_nonzero(live))
        if dead == n:
            return
        rows = _pick(block, self.q, min(self.k + dead, n), self.metric, faiss_for_query())
        if dead:
            rows = rows[live[rows]]
        self.picked[i] = (block, rows)

    def result(self, ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, block, row within the block) of the top ``k``, best first (``ties``: and
        every picked row tied with the k-th)."""
        if not self.picked:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        blocks = sorted(self.picked)
        rows = np.concatenate([self.picked[i][1] for i in blocks])
        which = np.repeat(np.array(blocks, np.int64), [len(self.picked[i][1]) for i in blocks])
        scores = exact_scores(np.concatenate([block[p] for block, p in (self.picked[i] for i in blocks)]),
                              self.q[0], self.metric)
        order = np.lexsort((rows, which, -scores))
        if len(order) > self.k:
            order = order[scores[order] >= scores[order[self.k - 1]]] if ties else order[: self.k]
        return scores[order], which[order], rows[order]


def _dense(vectors: np.ndarray | Int8Rows) -> np.ndarray:
    if isinstance(vectors, Int8Rows):
        return vectors.dense()
    return np.ascontiguousarray(vectors, np.float32)


def exact_scores(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Scores of a few rows, one way everywhere (einsum, not BLAS: the sum order does not
    depend on the matrix shape or on threads). Negative squared distance for ``l2``."""
    if metric == "l2":
        diff = vectors - query
        return -np.einsum("ij,ij->i", diff, diff)
    return np.einsum("ij,j->i", vectors, query)


def _scores(vectors: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """q × n scores, higher is closer: inner product, or negative squared L2 distance."""
    if len(queries) == 1:
        # One query: a memory-bound pass over the rows. einsum streams them in one thread as
        # fast as FAISS does; BLAS is ~1.5x slower here and its threads stall under load.
        ip = np.einsum("ij,j->i", vectors, queries[0])[None, :]
    else:
        ip = queries @ vectors.T
    if metric != "l2":
        return ip
    sq = np.einsum("ij,ij->i", vectors, vectors)
    qsq = np.einsum("ij,ij->i", queries, queries)
    return 2 * ip - sq[None, :] - qsq[:, None]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, highest first, ties in index order."""
    if k < len(scores):
        # argpartition over a negated copy is faster than a full sort for k << n.
        idx = np.argpartition(-scores, k - 1)[:k]
    else:
        idx = np.arange(len(scores))
    order = np.lexsort((idx, -scores[idx]))
    return idx[order].astype(np.int64)
