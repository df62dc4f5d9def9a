"""A segment's attributes as columns: ``attrs.bin``.

Filters name attribute paths; a filter on ``year`` should read the years, not every
document's whole attribute object (let alone its text). So each top-level attribute key a
filter can address (``[A-Za-z_][A-Za-z0-9_-]{0,63}``: a filter field's first step) gets a
column of its own, typed where the segment's values agree:

* ``number`` -- every present value is a JSON number: float64, as filters compare numbers
  (IEEE doubles; integers beyond the double range are infinite, as in ``vectordb.filters``);
* ``string`` -- every present value is a string: UTF-8;
* ``bool`` -- every present value is a boolean;
* ``json`` -- anything else (nulls, arrays, objects, mixed types): the value's JSON text.

A row without the key has a null there (*missing*; a JSON null makes the column ``json``).
The 255 most frequent keys get columns; if there are more, the others of each row go to
one ``$rest`` column (a JSON object of them). ``$id`` holds the ids, for filters on
``id``.

``attrs.bin`` is one Parquet file per column, back to back; ``ivf.bin``'s trailer lists
them (name, kind, offset, size, footer length). A column's chunks are thus contiguous: a
filter reads the footers of the columns it names, then those columns' chunks, never
another column's bytes. In each file row group ``p`` is partition ``p`` (empty ones
included), rows in segment order, and typed columns carry min/max/null-count statistics
per row group, so a filter can tell from the footers alone which partitions hold no
match (:mod:`vectordb.filter_columns`) and skip their chunks.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow.parquet as pq

ID_COLUMN = "$id"
REST_COLUMN = "$rest"
MAX_COLUMNS = 255
TYPED = ("number", "string", "bool")
_ADDRESSABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_MISSING = object()


def addressable(key: str) -> bool:
    """Whether a filter can name the top-level key ``key`` (its first path step)."""
    return _ADDRESSABLE.fullmatch(key) is not None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "json"


def _double(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond the double range: filters see it as infinite
        return math.copysign(math.inf, value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def parse(attributes: Sequence[str | None]) -> list[dict]:
    """Each row's attributes as a dict ({} for none, or for JSON that is not an object:
    filters find nothing in it either)."""
    parsed = []
    for text in attributes:
        value = json.loads(text) if text else None
        parsed.append(value if isinstance(value, dict) else {})
    return parsed


@dataclass(frozen=True)
class ColumnInfo:
    """Where one column's Parquet file lies in ``attrs.bin``."""

    name: str
    kind: str
    offset: int  # of the column's file in attrs.bin
    size: int
    footer: int  # bytes at the file's end holding its footer (metadata, length, magic)

    def to_json(self) -> list:
        return [self.name, self.kind, self.offset, self.size, self.footer]

    @classmethod
    def from_json(cls, obj: list) -> ColumnInfo:
        name, kind, offset, size, footer = obj
        return cls(str(name), str(kind), int(offset), int(size), int(footer))

    def footer_range(self) -> tuple[int, int]:
        return self.offset + self.size - self.footer, self.footer


class ColumnPlan:
    """Which columns ``attrs.bin`` gets, learnt from the rows as they go by: how often
    each addressable key occurs and which kinds its values have (small: per key, not
    per row), so a streamed build decides the columns before writing any."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.kinds: dict[str, set[str]] = {}

    def add(self, parsed: Sequence[dict]) -> None:
        for attrs in parsed:
            for key, value in attrs.items():
                if addressable(key):
                    self.counts[key] += 1
                    self.kinds.setdefault(key, set()).add(_kind(value))

    def columns(self) -> tuple[list[tuple[str, str]], set[str]]:
        """(name, kind) of each own column, sorted by name; the keys that go to ``$rest``."""
        ranked = sorted(self.counts, key=lambda k: (-self.counts[k], k))
        own, rest = sorted(ranked[:MAX_COLUMNS]), set(ranked[MAX_COLUMNS:])
        kinds = [(key, next(iter(self.kinds[key])) if len(self.kinds[key]) == 1 else "json") for key in own]
        return kinds, rest


class ColumnWriter:
    """Writes ``attrs.bin`` a partition at a time: one Parquet writer per column (in
    memory, or a file in ``directory``), each partition one row group of every column."""

    def __init__(self, plan: ColumnPlan, directory: Path | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        own, self.rest = plan.columns()
        self.columns = [(ID_COLUMN, "id"), *own] + ([(REST_COLUMN, "object")] if self.rest else [])
        self.sinks: list = []
        self.writers: list[pq.ParquetWriter] = []
        for i, (name, kind) in enumerate(self.columns):
            sink = open(directory / f"attr-{i}", "w+b") if directory is not None else io.BytesIO()  # noqa: SIM115
            arrow_type = {"number": pa.float64(), "bool": pa.bool_()}.get(kind, pa.string())
            schema = pa.schema([(name, arrow_type)])
            self.sinks.append(sink)
            # A filter decodes a column's chunk in every row group it reads (a partition
            # each): zstd's set-up per chunk made a year column of 1M rows in 1,000 groups
            # take ~50 ms to decode, snappy ~8 ms for ~2 % more bytes. The ids are read a few
            # groups at a time (a query's partitions), where zstd's smaller chunks win.
            compression = "zstd" if kind == "id" else "snappy"
            self.writers.append(pq.ParquetWriter(sink, schema, compression=compression, write_statistics=kind in TYPED))

    def write(self, ids: Sequence[str], parsed: Sequence[dict]) -> None:
        """One partition's rows (``parsed``: see :func:`parse`)."""
        import pyarrow as pa

        for (name, kind), writer in zip(self.columns, self.writers):
            if kind == "id":
                array = pa.array(list(ids), pa.string())
            elif kind == "object":
                objects = [{k: v for k, v in a.items() if k in self.rest} for a in parsed]
                array = pa.array([_json(o) if o else None for o in objects], pa.string())
            else:
                array = _column(kind, [attrs.get(name, _MISSING) for attrs in parsed])
            writer.write_table(pa.table({name: array}), row_group_size=max(1, len(array)))

    def finish(self, emit) -> tuple[ColumnInfo, ...]:
        """Close the column files, hand ``attrs.bin``'s bytes to ``emit`` in order, and
        say where each column lies."""
        infos, at = [], 0
        for (name, kind), writer, sink in zip(self.columns, self.writers, self.sinks):
            writer.close()
            size = sink.seek(0, io.SEEK_END)
            sink.seek(size - 8)
            footer = int.from_bytes(sink.read(4), "little") + 8
            sink.seek(0)
            while chunk := sink.read(8 * 1024**2):
                emit(chunk)
            sink.close()
            infos.append(ColumnInfo(name, kind, at, size, footer))
            at += size
        return tuple(infos)


def _column(kind: str, values: list) -> Any:
    import pyarrow as pa

    if kind == "number":
        return pa.array([None if v is _MISSING else _double(v) for v in values], pa.float64())
    if kind == "bool":
        return pa.array([None if v is _MISSING else v for v in values], pa.bool_())
    if kind == "string":
        return pa.array([None if v is _MISSING else v for v in values], pa.string())
    return pa.array([None if v is _MISSING else _json(v) for v in values], pa.string())


def build(ids: Sequence[str], parsed: Sequence[dict], part_rows: np.ndarray) -> tuple[bytes, tuple[ColumnInfo, ...]]:
    """``attrs.bin`` of rows in segment order (``parsed``: see :func:`parse`) and where its
    columns are; ``part_rows``: the partitions' row offsets (nlist + 1)."""
    plan = ColumnPlan()
    plan.add(parsed)
    writer = ColumnWriter(plan)
    for p in range(len(part_rows) - 1):
        lo, hi = int(part_rows[p]), int(part_rows[p + 1])
        writer.write(ids[lo:hi], parsed[lo:hi])
    parts: list[bytes] = []
    infos = writer.finish(parts.append)
    return b"".join(parts), infos


@dataclass(frozen=True)
class Stats:
    """One typed column's statistics per row group (numpy arrays, one entry per group)."""

    rows: np.ndarray  # rows in the group
    nulls: np.ndarray  # rows without the key (-1: unknown)
    known: np.ndarray  # bool: min/max are known
    low: np.ndarray  # float64 for numbers, objects (str / bool) otherwise
    high: np.ndarray


class ColumnFooter:
    """The parsed footer of one column's file: row groups, statistics, chunk ranges."""

    def __init__(self, info: ColumnInfo, metadata: pq.FileMetaData, data: bytes | None = None) -> None:
        self.info = info
        self.metadata = metadata
        self.groups = metadata.num_row_groups
        self.data = data  # the whole column file, when it was read whole
        self._stats: Stats | None = None

    @classmethod
    def parse(cls, info: ColumnInfo, tail: bytes) -> ColumnFooter:
        """From the column file's last bytes: its footer (``info.footer`` bytes), or the
        whole file (then kept: its chunks need no further read)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + tail[len(tail) - info.footer :]))
        return cls(info, metadata, tail if len(tail) == info.size else None)

    @property
    def nbytes(self) -> int:
        return 4 * self.info.footer + 64 * self.groups + len(self.data or b"")

    def chunk(self, group: int) -> tuple[int, int]:
        """(offset in attrs.bin, length) of the column's chunk in row group ``group``."""
        col = self.metadata.row_group(group).column(0)
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        return self.info.offset + int(start), int(col.total_compressed_size)

    def stats(self) -> Stats:
        """Per row group statistics (typed columns; others have none: all unknown)."""
        if self._stats is None:
            self._stats = self._read_stats()
        return self._stats

    def _read_stats(self) -> Stats:
        n = self.groups
        rows = np.array([self.metadata.row_group(g).num_rows for g in range(n)], np.int64)
        nulls = np.full(n, -1, np.int64)
        known = np.zeros(n, bool)
        number = self.info.kind == "number"
        low = np.zeros(n, np.float64) if number else np.empty(n, object)
        high = np.zeros(n, np.float64) if number else np.empty(n, object)
        for g in range(n):
            st = self.metadata.row_group(g).column(0).statistics
            if st is None:
                continue
            if st.has_null_count:
                nulls[g] = st.null_count
            if st.has_min_max:
                known[g] = True
                low[g], high[g] = st.min, st.max
        return Stats(rows, nulls, known, low, high)


class ColumnSet:
    """What a filter over a segment's columns needs: every column's kind, the row groups'
    row offsets, and the footers of the columns it names."""

    def __init__(self, kinds: dict[str, str], starts: np.ndarray, footers: dict[str, ColumnFooter]) -> None:
        self.kinds = kinds
        self.starts = starts
        self.footers = footers

    @property
    def groups(self) -> int:
        return len(self.starts) - 1

    def stats(self, name: str) -> Stats:
        return self.footers[name].stats()
