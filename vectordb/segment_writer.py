"""Building a segment in bounded memory: rows stream in, the segment's files stream out.

The format is :mod:`vectordb.segment`'s; this is how its bytes are produced when a
namespace does not fit in memory. Rows arrive as chunks of a :class:`RowSource` and go
through a working directory in four passes:

1. **spill**: each chunk is appended (pickled) to ``input.spill`` in arrival order, while
   what a later pass needs of all rows is kept small: their count, which attribute
   columns they make (:class:`vectordb.attr_columns.ColumnPlan`).
2. **train**: the number of partitions follows from the count; k-means trains on the
   rows :func:`vectordb.ivf.training_rows` picks, gathered in one read of the spill (the
   rows an in-memory build would pick, unless the memory bound asks for fewer). Or the
   centroids come from the caller (:func:`spill`, then :meth:`Spilled.finish`): the
   shards of a Ray build train one set on a sample of all their rows, and each segment
   records its id (``ivf.bin``'s centroid-set trailer, :mod:`vectordb.segment`).
3. **runs**: each spilled chunk is assigned to the centroids, its rows ordered by
   partition (stably) and written to ``runs.spill``: one run per chunk, each partition's
   rows of the run one contiguous piece.
4. **write**: partitions in order, a group of them at a time: for each run, the group's
   pieces are one contiguous read. A partition's rows are its pieces in run order, which
   is arrival order: the order of a stable sort of all rows by partition, as the
   in-memory build made. Every file is appended to as its partitions come (vectors,
   fields and row entries, attribute columns' row groups, the whole layout's
   ``docs.parquet``); the key tables (``ids.bin``: ids, their hashes and record entries;
   ``doc_ids.bin``: chunks' ``doc_id``\\s) wait on disk in 64 shards by hash
   (:class:`vectordb.key_table.TableWriter`) and are written a shard at a time at the end;
   BM25 postings are kept up to an eighth of ``memory_bytes`` (12 bytes a posting), then
   spilled in sorted runs that ``bm25.bin`` is merged from at the end
   (:mod:`vectordb.bm25_spill`). With ``cluster_by``, each row's vector
   also goes to ``clusters.spill`` as float16 and its group is kept (4 bytes a row);
   ``clusters.bin`` is written from it, group by group, at the end
   (:class:`vectordb.clusters.ClusterWriter`).

Peak memory is about ``memory_bytes``: an eighth for an input chunk, a quarter for the
k-means sample, a quarter for a group of partitions, an eighth for BM25 postings, and the
per-row state above (a few bytes a row, and the BM25 vocabulary). The result is the same bytes whatever
``memory_bytes`` (unless a bound so small that it shrinks the k-means sample), and the same
as the in-memory build's before this module existed.

The working directory is named after the host and the process (``vectordb-build-<host>-
<pid>-...``); each build first removes those its host's killed builds left behind (a
SIGKILL or the OOM killer runs no cleanup), never one of a live process or another host.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from vectordb import attr_columns, bm25_spill, clusters, doc_fields, ivf, key_table
from vectordb.docs_format import DOC_ID, DocsLayout
from vectordb.rows import RowBatch

log = logging.getLogger(__name__)

_ROW_OVERHEAD = 400  # bytes a row costs in Python objects (strings, lists) beside its vector
_UNPICKLED = 3  # a group's rows take about this many times their pickled bytes once loaded
_CHUNK_ALIGN = 4096  # FAISS assigns in blocks of this many queries: chunks keep them aligned


class RowSource(Protocol):
    """Rows to build a segment from, read in chunks (once)."""

    dims: int

    def chunks(self, rows: int) -> Iterator[RowBatch]:
        """The rows, in order, in batches of about ``rows`` rows (the last may be smaller)."""


@dataclass
class BatchSource:
    """A :class:`RowSource` over rows already in memory."""

    rows: RowBatch

    @property
    def dims(self) -> int:
        return self.rows.vectors.shape[1]

    def chunks(self, rows: int) -> Iterator[RowBatch]:
        for lo in range(0, len(self.rows), rows):
            yield self.rows.take(range(lo, min(lo + rows, len(self.rows))))


@dataclass
class BuiltSegment:
    """A built segment's files, in a working directory until :meth:`close`."""

    id: str
    nlist: int
    rows: int
    files: dict[str, Path]  # file name -> its local file
    workdir: Path | None = field(default=None, repr=False)

    @property
    def bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files.values())

    def read(self, name: str) -> bytes:
        return self.files[name].read_bytes()

    def close(self) -> None:
        """Remove the working directory (the files are gone after this)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def build(source: RowSource, metric: str, rows_per_partition: int, flat_max_rows: int,
          vector_dtype: str, segment_id: str, docs: str, memory_bytes: int,
          temp_dir: str | None = None, centroids_for=None, cluster_by: tuple[str, ...] = ()) -> BuiltSegment | None:
    """Build a segment of ``source``'s rows in a fresh working directory under ``temp_dir``
    (the system's default: None), in about ``memory_bytes`` of memory, on centroids
    trained on its own rows; or, with ``centroids_for(rows)`` -> (centroids or None, nlist)
    (:func:`ingest.centroid_sets.choose`), on the centroids it gives, else on ``nlist``
    trained ones, the set named in ``ivf.bin`` so that later builds can join it. None if
    the source has no rows. ``cluster_by``: the attribute keys a by-range segment's
    ``clusters.bin`` groups its vectors by (:mod:`vectordb.clusters`; none: no copy).
    Callers :meth:`~BuiltSegment.close` it once uploaded; an exception removes the
    directory."""
    spilled = spill(source, metric, vector_dtype, docs, memory_bytes, temp_dir, cluster_by)
    try:
        if not spilled.rows:
            return None
        if centroids_for is None:
            nlist = ivf.choose_nlist(spilled.rows, rows_per_partition, flat_max_rows)
            return spilled.finish(spilled.train(nlist), segment_id)
        joined, nlist = centroids_for(spilled.rows)
        centroids = joined if joined is not None else spilled.train(nlist)
        return spilled.finish(centroids, segment_id, shared=len(centroids) > 1)
    finally:
        spilled.close()  # nothing left to remove once the built segment holds the directory


def spill(source: RowSource, metric: str, vector_dtype: str, docs: str, memory_bytes: int,
          temp_dir: str | None = None, cluster_by: tuple[str, ...] = ()) -> Spilled:
    """The first pass of a build (``input.spill`` in a fresh working directory), for a
    caller that brings its own centroids: several shards of one Ray build
    (:mod:`ingest.ray_build`) spill their rows, train one set of centroids on a sample
    gathered from all of them, then each :meth:`Spilled.finish` on it. An exception
    removes the directory."""
    _sweep_killed_builds(temp_dir)
    root = Path(temp_dir or tempfile.gettempdir())
    workdir = root / f"{_WORKDIR_PREFIX}{_host()}-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        # Made inside the try: a build child stopped by SIGTERM (SystemExit at the next
        # bytecode, ingest.build_process) right after the mkdir still removes it.
        workdir.mkdir(mode=0o700)
        spilled = Spilled(source, metric, vector_dtype, docs, memory_bytes, workdir, cluster_by)
        spilled.spill()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return spilled


def sample_cap(dims: int, memory_bytes: int) -> int:
    """The most rows k-means trains on within ``memory_bytes`` (a quarter of it)."""
    return max(1, memory_bytes // 4 // (2 * dims * 4))


_WORKDIR_PREFIX = "vectordb-build-"
_WORKDIR = re.compile(re.escape(_WORKDIR_PREFIX) + r"(?P<host>[A-Za-z0-9.-]+)-(?P<pid>[0-9]+)-[^/]+\Z")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def _sweep_killed_builds(temp_dir: str | None) -> None:
    """Remove the working directories of builds on this host whose process is gone: a
    build killed (SIGKILL, OOM) leaves its spill files behind, up to the size of its input.
    A directory is another process's while that process lives, and another host's (a
    shared temporary directory, a container's PID namespace) always."""
    root = Path(temp_dir or tempfile.gettempdir())
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    host = _host()
    for entry in entries:
        m = _WORKDIR.match(entry.name)
        if m is None or m["host"] != host or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        log.info("removing %s, left by a build whose process is gone", entry)
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Spilled:
    """A build's rows in its working directory (:func:`spill`), waiting for centroids:
    its own (:meth:`train`) or a Ray build's shared set; then :meth:`finish` writes the
    segment, or :meth:`close` removes the directory."""

    def __init__(self, source: RowSource, metric: str, vector_dtype: str, docs: str, memory_bytes: int,
                 workdir: Path, cluster_by: tuple[str, ...] = ()) -> None:
        self.source, self.metric, self.vector_dtype, self.docs = source, metric, vector_dtype, docs
        self.cluster_by = tuple(cluster_by)
        self.memory_bytes = memory_bytes
        self.workdir: Path | None = workdir  # None once finished (the segment's) or closed
        self.dims = source.dims
        self.chunks: list[tuple[int, int]] = []  # (byte offset, rows) of each spilled chunk
        self.plan = attr_columns.ColumnPlan()
        self.vector_sum = np.zeros(self.dims, np.float64)  # a one-partition segment's centroid is the mean
        self.rows = 0

    def close(self) -> None:
        """Remove the working directory, unless :meth:`finish` handed it to the segment."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def finish(self, centroids: np.ndarray, segment_id: str, shared: bool = False) -> BuiltSegment | None:
        """The segment of these rows on ``centroids`` (its nlist is theirs); ``shared``:
        other segments use the same centroids, and the layout records their id
        (:attr:`vectordb.segment.Layout.centroid_set`) so queries rank each once. The
        working directory then belongs to the segment. None if there are no rows."""
        from vectordb import segment

        if not self.rows:
            return None
        nlist = len(centroids)
        # Rows go to the centroids as stored, the ones queries will probe.
        centroids = centroids.astype(segment.centroid_type(centroids, self.vector_dtype)).astype(np.float32)
        runs, part_rows = self._runs(self.chunks, centroids, nlist)
        (self.workdir / "input.spill").unlink()
        files, part_bytes, described, grouped = self._write(runs, part_rows, self.plan)
        (self.workdir / "runs.spill").unlink()
        centroid_set = segment.centroid_set_id(centroids) if shared else None
        layout = segment.Layout(centroids, part_bytes, part_rows, self.vector_dtype, described, centroid_set, grouped)
        ivf_path = self.workdir / "ivf.bin"
        ivf_path.write_bytes(layout.to_bytes() + (described.to_bytes() if described is not None else b"")
                             + (segment.centroid_set_trailer(centroid_set) if centroid_set else b"")
                             + (grouped.to_trailer() if grouped is not None else b""))
        built = BuiltSegment(segment_id, nlist, self.rows, {"ivf.bin": ivf_path, **files}, self.workdir)
        self.workdir = None
        return built

    # --- pass 1: spill ---------------------------------------------------------------------
    def spill(self) -> None:
        """Pickle the source's chunks to ``input.spill``: (byte offset, rows) of each, the
        attribute columns' plan, and the rows' vector sum (a flat segment's centroid)."""
        budget_rows = self.memory_bytes // 8 // (self.dims * 4 + _ROW_OVERHEAD)
        chunk_rows = max(_CHUNK_ALIGN, budget_rows // _CHUNK_ALIGN * _CHUNK_ALIGN)
        plan = attr_columns.ColumnPlan()
        total = np.zeros(self.dims, np.float64)
        chunks = []
        with open(self.workdir / "input.spill", "wb") as out:
            for batch in self.source.chunks(chunk_rows):
                if not len(batch):
                    continue
                plan.add(attr_columns.parse(batch.attributes))
                total += batch.vectors.sum(axis=0, dtype=np.float64)
                chunks.append((out.tell(), len(batch)))
                pickle.dump(_columns(batch), out, protocol=5)
                del batch  # not held while the source makes the next chunk
        self.chunks, self.plan, self.vector_sum = chunks, plan, total
        self.rows = sum(rows for _, rows in chunks)

    def _chunks(self, chunks: list[tuple[int, int]]) -> Iterator[RowBatch]:
        with open(self.workdir / "input.spill", "rb") as f:
            for _ in chunks:
                yield RowBatch(*pickle.load(f))

    # --- pass 2: train -----------------------------------------------------------------------
    def train(self, nlist: int) -> np.ndarray:
        """Centroids trained on these rows alone (as :func:`build` does)."""
        cap = sample_cap(self.dims, self.memory_bytes)
        if nlist == 1 and self.rows > cap:
            return (self.vector_sum / self.rows).astype(np.float32)[None, :]
        picked = ivf.training_rows(self.rows, nlist, max_rows=cap) if nlist > 1 else None
        if picked is not None and len(picked) < min(self.rows, nlist * ivf._TRAIN_POINTS_PER_CENTROID):
            log.info("k-means trains on %d rows (memory bound), not %d", len(picked), nlist * ivf._TRAIN_POINTS_PER_CENTROID)
        return ivf.train_centroids(self.sample(picked), nlist, self.metric)

    def sample(self, picked: np.ndarray | None) -> np.ndarray:
        """Rows ``picked`` (None: all) gathered in one read of the spill."""
        sample = np.empty((self.rows if picked is None else len(picked), self.dims), np.float32)
        at = start = 0
        for batch in self._chunks(self.chunks):
            end = start + len(batch)
            if picked is None:
                sample[start:end] = batch.vectors
            else:
                lo, hi = np.searchsorted(picked, [start, end])
                sample[at : at + hi - lo] = batch.vectors[picked[lo:hi] - start]
                at += hi - lo
            start = end
        return sample

    # --- pass 3: runs ------------------------------------------------------------------------
    def _runs(self, chunks: list[tuple[int, int]], centroids: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
        """Write each chunk's rows ordered by partition to ``runs.spill``: per run, the byte
        offsets of its partitions' pieces (runs × nlist + 1); the partitions' row offsets."""
        offsets = np.zeros((len(chunks), nlist + 1), np.int64)
        counts = np.zeros(nlist, np.int64)
        assigner = ivf.Assigner(centroids, self.metric)
        with open(self.workdir / "runs.spill", "wb") as out:
            for r, batch in enumerate(self._chunks(chunks)):
                labels = assigner(batch.vectors)
                order = np.argsort(labels, kind="stable")
                bounds = np.searchsorted(labels[order], np.arange(nlist + 1))
                counts += np.diff(bounds)
                offsets[r, 0] = out.tell()
                for p in range(nlist):
                    lo, hi = int(bounds[p]), int(bounds[p + 1])
                    if hi > lo:
                        pickle.dump(_columns(batch.take(order[lo:hi].tolist())), out, protocol=5)
                    offsets[r, p + 1] = out.tell()
        part_rows = np.zeros(nlist + 1, np.int64)
        np.cumsum(counts, out=part_rows[1:])
        return offsets, part_rows

    # --- pass 4: write -----------------------------------------------------------------------
    def _groups(self, runs: np.ndarray) -> Iterator[tuple[int, int]]:
        """Consecutive partition ranges whose pieces take about a quarter of the budget."""
        sizes = (runs[:, 1:] - runs[:, :-1]).sum(axis=0) * _UNPICKLED
        budget, nlist, lo = self.memory_bytes // 4, runs.shape[1] - 1, 0
        while lo < nlist:
            hi, used = lo + 1, int(sizes[lo])
            while hi < nlist and used + int(sizes[hi]) <= budget:
                used += int(sizes[hi])
                hi += 1
            yield lo, hi
            lo = hi

    def _partitions(self, runs: np.ndarray, part_rows: np.ndarray) -> Iterator[RowBatch]:
        """Every partition's rows, in order."""
        with open(self.workdir / "runs.spill", "rb") as f:
            for lo, hi in self._groups(runs):
                pieces: list[list[RowBatch]] = [[] for _ in range(lo, hi)]
                for run in runs:
                    f.seek(int(run[lo]))
                    data = f.read(int(run[hi] - run[lo]))
                    for p in range(lo, hi):
                        a, b = int(run[p] - run[lo]), int(run[p + 1] - run[lo])
                        if b > a:
                            pieces[p - lo].append(RowBatch(*pickle.loads(data[a:b])))
                    del data
                for parts in pieces:
                    yield RowBatch.concat(parts, self.dims)
                del pieces

    def _write(self, runs: np.ndarray, part_rows: np.ndarray, plan: attr_columns.ColumnPlan):
        from vectordb import segment

        nlist = len(part_rows) - 1
        by_range = self.docs == "by_range"
        files = {name: self.workdir / name for name in
                 (("vectors.bin", "fields.bin", "rows.bin", "attrs.bin") if by_range
                  else ("vectors.bin", "docs.parquet"))}
        part_bytes = np.zeros(nlist + 1, np.int64)
        lexical = bm25_spill.PostingsWriter(int(part_rows[-1]), self.workdir, self.memory_bytes // 8)
        keys = _Keys(self.workdir)
        grouping = clusters.ClusterWriter(self.cluster_by, self.dims, self.workdir) if by_range and self.cluster_by \
            else None
        with open(files["vectors.bin"], "wb") as vectors:
            writer = _DocsWriter(self.workdir, plan) if by_range else _WholeDocsWriter(files["docs.parquet"])
            for p, rows in enumerate(self._partitions(runs, part_rows)):
                vectors.write(segment.encode_partition(rows.vectors, rows.ids, self.vector_dtype))
                part_bytes[p + 1] = vectors.tell()
                lexical.add(t or "" for t in rows.texts)
                parsed = writer.write(rows, int(part_rows[p]), keys)
                if grouping is not None:
                    grouping.add(parsed, rows.vectors)
        described = writer.finish(files, keys, int(part_rows[-1]))
        lexical.write(self.workdir / "bm25.bin")
        files["bm25.bin"] = self.workdir / "bm25.bin"
        grouped = None
        if grouping is not None:
            grouped = grouping.finish(self.workdir / "clusters.bin")
            if grouped is not None:
                files["clusters.bin"] = self.workdir / "clusters.bin"
            else:
                log.info("segment without clusters.bin: %s", grouping.skipped or "no rows")
        return files, part_bytes, described, grouped


class _Keys:
    """The key tables of the rows as they come (:class:`vectordb.key_table.TableWriter`,
    waiting on disk in the working directory): id -> (row, record entry), and a chunk's
    ``doc_id`` -> (row, id)."""

    def __init__(self, workdir: Path) -> None:
        self.ids = key_table.TableWriter(workdir / "ids.table")
        self.doc_ids = key_table.TableWriter(workdir / "doc_ids.table")

    def add(self, ids: list[str], entries: bytes, parsed: list[dict], first_row: int) -> None:
        n = len(ids)
        size = doc_fields.ENTRY.itemsize
        self.ids.add(key_table.Packed.of([i.encode() for i in ids]), key_table.blake2b64(ids),
                     np.arange(first_row, first_row + n), key_table.Packed(entries, np.arange(n + 1, dtype=np.int64) * size))
        # What a {"doc_id": {"$in": [...]}} filter finds: rows whose doc_id is a string.
        chunks = [(row, attrs[DOC_ID]) for row, attrs in enumerate(parsed) if isinstance(attrs.get(DOC_ID), str)]
        if chunks:
            self.doc_ids.add(key_table.Packed.of([parent.encode() for _, parent in chunks]),
                             key_table.blake2b64([parent for _, parent in chunks]),
                             np.array([first_row + row for row, _ in chunks], np.int64),
                             key_table.Packed.of([ids[row].encode() for row, _ in chunks]))

    def write_tables(self, ids_out: BinaryIO, doc_ids_out: BinaryIO):
        return self.ids.finish(ids_out.write), self.doc_ids.finish(doc_ids_out.write)


class _DocsWriter:
    """The by-range documents (:mod:`vectordb.docs_format`), a partition at a time."""

    def __init__(self, workdir: Path, plan: attr_columns.ColumnPlan) -> None:
        self.workdir = workdir
        self.fields = open(workdir / "fields.bin", "wb")  # noqa: SIM115
        self.entries = open(workdir / "rows.bin", "wb")  # noqa: SIM115
        self.columns = attr_columns.ColumnWriter(plan, workdir)

    def write(self, rows: RowBatch, first_row: int, keys: _Keys) -> list[dict]:
        """Write one partition's rows; their attributes, parsed."""
        fields, entries = doc_fields.encode(rows.ids, rows.texts, rows.attributes)
        if len(rows):
            table = np.frombuffer(entries, doc_fields.ENTRY).copy()
            table["offset"] += self.fields.tell()
            entries = table.tobytes()
        self.fields.write(fields)
        self.entries.write(entries)
        parsed = attr_columns.parse(rows.attributes)
        self.columns.write(rows.ids, parsed)
        keys.add(rows.ids, entries, parsed, first_row)
        return parsed

    def finish(self, files: dict[str, Path], keys: _Keys, n: int) -> DocsLayout:
        self.fields.close()
        self.entries.close()
        with open(files["attrs.bin"], "wb") as out:
            columns = self.columns.finish(out.write)
        files["ids.bin"], files["doc_ids.bin"] = self.workdir / "ids.bin", self.workdir / "doc_ids.bin"
        with open(files["ids.bin"], "wb") as ids_out, open(files["doc_ids.bin"], "wb") as doc_ids_out:
            ids_info, doc_info = keys.write_tables(ids_out, doc_ids_out)
        return DocsLayout(n, ids_info, doc_info, columns)


class _WholeDocsWriter:
    """``docs.parquet`` (the layout before issue 12): one row group per partition."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("attributes", pa.string())])
        self.writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def write(self, rows: RowBatch, first_row: int, keys: _Keys) -> None:
        import pyarrow as pa

        columns = {"id": rows.ids, "text": rows.texts, "attributes": rows.attributes}
        self.writer.write_table(pa.table(columns, schema=self.schema))

    def finish(self, files: dict[str, Path], keys: _Keys, n: int) -> None:
        self.writer.close()
        return None


def _columns(batch: RowBatch) -> tuple:
    return batch.ids, np.ascontiguousarray(batch.vectors, np.float32), batch.texts, batch.attributes
