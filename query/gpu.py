"""IVF-flat search with torch, on a GPU (or on CPU tensors, for tests and comparison).

The same search as :mod:`vectordb.ivf` (``probe`` then an exact ``scan`` of the probed
partitions, scores "higher is closer": inner product for ``cosine``/``dot``, negative
squared L2 for ``l2``), but over many queries at once and on whatever device torch drives:

* :class:`DeviceIndex` holds one segment as one contiguous ``rows × dims`` tensor plus the
  partition row offsets, filled partition by partition as queries probe them (or whole).
  Centroids are probed with one matmul; the union of the partitions probed by a batch is
  scanned with one masked matmul (a query only sees rows of its own partitions) and
  ``torch.topk``.
* :class:`SegmentTensors` keeps :class:`DeviceIndex` objects of one reader's segments,
  loaded from the reader's (cached) partitions, in an LRU bounded by bytes.
* :class:`MicroBatcher` gathers single queries from concurrent callers for up to
  ``max_wait_us`` or ``max_batch`` queries and runs them as one batch: on a GPU one
  batch of 64 costs about what one query does.

torch is imported on first use only; faiss is never needed here.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from vectordb.errors import VectorDBError

DEVICES = ("cpu", "cuda", "auto", "torch-cpu")
# Score matrix elements per matmul chunk: bounds the temporary (b × rows) memory.
_CHUNK_ELEMENTS = 1 << 26
# On CPU tensors, probed partitions in at most this many contiguous runs are scored in place.
_MAX_RUNS = 64
# Service queries on a GPU wait up to this long for others to share a batch with.
_MICRO_BATCH = 64
_MICRO_WAIT_US = 200.0


def _torch():
    import torch  # heavy: only workers configured for the torch path pay for it

    return torch


@functools.cache
def resolve_device(setting: str) -> str | None:
    """The torch device for a ``search_device`` setting; None means the FAISS path.

    ``cpu`` → None, ``torch-cpu`` → ``"cpu"``, ``cuda`` → ``"cuda"``, ``auto`` → ``"cuda"``
    when torch sees a GPU (else None). Raises VectorDBError for an unknown value or for
    ``cuda`` where torch sees no GPU (a configuration error, not a client's).
    """
    if setting not in DEVICES:
        raise VectorDBError(f"search_device must be one of {', '.join(DEVICES)}; not {setting!r}")
    if setting == "cpu":
        return None
    if setting == "torch-cpu":
        return "cpu"
    has_gpu = _gpu_usable()
    if setting == "cuda" and not has_gpu:
        raise VectorDBError("search_device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return "cuda" if has_gpu else None


@functools.cache
def _gpu_usable() -> bool:
    """Whether torch sees a CUDA GPU; asked once per process (every query resolves the
    setting, and the answer does not change)."""
    from vectordb.embedders import gpu_present

    # A host with no NVIDIA driver: never import torch (seconds) just to learn that.
    return gpu_present() and _torch().cuda.is_available()


class DeviceIndex:
    """One IVF-flat segment as tensors on ``device``.

    ``part_rows`` are the nlist + 1 row offsets of the partitions (rows sorted by
    partition, as in a segment). Either ``vectors`` (all rows) is given, or ``loader``:
    called with a list of partition numbers, it returns ``(vectors, ids)`` for each, and is
    called only for partitions not loaded yet. ``ids`` are kept when the loader gives them.
    """

    def __init__(
        self,
        centroids: np.ndarray,
        part_rows: np.ndarray,
        metric: str,
        device: str = "cpu",
        vectors: np.ndarray | None = None,
        loader: Callable[[list[int]], list[tuple[np.ndarray, list[str]]]] | None = None,
    ) -> None:
        torch = _torch()
        self.torch = torch
        self.metric = metric
        self.device = torch.device(device)
        self.part_rows = np.asarray(part_rows, np.int64)
        self.rows = int(self.part_rows[-1])
        self.nlist = len(self.part_rows) - 1
        self.dims = int(centroids.shape[1])
        self.centroids = torch.tensor(np.asarray(centroids, np.float32), device=self.device)
        self._centroid_sq = (self.centroids * self.centroids).sum(1)
        counts = torch.tensor(np.diff(self.part_rows), device=self.device)
        self.row_part = torch.repeat_interleave(torch.arange(self.nlist, device=self.device), counts)
        self.ids: list[str | None] = [None] * self.rows
        self._loader = loader
        self._lock = threading.Lock()
        if vectors is not None:
            self.vectors = torch.tensor(np.asarray(vectors, np.float32), device=self.device)
            self._loaded = np.ones(self.nlist, bool)
        else:
            if loader is None:
                raise ValueError("DeviceIndex needs vectors or a loader")
            self.vectors = torch.zeros((self.rows, self.dims), dtype=torch.float32, device=self.device)
            self._loaded = np.diff(self.part_rows) == 0
        self._row_sq = (self.vectors * self.vectors).sum(1) if metric == "l2" else None

    @property
    def nbytes(self) -> int:
        return (self.rows + self.nlist) * self.dims * 4 + self.rows * 8

    def ensure_loaded(self, parts: np.ndarray) -> None:
        """Copy partitions ``parts`` onto the device if they are not there yet."""
        missing = [int(p) for p in parts if not self._loaded[p]]
        if not missing:
            return
        with self._lock:  # one loader at a time; a second caller finds them loaded
            missing = [p for p in missing if not self._loaded[p]]
            if not missing:
                return
            for p, (vectors, ids) in zip(missing, self._loader(missing)):
                lo, hi = int(self.part_rows[p]), int(self.part_rows[p + 1])
                block = self.torch.tensor(np.asarray(vectors, np.float32), device=self.device)
                self.vectors[lo:hi] = block
                if self._row_sq is not None:
                    self._row_sq[lo:hi] = (block * block).sum(1)
                if ids is not None:
                    self.ids[lo:hi] = ids
                self._loaded[p] = True

    def _scores(self, queries, vectors, vectors_sq):
        """queries × vectors scores, higher is closer (see the module docstring)."""
        ip = queries @ vectors.T
        if self.metric != "l2":
            return ip
        q_sq = (queries * queries).sum(1, keepdim=True)
        return -(q_sq - 2 * ip + vectors_sq.unsqueeze(0))

    def _scorer(self, rows: np.ndarray, runs: list[tuple[int, int]]):
        """A function: queries → their scores against ``rows`` (b × len(rows))."""
        if len(rows) == self.rows:  # every row: no copy
            return lambda q: self._scores(q, self.vectors, self._row_sq)
        sq = self._row_sq
        if self.device.type == "cpu" and len(runs) <= _MAX_RUNS:
            # On a CPU copying the rows costs as much as scoring them: score slices in place.
            def by_runs(q):
                parts = [self._scores(q, self.vectors[a:z], sq[a:z] if sq is not None else None) for a, z in runs]
                return parts[0] if len(parts) == 1 else self.torch.cat(parts, 1)

            return by_runs
        # On a GPU one gather and one matmul beat many small kernels.
        idx = self.torch.tensor(rows, device=self.device)
        x, x_sq = self.vectors.index_select(0, idx), sq.index_select(0, idx) if sq is not None else None
        return lambda q: self._scores(q, x, x_sq)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        nprobe: int,
        exclude: Callable[[np.ndarray], np.ndarray] | None = None,
        parts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows of each query among its ``nprobe`` closest partitions (or, for one
        query, among the given ``parts``: a share of a budget across segments).

        ``exclude``, given the segment rows about to be scanned, returns a boolean mask of
        those never to return (deleted rows). Returns (scores, rows), both ``b × k`` and best
        first; where fewer than ``k`` rows qualify the rest is ``-inf`` / ``-1``.
        """
        torch = self.torch
        q = torch.tensor(np.asarray(queries, np.float32).reshape(-1, self.dims), device=self.device)
        b = q.shape[0]
        if parts is None:
            nprobe = max(1, min(nprobe, self.nlist))
            probes = self._scores(q, self.centroids, self._centroid_sq).topk(nprobe, dim=1).indices
            parts = np.unique(probes.cpu().numpy())
        else:
            assert b == 1, "given partitions are one query's"
            parts = np.unique(np.asarray(parts, np.int64))
        parts = parts[self.part_rows[parts + 1] > self.part_rows[parts]]
        out_scores = np.full((b, k), -np.inf, np.float32)
        out_rows = np.full((b, k), -1, np.int64)
        if not len(parts):
            return out_scores, out_rows
        self.ensure_loaded(parts)
        rows, runs = _row_ranges(self.part_rows, parts)
        score_rows = self._scorer(rows, runs)
        member = row_part = live = None
        if b > 1:  # a row counts only for the queries that probed its partition
            member = torch.zeros((b, self.nlist), dtype=torch.bool, device=self.device)
            member.scatter_(1, probes, True)
            row_part = self.row_part if len(rows) == self.rows else self.row_part[torch.tensor(rows, device=self.device)]
        if exclude is not None:
            drop = np.asarray(exclude(rows), bool)
            if drop.any():
                live = torch.tensor(~drop, device=self.device).unsqueeze(0)
        kk = min(k, len(rows))
        step = max(1, _CHUNK_ELEMENTS // len(rows))
        for lo in range(0, b, step):
            hi = min(b, lo + step)
            s = score_rows(q[lo:hi])
            keep = member[lo:hi].index_select(1, row_part) if member is not None else None
            if live is not None:
                keep = live if keep is None else keep & live
            if keep is not None:
                s.masked_fill_(~keep, float("-inf"))
            top = s.topk(kk, dim=1)
            out_scores[lo:hi, :kk] = top.values.cpu().numpy()
            out_rows[lo:hi, :kk] = rows[top.indices.cpu().numpy()]
        out_rows[~np.isfinite(out_scores)] = -1
        return out_scores, out_rows


def _row_ranges(part_rows: np.ndarray, parts: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The segment rows of partitions ``parts`` (sorted), in order, and the same rows as
    maximal contiguous (start, end) runs."""
    starts, ends = part_rows[parts], part_rows[parts + 1]
    lengths = ends - starts
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    rows = np.arange(int(lengths.sum()), dtype=np.int64) + offsets
    breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    runs = [(int(starts[a]), int(ends[z - 1])) for a, z in zip(np.r_[0, breaks], np.r_[breaks, len(parts)])]
    return rows, runs


class SegmentTensors:
    """The :class:`DeviceIndex` of each segment a reader serves, least recently used
    evicted first once they hold more than ``max_bytes``. A segment larger than
    ``max_bytes`` on its own is not held: :meth:`index` returns None and the caller
    searches it on the FAISS path.

    With ``micro_batch`` (on a GPU), :meth:`search` runs concurrent single queries as one
    batch per segment and nprobe (see :class:`MicroBatcher`)."""

    def __init__(self, device: str, max_bytes: int, micro_batch: bool = False) -> None:
        self.device = device
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, DeviceIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._batcher = None
        if micro_batch:
            ref = weakref.ref(self)  # the worker thread must not keep these tensors alive

            def run(items: list) -> list:
                owner = ref()
                if owner is None:
                    raise RuntimeError("segment tensors were released")
                return owner._run_batch(items)

            self._batcher = MicroBatcher(run, _MICRO_BATCH, _MICRO_WAIT_US)
            weakref.finalize(self, self._batcher.close, False)

    def index(self, reader, ns: str, seg, layout, metric: str) -> DeviceIndex | None:
        with self._lock:
            found = self._held.get(seg.id)
            if found is not None:
                self._held.move_to_end(seg.id)
                return found
        size = (int(layout.part_rows[-1]) + layout.nlist) * layout.dims * 4 + int(layout.part_rows[-1]) * 8
        if size > self.max_bytes:
            return None
        reader_ref = weakref.ref(reader)  # held tensors must not keep their reader alive

        def load(parts: list[int]) -> list[tuple[np.ndarray, list[str]]]:
            return [(p.dense(), p.ids) for p in reader_ref().partitions(ns, seg, layout, parts)]

        made = DeviceIndex(layout.centroids, layout.part_rows, metric, self.device, loader=load)
        with self._lock:
            made = self._held.setdefault(seg.id, made)  # a racing caller's copy wins
            while sum(i.nbytes for i in self._held.values()) > self.max_bytes and len(self._held) > 1:
                self._held.popitem(last=False)
        return made

    def search(self, index: DeviceIndex, query: np.ndarray, k: int, nprobe: int, exclude=None, parts=None):
        """One query on ``index``: (scores, rows) as :meth:`DeviceIndex.search` gives for a
        batch of one. Queries with ``exclude`` (rows deleted for this caller's view) or
        given ``parts`` are not micro-batched: their masks differ."""
        if self._batcher is None or exclude is not None or parts is not None:
            scores, rows = index.search(query.reshape(1, -1), k, nprobe, exclude, parts)
            return scores[0], rows[0]
        return self._batcher((index, np.asarray(query, np.float32).reshape(-1), k, nprobe))

    @staticmethod
    def _run_batch(items: list) -> list:
        groups: dict = {}
        for n, (index, _, _, nprobe) in enumerate(items):
            groups.setdefault((id(index), nprobe), []).append(n)
        out: list = [None] * len(items)
        for members in groups.values():
            index, nprobe = items[members[0]][0], items[members[0]][3]
            k = max(items[n][2] for n in members)
            scores, rows = index.search(np.stack([items[n][1] for n in members]), k, nprobe)
            for j, n in enumerate(members):
                out[n] = (scores[j, : items[n][2]], rows[j, : items[n][2]])
        return out


_by_reader: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_by_reader_lock = threading.Lock()


def segment_tensors(reader, device: str, max_bytes: int) -> SegmentTensors:
    """The :class:`SegmentTensors` of ``reader`` on ``device`` (made on first use; they go
    away with the reader)."""
    with _by_reader_lock:
        per_device = _by_reader.setdefault(reader, {})
        if device not in per_device:
            per_device[device] = SegmentTensors(device, max_bytes, micro_batch=device != "cpu")
        return per_device[device]


class MicroBatcher:
    """Runs single queries from concurrent callers as batches.

    ``run(batch)`` gets a list of submitted items and returns one result per item, in
    order. A batch starts when ``max_batch`` items wait or ``max_wait_us`` after the first
    one arrived. An exception from ``run`` is raised to every caller of that batch.
    One worker thread; :meth:`close` stops it (pending callers still get their answer).
    """

    def __init__(self, run: Callable[[list], list], max_batch: int = 64, max_wait_us: float = 500.0) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_us / 1e6
        self._pending: list[tuple[object, Future]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # how many batches ran (tests and benchmarks read it)
        self._thread = threading.Thread(target=self._loop, name="microbatch", daemon=True)
        self._thread.start()

    def submit(self, item) -> Future:
        """Queue ``item``; the future resolves to its result."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed")
            self._pending.append((item, future))
            self._cond.notify()
        return future

    def __call__(self, item):
        """Submit ``item`` and wait for its result (blocking callers, one per thread)."""
        return self.submit(item).result()

    async def asubmit(self, item):
        """Submit ``item`` from a coroutine and await its result."""
        return await asyncio.wrap_future(self.submit(item))

    def close(self, wait: bool = True) -> None:
        """Stop taking items; the worker answers what is queued, then ends (``wait``: join it)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                deadline = time.monotonic() + self.max_wait_s
                while len(self._pending) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self.batches += 1
            try:
                results = self._run([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} answered with {len(results)} results")
            except BaseException as exc:  # every caller of the batch learns why
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)
