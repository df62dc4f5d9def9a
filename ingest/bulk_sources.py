"""Data files read in batches for a bulk import: JSON Lines, Parquet and CSV, streamed.

A file is never loaded whole: Parquet by record batches (``iter_batches``), CSV by
pyarrow's streaming reader, JSON Lines a line at a time. Every source yields
:class:`Batch` es of documents in one form the namespace API takes:

* a batch whose rows all carry a vector is a pyarrow Table ``id``, ``vector``
  (list<float32>), ``text``, ``attributes`` (JSON object text) -- the bulk write path,
  rows stored as given;
* otherwise a list of document dicts, embedded (and long texts chunked) as ``upsert``
  does.

Columns (keys) besides ``id``, ``text``, ``vector`` and ``attributes`` become attributes of
that name. Every row needs an id -- a rerun of an interrupted import must name the same
documents -- unless ``generate_ids``: then ``<file name>:<row>`` (1-based), stable as long
as the file is not edited. Problems raise InvalidArgument naming the file and the line
(JSON Lines) or row (Parquet, CSV).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from vectordb.errors import InvalidArgument

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
KNOWN = ("id", "text", "vector", "attributes")
# Where an export keeps the namespace's configuration, in the Parquet file's metadata.
METADATA_KEY = b"vectordb"


@dataclass(frozen=True)
class Batch:
    """Rows ``first_row`` .. ``first_row + rows - 1`` of the input (0-based)."""

    first_row: int
    rows: int
    documents: Any  # a pyarrow Table (all rows with vectors) or a list of document dicts
    label: str  # the rows in words, for errors: "data.jsonl lines 3-5002"


def format_of(path: Path) -> str:
    """``jsonl``, ``parquet`` or ``csv`` by the file's extension; else InvalidArgument."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InvalidArgument(
            f"{path.name}: cannot import a {path.suffix or 'extensionless'} file; "
            f"give {', '.join(FORMATS)} (or a directory of documents)"
        )
    return kind


def count_rows(path: Path) -> int | None:
    """The number of rows, from Parquet metadata; for text formats an estimate from the
    line count (a CSV's quoted newlines make it high), read at disk speed."""
    kind = format_of(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(lines - (kind == "csv"), 0)


def exported_config(path: Path) -> dict | None:
    """The namespace configuration an export recorded in a Parquet file, or None."""
    if format_of(path) != "parquet":
        return None
    import pyarrow.parquet as pq

    raw = (pq.ParquetFile(path).schema_arrow.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else None


def read_batches(
    path: Path, batch_size: int, *, skip: int = 0, dimensions: int | None = None, generate_ids: bool = False
) -> Iterator[Batch]:
    """The file's rows from row ``skip`` on, ``batch_size`` at a time. ``dimensions``: check
    every vector's length here, naming its row, rather than as a whole batch fails later."""
    if batch_size < 1:
        raise InvalidArgument("the batch size must be at least 1")
    kind = format_of(path)
    if kind == "jsonl":
        yield from _jsonl(path, batch_size, skip, dimensions, generate_ids)
    else:
        shape = _Shape(path.name, dimensions, generate_ids)
        tables = _parquet(path, batch_size, skip) if kind == "parquet" else _csv(path, batch_size, skip)
        for first, table in tables:
            yield shape.batch(first, table)


# ---------------------------------------------------------------------------- Arrow files


def _parquet(path: Path, batch_size: int, skip: int) -> Iterator[tuple[int, pa.Table]]:
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgument(f"{path.name}: not a readable Parquet file: {exc}") from exc
    # Whole row groups before ``skip`` are not read at all.
    groups, row = [], 0
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if groups or row + n > skip:
            groups.append(g)
        else:
            row += n
    if groups:
        yield from _rebatch(f.iter_batches(batch_size, row_groups=groups), row, skip, batch_size)


def _csv(path: Path, batch_size: int, skip: int) -> Iterator[tuple[int, pa.Table]]:
    from pyarrow import csv

    # Every column is read as text but the vector's: types are the attributes' business
    # (a zip code stays "02134"), and one block's guess must not contradict the next's.
    try:
        names = csv.open_csv(path).schema.names
        convert = csv.ConvertOptions(column_types={n: pa.string() for n in names if n != "vector"})
        reader = csv.open_csv(path, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgument(f"{path.name}: not a readable CSV file: {exc}") from exc
    yield from _rebatch(_guarded(reader, path.name), 0, skip, batch_size)


def _guarded(reader, name: str) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise InvalidArgument(f"{name}: {exc}") from exc


def _rebatch(batches, row: int, skip: int, size: int) -> Iterator[tuple[int, pa.Table]]:
    """Record batches of any size (starting at ``row``) as tables of ``size`` rows, from ``skip``."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for rb in batches:
        if row + rb.num_rows <= skip:
            row += rb.num_rows
            continue
        if row < skip:
            rb, row = rb.slice(skip - row), skip
        pending.append(rb)
        held += rb.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending)
            yield row, table.slice(0, size)
            row, held = row + size, held - size
            pending = table.slice(size).to_batches() if held else []
    if held:
        yield row, pa.Table.from_batches(pending)


class _Shape:
    """An Arrow table from a file, shaped into what the namespace API takes."""

    def __init__(self, name: str, dimensions: int | None, generate_ids: bool) -> None:
        self.name, self.dimensions, self.generate_ids = name, dimensions, generate_ids

    def batch(self, first: int, table: pa.Table) -> Batch:
        n = table.num_rows
        label = f"{self.name} rows {first + 1}-{first + n}"
        ids = self._ids(first, table)
        vectors = self._vectors(first, table) if "vector" in table.column_names else None
        text = _strings(table, "text", self.name)
        attributes = self._attributes(first, table)
        if vectors is not None and not vectors.null_count:
            columns = {"id": ids, "vector": vectors}
            columns.update({k: v for k, v in (("text", text), ("attributes", attributes)) if v is not None})
            return Batch(first, n, pa.table(columns), label)
        docs = []
        vector_list = vectors.to_pylist() if vectors is not None else [None] * n
        texts = text.to_pylist() if text is not None else [None] * n
        attrs = attributes.to_pylist() if attributes is not None else [None] * n
        for i, doc_id in enumerate(ids.to_pylist()):
            doc = {"id": doc_id, "text": texts[i], "vector": vector_list[i]}
            if attrs[i] is not None:
                doc["attributes"] = orjson.loads(attrs[i])
            docs.append({k: v for k, v in doc.items() if v is not None})
        return Batch(first, n, docs, label)

    def _ids(self, first: int, table: pa.Table) -> pa.Array:
        if "id" not in table.column_names:
            if not self.generate_ids:
                raise InvalidArgument(
                    f"{self.name}: no 'id' column; every row needs an id so that a rerun names the same "
                    "documents (or import with --generate-ids: ids '<file name>:<row>')"
                )
            return pa.array([f"{self.name}:{first + i + 1}" for i in range(table.num_rows)], pa.string())
        column = table.column("id").combine_chunks()
        if pa.types.is_integer(column.type):
            column = column.cast(pa.string())
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise InvalidArgument(f"{self.name}: the 'id' column must hold strings, not {column.type}")
        if column.null_count:
            row = first + column.is_null().to_pylist().index(True) + 1
            raise InvalidArgument(f"{self.name} row {row}: the id is missing")
        return column.cast(pa.string())

    def _vectors(self, first: int, table: pa.Table) -> pa.Array:
        column = table.column("vector").combine_chunks()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):  # CSV: "[0.1, 0.2]"
            try:
                column = pa.array([orjson.loads(v) if v else None for v in column.to_pylist()], pa.list_(pa.float32()))
            except (orjson.JSONDecodeError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InvalidArgument(f"{self.name}: a vector is not a JSON list of numbers: {exc}") from exc
        if not (
            pa.types.is_list(column.type)
            or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)
        ):
            raise InvalidArgument(f"{self.name}: the 'vector' column must be a list of numbers, not {column.type}")
        if not (pa.types.is_floating(column.type.value_type) or pa.types.is_integer(column.type.value_type)):
            raise InvalidArgument(f"{self.name}: the 'vector' column must hold numbers, not {column.type.value_type}")
        if self.dimensions is not None:
            import pyarrow.compute as pc

            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero((lengths != self.dimensions) & column.is_valid().to_numpy(zero_copy_only=False))
            if len(bad):
                raise InvalidArgument(
                    f"{self.name} row {first + int(bad[0]) + 1}: the vector has {int(lengths[bad[0]])} values; "
                    f"the namespace takes {self.dimensions}"
                )
        return column.cast(pa.list_(pa.float32()))

    def _attributes(self, first: int, table: pa.Table) -> pa.Array | None:
        extra = [c for c in table.column_names if c not in KNOWN]
        given = table.column("attributes").combine_chunks() if "attributes" in table.column_names else None
        if given is not None and (pa.types.is_string(given.type) or pa.types.is_large_string(given.type)):
            if not extra:
                return given.cast(pa.string())  # JSON text already: validated by the write
            given_rows = [orjson.loads(a) if a else None for a in given.to_pylist()]
        elif given is not None:  # a struct or map column
            given_rows = [dict(a) if a is not None else None for a in given.to_pylist()]
        else:
            if not extra:
                return None
            given_rows = [None] * table.num_rows
        columns = {c: table.column(c).to_pylist() for c in extra}
        out = []
        for i, attrs in enumerate(given_rows):
            row = {c: columns[c][i] for c in extra if columns[c][i] is not None}
            if attrs:
                if clash := sorted(set(row) & set(attrs)):
                    raise InvalidArgument(f"{self.name} row {first + i + 1}: {clash} both a column and in 'attributes'")
                row.update(attrs)
            out.append(orjson.dumps(row, default=str).decode() if row else None)
        return pa.array(out, pa.string())


def _strings(table: pa.Table, name: str, file: str) -> pa.Array | None:
    if name not in table.column_names:
        return None
    column = table.column(name).combine_chunks()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
        raise InvalidArgument(f"{file}: the '{name}' column must hold strings, not {column.type}")
    return column.cast(pa.string())


# ---------------------------------------------------------------------------- JSON Lines


def _jsonl(path: Path, size: int, skip: int, dimensions: int | None, generate_ids: bool) -> Iterator[Batch]:
    """Rows are the non-blank lines; errors name the line number."""
    row = 0
    docs: list[dict] = []
    lines: list[int] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if row < skip:
                row += 1
                continue
            doc = _jsonl_document(raw, number, path.name, dimensions)
            if "id" not in doc:
                if not generate_ids:
                    raise InvalidArgument(
                        f"{path.name} line {number}: no 'id'; every row needs an id so that a rerun names the "
                        "same documents (or import with --generate-ids: ids '<file name>:<row>')"
                    )
                doc["id"] = f"{path.name}:{row + 1}"
            docs.append(doc)
            lines.append(number)
            row += 1
            if len(docs) == size:
                yield _jsonl_batch(row - len(docs), docs, lines, path.name)
                docs, lines = [], []
    if docs:
        yield _jsonl_batch(row - len(docs), docs, lines, path.name)


def _jsonl_document(raw: bytes, number: int, name: str, dimensions: int | None) -> dict:
    where = f"{name} line {number}"
    try:
        obj = orjson.loads(raw)  # rejects NaN and Infinity, as the write would
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{where}: invalid JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "id" in obj and isinstance(obj["id"], int) and not isinstance(obj["id"], bool):
        obj["id"] = str(obj["id"])
    if "id" in obj and not isinstance(obj["id"], str):
        raise InvalidArgument(f"{where}: 'id' must be a string")
    vector = obj.get("vector")
    if vector is not None:
        if not isinstance(vector, list):
            raise InvalidArgument(f"{where}: 'vector' must be a list of numbers")
        if dimensions is not None and len(vector) != dimensions:
            raise InvalidArgument(f"{where}: the vector has {len(vector)} values; the namespace takes {dimensions}")
    attributes = obj.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise InvalidArgument(f"{where}: 'attributes' must be a JSON object")
    extra = {k: v for k, v in obj.items() if k not in KNOWN and v is not None}
    if extra:
        if clash := sorted(set(extra) & set(attributes or {})):
            raise InvalidArgument(f"{where}: {clash} both at the top level and in 'attributes'")
        attributes = {**extra, **(attributes or {})}
    doc = {k: obj[k] for k in ("id", "text", "vector") if obj.get(k) is not None}
    if attributes:
        doc["attributes"] = attributes
    return doc


def _jsonl_batch(first: int, docs: list[dict], lines: list[int], name: str) -> Batch:
    label = f"{name} lines {lines[0]}-{lines[-1]}"
    if not all("vector" in d for d in docs):
        return Batch(first, len(docs), docs, label)
    try:
        flat = np.array([d["vector"] for d in docs], np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{label}: a vector is not a list of numbers ({exc})") from exc
    if flat.ndim != 2:
        raise InvalidArgument(f"{label}: vectors of different lengths")
    columns = {
        "id": pa.array([d["id"] for d in docs], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]).cast(pa.list_(pa.float32())),
        "text": pa.array([d.get("text") for d in docs], pa.string()),
        "attributes": pa.array(
            [orjson.dumps(d["attributes"]).decode() if "attributes" in d else None for d in docs], pa.string()
        ),
    }
    return Batch(first, len(docs), pa.table(columns), label)
