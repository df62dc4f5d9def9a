"""Bulk import and export through the namespace API (:mod:`vectordb.interface`), so the
same code runs on a store in this process or against a running service.

Import streams a data file (:mod:`ingest.bulk_sources`) in batches and upserts each;
``workers`` batches are in flight at once, so reading and validating the next overlaps
the commit of the previous. Resuming: an upsert replaces documents by id, so sending a
batch twice never duplicates anything; a :class:`Checkpoint` beside the input records the
input's identity (path, size, mtime) and how many rows from the start were acknowledged
-- written only after each batch's upsert returned, and only for the unbroken prefix of
acknowledged batches -- and a rerun starts after them. It is removed once the input is
done. A directory goes file by file through ``upload`` (the file parsers, chunking,
embedding), the checkpoint listing the files done.

Export pages through one version of the namespace (``list`` with a cursor, vectors
included) into Parquet or JSON Lines, written under a temporary name and renamed at the
end, so a file by the final name is always complete.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest import bulk_sources
from ingest.parsers import EXTENSIONS as DOCUMENT_EXTENSIONS
from vectordb.errors import (
    Conflict,
    InvalidArgument,
    StorageUnavailable,
    TooManyRequests,
    VectorDBError,
)

Progress = Callable[[int], None]  # called with the rows (or files) just acknowledged
# Errors worth another try of the same batch before giving up (the checkpoint keeps the rest).
_TRANSIENT = (StorageUnavailable, TooManyRequests, Conflict)
_RETRIES = 3


@dataclass
class ImportResult:
    rows: int = 0  # rows (or files) sent by this run
    skipped: int = 0  # acknowledged by an earlier run, per the checkpoint
    batches: int = 0
    skipped_files: list[str] = field(default_factory=list)  # a directory's files no parser takes
    version: int | None = None  # the version the last write committed
    seconds: float = 0.0


@dataclass
class ExportResult:
    rows: int
    version: int
    seconds: float


class Checkpoint:
    """What an import of ``source`` into ``namespace`` has had acknowledged, in a small JSON
    file (rewritten atomically). A checkpoint for another input, another version of the
    file (size or mtime changed) or another namespace is ignored."""

    def __init__(self, path: Path, source: Path, namespace: str) -> None:
        self.path = path
        stat = source.stat()
        self.identity = {
            "input": str(source.resolve()),
            "size": stat.st_size if source.is_file() else None,
            "mtime_ns": stat.st_mtime_ns if source.is_file() else None,
            "namespace": namespace,
        }
        self.state: dict[str, Any] = {}

    @staticmethod
    def beside(source: Path, namespace: str) -> Path:
        """The default place: ``<input>.import-<namespace>.json`` next to the input."""
        return source.with_name(f"{source.name}.import-{namespace}.json")

    def load(self) -> dict:
        """The recorded state ({} if none, or if it is for something else)."""
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"unreadable checkpoint {self.path} ({exc}); rerun with --restart") from exc
        if {k: saved.get(k) for k in self.identity} != self.identity:
            return {}
        self.state = saved.get("state", {})
        return self.state

    def save(self, **state: Any) -> None:
        self.state.update(state)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({**self.identity, "state": self.state, "saved_at": time.time()}))
        os.replace(temporary, self.path)  # never a half-written checkpoint

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def import_file(
    namespace: Any,
    path: Path,
    checkpoint: Checkpoint | None,
    *,
    batch_size: int = 5000,
    workers: int = 2,
    generate_ids: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Upsert every row of a JSON Lines, Parquet or CSV file into ``namespace``, from where
    ``checkpoint`` says an earlier run stopped. Raises InvalidArgument (bad file, a bad
    row: its line or row named) or the write's own error, with the batch's rows named; the
    checkpoint then still covers every acknowledged batch.

    With ``workers`` > 1 batches may commit out of order: an id repeated in the file keeps
    its last row's content only with ``workers=1``.
    """
    started = time.perf_counter()
    done = checkpoint.load().get("rows", 0) if checkpoint else 0
    result = ImportResult(skipped=done)
    dimensions = namespace.describe().dimensions
    batches = bulk_sources.read_batches(path, batch_size, skip=done, dimensions=dimensions, generate_ids=generate_ids)
    in_flight: deque[tuple[bulk_sources.Batch, Future]] = deque()

    def acknowledge() -> None:
        batch, future = in_flight.popleft()
        result.version = future.result().version
        result.rows += batch.rows
        result.batches += 1
        if checkpoint:
            checkpoint.save(rows=batch.first_row + batch.rows)
        if progress:
            progress(batch.rows)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="import") as pool:
        try:
            for batch in batches:
                in_flight.append((batch, pool.submit(_upsert, namespace, batch)))
                while len(in_flight) >= max(1, workers):
                    acknowledge()
            while in_flight:
                acknowledge()
        finally:
            for _, future in in_flight:
                future.cancel()
    if checkpoint:
        checkpoint.remove()
    result.seconds = time.perf_counter() - started
    return result


def _upsert(namespace: Any, batch: bulk_sources.Batch):
    for attempt in range(_RETRIES + 1):
        try:
            return namespace.upsert(batch.documents)
        except _TRANSIENT:
            if attempt == _RETRIES:
                raise
            time.sleep(0.5 * 2**attempt)
        except VectorDBError as exc:
            # The write's "row 12" is of the batch; say which rows of the file it was.
            if type(exc).__init__ is VectorDBError.__init__:
                raise type(exc)(f"{batch.label}: {exc.message}") from exc
            raise
    raise AssertionError("unreachable")


def document_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """The files under ``directory`` (recursively, sorted, hidden ones and checkpoints
    left out) that the file parsers take, and those they do not."""
    taken, others = [], []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or ".import-" in path.name:
            continue
        (taken if path.suffix.lower() in DOCUMENT_EXTENSIONS else others).append(path)
    return taken, others


def import_directory(
    namespace: Any, directory: Path, checkpoint: Checkpoint | None, *, progress: Progress | None = None
) -> ImportResult:
    """Upload every document file under ``directory`` (see :func:`document_files`), each as
    the document whose id is its path relative to ``directory`` (a re-upload replaces that
    document's chunks), skipping those the checkpoint lists unchanged (same size, mtime)."""
    started = time.perf_counter()
    files, others = document_files(directory)
    done: dict[str, list] = dict(checkpoint.load().get("files", {})) if checkpoint else {}
    result = ImportResult(skipped_files=[str(p.relative_to(directory)) for p in others])
    for path in files:
        name = path.relative_to(directory).as_posix()
        stat = path.stat()
        if done.get(name) == [stat.st_size, stat.st_mtime_ns]:
            result.skipped += 1
            continue
        job = namespace.upload(path, document_id=name, attributes={"path": name}, wait=True)
        if job.status != "done":
            message = (job.error or {}).get("message", job.status)
            raise InvalidArgument(f"{name}: the upload job {job.id} {job.status}: {message}")
        result.version = job.version
        result.rows += 1
        done[name] = [stat.st_size, stat.st_mtime_ns]
        if checkpoint:
            checkpoint.save(files=done)
        if progress:
            progress(1)
    if checkpoint:
        checkpoint.remove()
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------- export

EXPORT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def export(
    namespace: Any,
    path: Path,
    *,
    as_of: Any = None,
    page_size: int = 1000,
    row_group_rows: int = 20_000,
    progress: Progress | None = None,
    on_version: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write every live row of ``namespace`` (as of ``as_of``, default the newest version;
    all pages of one version) with id, text, attributes and vector to ``path``: Parquet
    or JSON Lines by its extension (else InvalidArgument). A chunked document's chunks are
    rows of their own, as stored. A Parquet export records the namespace's configuration
    in its metadata (``vectordb``), which ``vectordb import --create`` uses."""
    kind = EXPORT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InvalidArgument(f"{path.name}: export writes {', '.join(EXPORT_FORMATS)} files (by the extension)")
    started = time.perf_counter()
    info = namespace.describe()
    temporary = path.with_name(f".{path.name}.partial")
    page = namespace.list(page_size, None, as_of, include_vectors=True)
    if on_version:
        on_version(page.version)
    config = {
        "namespace": info.name,
        "version": page.version,
        "embedder": info.embedder,
        "dimensions": info.dimensions,
        "metric": info.metric,
        "vector_dtype": info.vector_dtype,
        "chunk_tokens": info.chunk_tokens,
        "overlap_tokens": info.overlap_tokens,
        "cluster_by": list(info.cluster_by),
    }
    writer = (
        _ParquetRows(temporary, info.dimensions, config, row_group_rows) if kind == "parquet" else _JsonlRows(temporary)
    )
    rows = 0
    try:
        while True:
            writer.write(page.documents)
            rows += len(page.documents)
            if progress:
                progress(len(page.documents))
            if page.cursor is None:
                break
            page = namespace.list(page_size, page.cursor, None, include_vectors=True)  # the cursor pins the version
        writer.close()
        os.replace(temporary, path)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    return ExportResult(rows, config["version"], time.perf_counter() - started)


class _ParquetRows:
    def __init__(self, path: Path, dimensions: int, config: dict, row_group_rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.dimensions, self.row_group_rows = pa, dimensions, row_group_rows
        self.schema = pa.schema(
            [
                ("id", pa.string()),
                ("text", pa.string()),
                ("attributes", pa.string()),
                ("vector", pa.list_(pa.float32())),
            ],
            metadata={bulk_sources.METADATA_KEY: json.dumps(config).encode()},
        )
        self.writer = pq.ParquetWriter(path, self.schema)
        self.pending: list = []

    def write(self, documents: list) -> None:
        self.pending.extend(documents)
        if len(self.pending) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        import numpy as np

        pa, docs = self.pa, self.pending
        if not docs:
            return
        flat = np.asarray([d.vector for d in docs], np.float32).reshape(-1)
        offsets = np.arange(0, len(docs) + 1, dtype=np.int32) * self.dimensions
        table = pa.table(
            {
                "id": pa.array([d.id for d in docs], pa.string()),
                "text": pa.array([d.text for d in docs], pa.string()),
                "attributes": pa.array(
                    [json.dumps(d.attributes, ensure_ascii=False) if d.attributes else None for d in docs], pa.string()
                ),
                "vector": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            },
            schema=self.schema,
        )
        self.writer.write_table(table)
        self.pending = []

    def close(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None


class _JsonlRows:
    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")

    def write(self, documents: list) -> None:
        import orjson

        for d in documents:
            line = {"id": d.id, "text": d.text, "attributes": d.attributes or None, "vector": d.vector}
            self.file.write(orjson.dumps({k: v for k, v in line.items() if v is not None}) + b"\n")

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
