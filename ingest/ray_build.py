"""Index builds and compactions as Ray actors across a cluster (``ray_address``).

The driver (the process running :meth:`ingest.indexer.Indexer.index`: ``vectordb index
NS --ray ADDRESS``, or an ingest worker's background builder) plans as a single-process
build does: the same merge plan, the same first pass over the WAL (which row of which
object survives the fold, ~100 bytes per distinct id), the same tombstone lists for the
segments that stay. It reads and writes no rows itself. It cuts the rows to build into
shards (:func:`cut`) and starts one :class:`Shard` actor per shard (one CPU each, or a
share of one where there are more shards than CPUs; spread over the nodes), which builds
in three steps:

1. **spill**: the actor opens the store from the settings (so actors need no driver
   object, and a ``memory://`` store cannot be used), reads its rows (surviving rows of
   WAL objects, partition ranges of merged segments minus their dead rows) into a working
   directory on its node (:func:`vectordb.segment_writer.spill`, ``build_temp_dir``,
   ``build_memory_bytes``) and reports their number and vector sum;
2. **train**: the driver picks the rows a single-process build of all of them would train
   k-means on (:func:`vectordb.ivf.training_rows`, the same memory bound), each actor
   returns its picked rows, and the first actor trains ONE set of centroids on them (the
   sample, ~``build_memory_bytes`` / 4, passes through Ray's object store, never the
   driver);
3. **finish**: every actor assigns its rows to those centroids, writes its segment and
   uploads it under the build's key version. Each segment records the centroid set's id
   (``ivf.bin``, :mod:`vectordb.segment`), so a query ranks a shared centroid once and
   scans its partition in every segment (``query.vector_search._shared_probes``): the
   union of the shards' partition ``p`` is the single-process build's partition ``p``.

Assignment and partition writing run in parallel, one shard per CPU. The driver commits
every new segment in one manifest through the indexer's own commit: the same rebase over
concurrent writes, the same conditional create, the same re-upload (here a copy) if a
garbage collection fenced past the key version meanwhile. A build of one shard records
no centroid set: it shares its centroids with no other segment.

Shards (:func:`shard_count`): one per CPU of the cluster, but none over
``segment_max_rows`` and none below the size tier the whole build would be in
(:func:`ingest.compaction.tier`). Smaller pieces would fall back into the tier they were
merged from and be merged again at the tier's next round; this way the tiered policy sees
the tiers a single-process build makes, and a query's one probe budget across segments
(``query.vector_search``) keeps the cost of several segments that of one.

Crash safety is the commit protocol's: actors upload before the driver creates the
manifest, under key version base + 1 and fresh segment ids. A failed call fails the build
and the driver kills every actor (a killed one's working directory is removed by its
node's next build); a killed driver takes its actors with it (Ray ends an owner's
actors); either way no manifest references what was uploaded, and garbage collection
deletes it once it fences past that key version.

``ray`` is imported only here, on first use: query workers and clients never load it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest import compaction
from ingest.build_input import Chained, SegmentRows, WalRows, WalTail
from storage.base import ObjectStore
from vectordb import id_set, ivf, segment, segment_writer
from vectordb.errors import InvalidArgument
from vectordb.id_set import IdSet
from vectordb.manifest import Manifest, SegmentRef
from vectordb.namespace import NamespaceConfig
from vectordb.reader import NamespaceReader
from vectordb.settings import Settings

_COPY_BYTES = 64 * 1024**2  # a re-keyed file is copied through a local file in reads of this size
_UPLOADS = 2  # a task's files in flight at once
# Ray (2.60) binds every interface unless told it is not a cluster; auth off to be local.
_LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
_connecting = threading.Lock()


@dataclass(frozen=True)
class WalPiece:
    """Rows of one WAL object that survive the fold (ascending row numbers)."""

    key: str
    keep: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.keep)

    def split(self, rows: int, at_least_one: bool) -> tuple[WalPiece | None, WalPiece]:
        rows = max(rows, 1 if at_least_one else 0)
        head = WalPiece(self.key, self.keep[:rows]) if rows else None
        return head, WalPiece(self.key, self.keep[rows:])


@dataclass(frozen=True)
class SegmentPiece:
    """Partitions ``lo`` to ``hi`` (exclusive) of a merged segment; ``part_rows`` its
    layout's row offsets (rows counted as stored: dead ones are dropped when read)."""

    seg: SegmentRef
    lo: int
    hi: int
    part_rows: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.part_rows[self.hi] - self.part_rows[self.lo])

    def split(self, rows: int, at_least_one: bool) -> tuple[SegmentPiece | None, SegmentPiece]:
        """Cut at a partition boundary, ``rows`` rows or fewer in the head (one partition
        at least if ``at_least_one``)."""
        cut = int(np.searchsorted(self.part_rows, self.part_rows[self.lo] + rows, side="right")) - 1
        cut = min(max(cut, self.lo + 1 if at_least_one else self.lo), self.hi)
        head = SegmentPiece(self.seg, self.lo, cut, self.part_rows) if cut > self.lo else None
        return head, SegmentPiece(self.seg, cut, self.hi, self.part_rows)


Piece = WalPiece | SegmentPiece


@dataclass
class RayBuilt:
    """The segments a Ray build uploaded, and the key version they are under."""

    ns: str
    segments: list[SegmentRef]
    key_version: int

    @property
    def rows(self) -> int:
        return sum(ref.rows for ref in self.segments)

    def under(self, store: ObjectStore, key_version: int) -> list[SegmentRef]:
        """The segments under ``key_version``: as uploaded, or copied to fresh ids of that
        key version (a garbage collection fenced past the old one, so it may delete them)."""
        if key_version != self.key_version:
            self.segments = [_copy_segment(store, self.ns, ref, key_version) for ref in self.segments]
            self.key_version = key_version
        return list(self.segments)


def shard_count(rows: int, cpus: int, base_rows: int, fan_in: int, max_rows: int) -> int:
    """How many segments a build of ``rows`` rows makes on ``cpus`` CPUs: one per CPU, but
    none smaller than the size tier of the whole (``base_rows`` × ``fan_in``^tier) and
    none over ``max_rows``."""
    fan_in = max(2, fan_in)
    whole = compaction.tier(SegmentRef("(whole)", rows, 1, 0), base_rows, fan_in)
    least = max(base_rows, 1) * fan_in**whole
    return max(1, math.ceil(rows / max(max_rows, 1)), min(cpus, rows // least))


def cut(pieces: list[Piece], shards: int) -> list[list[Piece]]:
    """``pieces`` (in build order) cut into at most ``shards`` runs of about equal rows; a
    WAL object splits at any row, a segment at a partition boundary (so a run may pass its
    share by a partition; the last takes what is left)."""
    total = sum(p.rows for p in pieces)
    target = max(1, math.ceil(total / max(shards, 1)))
    out: list[list[Piece]] = []
    current: list[Piece] = []
    filled = 0
    for piece in pieces:
        rest: Piece | None = piece
        while rest is not None and rest.rows:
            if rest.rows <= target - filled or len(out) == shards - 1:
                current.append(rest)
                filled += rest.rows
                break
            head, rest = rest.split(target - filled, at_least_one=not current)
            if head is not None:
                current.append(head)
            out.append(current)
            current, filled = [], 0
    if current:
        out.append(current)
    return out


def pieces_of(reader: NamespaceReader, ns: str, tail: WalTail, merge: list[SegmentRef]) -> list[Piece]:
    """What a build reads, in the single-process build's order: the folded tail's
    surviving rows per WAL object, then each merged segment's partitions."""
    pieces: list[Piece] = [WalPiece(key, keep) for key, keep in tail.objects() if len(keep)]
    for seg in merge:
        layout = reader.layout(ns, seg)
        pieces.append(SegmentPiece(seg, 0, layout.nlist, np.asarray(layout.part_rows, np.int64)))
    return pieces


def build(settings: Settings, reader: NamespaceReader, base: Manifest, tail: WalTail, merge: list[SegmentRef],
          touched: IdSet, key_version: int) -> RayBuilt:
    """Build the tail's surviving rows and ``merge``'s live rows (those not dead in the
    segment nor ``touched`` by the tail) as segments on one set of centroids, on the Ray
    cluster at ``settings.ray_address``, uploaded under ``key_version``. An actor's error
    is raised here (every actor is killed first); what was uploaded is left to garbage
    collection."""
    if settings.store_uri.startswith("memory://"):
        raise InvalidArgument("a Ray build needs a store every node can reach (file:// or s3://), not memory://")
    ns = base.namespace
    pieces = pieces_of(reader, ns, tail, merge)
    rows = sum(p.rows for p in pieces)
    if rows == 0:
        return RayBuilt(ns, [], key_version)
    ray = connect(settings.ray_address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    shards = cut(pieces, shard_count(rows, cpus, settings.index_threshold_rows, settings.compact_max_segments,
                                     settings.segment_max_rows))
    # An actor holds its CPU share while it lives, and every shard's must live until the
    # centroids are trained: with more shards than CPUs, k to a CPU (1/k each, rounded
    # down as Ray counts), and at most one call per CPU of the cluster runs at once.
    share = math.floor(10_000 / math.ceil(len(shards) / cpus)) / 10_000
    actor = ray.remote(num_cpus=share, scheduling_strategy="SPREAD")(Shard)
    # Only merged segments' rows are filtered by it: one copy in the object store, however
    # many actors read it (an :class:`~vectordb.id_set.IdSet`: a tail of 1M ids makes it ~25 MB).
    touched_ref = ray.put(touched) if merge else id_set.EMPTY
    workers = [actor.remote(settings, ns, base.config, shard, touched_ref) for shard in shards]
    try:
        spilled = _gather(ray, [w.spill.remote for w in workers], cpus)
        centroids = _train(ray, settings, base.config, workers, spilled)
        if centroids is None:
            return RayBuilt(ns, [], key_version)
        finish = [functools.partial(w.finish.remote, centroids, key_version, len(workers) > 1) for w in workers]
        built = _gather(ray, finish, cpus)
    finally:
        for w in workers:  # ends a failed build's other calls; their working directories are swept later
            ray.kill(w)
    return RayBuilt(ns, [ref for ref in built if ref is not None], key_version)


def _train(ray, settings: Settings, config: NamespaceConfig, workers: list, spilled: list[tuple[int, np.ndarray]]):
    """The shards' one set of centroids, as an object reference (None: no rows): nlist
    from all their rows, k-means on the rows a single-process build of them would sample
    (:func:`vectordb.ivf.training_rows` over the rows in build order), gathered from each
    shard and trained by the first; a one-partition build's centroid is the mean."""
    counts = [n for n, _ in spilled]
    n = sum(counts)
    if n == 0:
        return None
    nlist = ivf.choose_nlist(n, settings.rows_per_partition, settings.flat_max_rows)
    if nlist == 1:
        return ray.put((sum(total for _, total in spilled) / n).astype(np.float32)[None, :])
    cap = segment_writer.sample_cap(config.dimensions, settings.build_memory_bytes)
    picked = ivf.training_rows(n, nlist, max_rows=cap)
    starts = np.concatenate([[0], np.cumsum(counts)])
    samples = []
    for w, lo, hi in zip(workers, starts[:-1], starts[1:]):
        mine = None if picked is None else picked[np.searchsorted(picked, lo):np.searchsorted(picked, hi)] - lo
        samples.append(w.sample.remote(mine))
    return workers[0].train.remote(nlist, config.metric, *samples)


def connect(address: str | None):
    """The ``ray`` module, connected: to ``address``, unless this process already is."""
    import ray

    with _connecting:  # background builds of two namespaces may start at once
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    return ray


def _gather(ray, calls: list[Callable], at_once: int) -> list:
    """The results of ``calls`` (each starts one Ray call and returns its reference), in
    order, with at most ``at_once`` running; the first failure (the call's own exception,
    where there is one) is raised as soon as it comes."""
    refs = []
    pending: list = []
    try:
        while len(refs) < len(calls) or pending:
            while len(refs) < len(calls) and len(pending) < max(1, at_once):
                refs.append(calls[len(refs)]())
                pending.append(refs[-1])
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else None
        if cause is None:
            raise
        raise cause from exc
    return ray.get(refs)


class Shard:
    """A Ray actor (one CPU): one shard's segment, built in steps so that all shards share
    one set of centroids. :meth:`spill` reads the shard's rows into a working directory
    (the streamed builder's first pass, :func:`vectordb.segment_writer.spill`; the store
    is opened from the settings, so no driver object is needed and ``memory://`` cannot
    be used); :meth:`sample` returns the rows the driver picks for k-means, :meth:`train`
    (one shard's) trains on every shard's sample; :meth:`finish` assigns the rows to the
    centroids, writes the segment and uploads it."""

    def __init__(self, settings: Settings, ns: str, config: NamespaceConfig, pieces: list[Piece],
                 touched: IdSet) -> None:
        self.settings, self.ns, self.config, self.pieces, self.touched = settings, ns, config, pieces, touched
        self.spilled: segment_writer.Spilled | None = None

    def spill(self) -> tuple[int, np.ndarray]:
        """Read the shard's live rows to disk: their number and vector sum."""
        from storage import open_raw_store

        store = open_raw_store(self.settings)
        reader = NamespaceReader(store, fetch_threads=4)
        try:
            source = _source(store, reader, self.ns, self.config.dimensions, self.pieces, self.touched)
            self.spilled = segment_writer.spill(source, self.config.metric, self.config.vector_dtype, "by_range",
                                                self.settings.build_memory_bytes, self.settings.build_temp_dir,
                                                self.config.cluster_by)
        finally:
            reader.pool.shutdown()  # a Ray worker may run other work after: leave no threads behind
        return self.spilled.rows, self.spilled.vector_sum

    def sample(self, picked: np.ndarray | None) -> np.ndarray:
        return self.spilled.sample(picked)

    def train(self, nlist: int, metric: str, *samples: np.ndarray) -> np.ndarray:
        return ivf.train_centroids(np.concatenate(samples), nlist, metric)

    def finish(self, centroids: np.ndarray, key_version: int, shared: bool) -> SegmentRef | None:
        """Build the segment on ``centroids`` and upload it under ``key_version``."""
        from storage import open_raw_store

        try:
            built = self.spilled.finish(centroids, segment.new_segment_id(key_version), shared)
        finally:
            self.spilled.close()
        if built is None:
            return None
        store = open_raw_store(self.settings)
        try:
            ref = SegmentRef(built.id, built.rows, built.nlist, built.bytes)
            with ThreadPoolExecutor(_UPLOADS) as pool:
                list(pool.map(lambda kv: store.put_file(segment.file_key(self.ns, built.id, kv[0]), kv[1]),
                              built.files.items()))
        finally:
            built.close()
        return ref


def _source(store: ObjectStore, reader: NamespaceReader, ns: str, dims: int, pieces: list[Piece],
            touched: IdSet) -> Chained:
    sources = []
    for piece in pieces:
        if isinstance(piece, WalPiece):
            sources.append(WalRows(store, [(piece.key, piece.keep)], dims))
        else:
            sources.append(SegmentRows(store, reader, ns, piece.seg, reader.tombstones(ns, piece.seg),
                                       (piece.lo, piece.hi), touched))
    return Chained(sources, dims)


def _copy_segment(store: ObjectStore, ns: str, ref: SegmentRef, key_version: int) -> SegmentRef:
    """A copy of ``ref``'s files under a fresh segment id of ``key_version``, each file
    through a local temporary file (read by range: memory stays at one read)."""
    new_id = segment.new_segment_id(key_version)
    prefix = segment.file_key(ns, ref.id, "")
    for info in list(store.list(prefix)):
        name = info.key[len(prefix):]
        if name.startswith("tomb-"):
            continue  # tombstones are the manifest's business, and a new segment has none
        with tempfile.NamedTemporaryFile(prefix="vectordb-copy-") as local:
            for start in range(0, info.size, _COPY_BYTES):
                local.write(store.get_range(info.key, start, min(_COPY_BYTES, info.size - start)))
            local.flush()
            store.put_file(segment.file_key(ns, new_id, name), local.name)
    return SegmentRef(new_id, ref.rows, ref.nlist, ref.bytes)


# --- a cluster on this machine -------------------------------------------------------------------


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus: int = 1, object_store_bytes: int = 100 * 1024**2) -> Iterator:
    """A Ray cluster of ``nodes`` nodes (a head and workers, ``cpus`` CPUs each) on this
    machine, to try Ray builds (tests, ``bench/ray_build.py``): every address 127.0.0.1,
    its ports below 32768, its files under a short temporary directory (Ray's socket paths
    must stay short), this process connected as a driver. Yields the cluster
    (``ray.cluster_utils.Cluster``; ``.address`` for ``ray_address``); stops it and
    removes the directory after."""
    temp_dir = tempfile.mkdtemp(prefix="vdbrb-", dir="/tmp")
    (Path(temp_dir) / "ray").mkdir()
    base = _free_port_block(120 * nodes)
    # The head's metrics listeners (autoscaler, dashboard) default to ports above 32767;
    # its processes read these when they start.
    env = {**_LOCAL_ENV, "RAY_TMPDIR": temp_dir, "AUTOSCALER_METRIC_PORT": str(base + 6),
           "DASHBOARD_METRIC_PORT": str(base + 7)}
    added = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(added)
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    was_cluster = ray_constants.ENABLE_RAY_CLUSTER
    # Read when ray was first imported, maybe before the variable was set: loopback only.
    ray_constants.ENABLE_RAY_CLUSTER = False
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=cpus, node_ip_address="127.0.0.1", include_dashboard=False, gcs_server_port=base + 100,
            object_store_memory=object_store_bytes, **_node_ports(base)))
        for n in range(1, nodes):
            cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1", object_store_memory=object_store_bytes,
                             **_node_ports(base + 120 * n))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = was_cluster
        for key in added:
            os.environ.pop(key, None)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _node_ports(base: int) -> dict:
    return dict(node_manager_port=base, object_manager_port=base + 1, dashboard_agent_listen_port=base + 2,
                metrics_agent_port=base + 3, metrics_export_port=base + 4, runtime_env_agent_port=base + 5,
                min_worker_port=base + 10, max_worker_port=base + 99)


def _free_port_block(size: int) -> int:
    """The start of ``size`` ports below 32768 that are free on 127.0.0.1 (every one tried)."""
    rng = np.random.default_rng()
    for _ in range(100):
        base = int(rng.integers(20_000, 32_768 - size))
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {size} free ports below 32768 on 127.0.0.1")
