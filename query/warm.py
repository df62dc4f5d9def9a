"""The warm hint: fetch, before any query asks, what a namespace's queries will need.

A worker that has just started (or a router that expects traffic for a namespace) calls
:func:`warm`. In this order, each step in parallel where it can be:

1. the newest manifest (strong);
2. the namespace's embedder (the model) in the background, since it needs no I/O;
3. every segment's ``ivf.bin`` (centroids and partition offsets) and tombstones, and
   the write-ahead-log tail;
4. partitions, biggest first (a partition with more rows answers more queries: k-means
   cells hold the data's dense regions), until ``budget_bytes`` is spent;
5. optionally each segment's documents (``docs.parquet``, or a by-range segment's
   attribute columns, fields and their index: needed by queries that ``include`` text or
   attributes, and by filters), within the same budget.

Everything goes through the same reader calls as queries, so both the store's byte cache
(and its disk tier) and the reader's decoded objects are filled. Warming is only a hint:
it never changes what a query answers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from vectordb import embedders, segment

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024


@dataclass
class WarmResult:
    namespace: str
    version: int
    segments: int = 0
    centroid_bytes: int = 0
    wal_objects: int = 0
    partitions: int = 0
    partitions_total: int = 0
    partition_bytes: int = 0
    docs_bytes: int = 0
    embedder: str | None = None
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def warm(
    service_or_engine: Any,
    ns: str,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    include_docs: bool = False,
    load_embedder: bool = True,
) -> dict:
    """Prefetch what queries on ``ns`` need; returns what was fetched (a JSON dict).

    ``service_or_engine`` is an ``api.service.Service`` or a ``query.engine.QueryEngine``
    (anything with ``catalog``, ``reader`` and ``settings``, or an ``engine`` that has
    them). Raises NamespaceNotFound for an unknown namespace and StorageUnavailable when
    the store cannot be read; an embedder that fails to load is reported in ``skipped``,
    not raised (the first query will report it properly).
    """
    engine = getattr(service_or_engine, "engine", service_or_engine)
    catalog, reader, settings = engine.catalog, engine.reader, engine.settings
    started = time.perf_counter()
    manifest = catalog.latest(ns, "strong")
    result = WarmResult(ns, manifest.version, segments=len(manifest.segments))

    loader = None
    if load_embedder and manifest.config.embedder != embedders.NONE:
        result.embedder = manifest.config.embedder
        loader = threading.Thread(target=_load_embedder, args=(manifest.config.embedder, settings, result), daemon=True)
        loader.start()

    def segment_meta(seg):
        layout = reader.layout(ns, seg)
        reader.tombstones(ns, seg)
        return seg, layout

    tail = reader.pool.submit(reader.tail, manifest)
    metas = list(reader.pool.map(segment_meta, manifest.segments))
    tail.result()
    result.wal_objects = len(manifest.wal)
    result.centroid_bytes = sum(layout.stored_bytes() for _, layout in metas)

    # Biggest partitions first, across all segments.
    wanted = sorted(
        ((layout.rows_in(p), seg, layout, p) for seg, layout in metas for p in range(layout.nlist)),
        key=lambda t: -t[0],
    )
    result.partitions_total = sum(1 for rows, *_ in wanted if rows > 0)
    budget = budget_bytes
    chosen: dict[str, tuple[Any, Any, list[int]]] = {}
    for rows, seg, layout, p in wanted:
        size = layout.byte_range(p)[1]
        if rows == 0 or size > budget:
            continue
        budget -= size
        result.partitions += 1
        result.partition_bytes += size
        chosen.setdefault(seg.id, (seg, layout, []))[2].append(p)
    for seg, layout, parts in chosen.values():
        reader.partitions(ns, seg, layout, parts)

    if include_docs:
        for seg, _ in metas:
            size = _docs_bytes(reader, ns, seg)
            if size is None or size > budget:
                result.skipped.append(f"docs of segment {seg.id} (over budget)")
                continue
            budget -= size
            _fetch_docs(reader, ns, seg)
            result.docs_bytes += size

    if loader is not None:
        loader.join()
    result.seconds = round(time.perf_counter() - started, 4)
    return result.to_json()


def _load_embedder(name: str, settings, result: WarmResult) -> None:
    try:
        embedder = embedders.get(name, settings)
        getattr(embedder, "load", lambda: None)()
    except Exception as exc:  # reported, not raised: warming is a hint
        result.skipped.append(f"embedder {name}: {exc}")


_BY_RANGE = ("attrs.bin", "rows.bin", "fields.bin")


def _docs_bytes(reader, ns: str, seg) -> int | None:
    names = _BY_RANGE if reader.by_range(ns, seg) is not None else ("docs.parquet",)
    infos = [reader.store.head(segment.file_key(ns, seg.id, name)) for name in names]
    return None if None in infos else sum(info.size for info in infos)


def _fetch_docs(reader, ns: str, seg) -> None:
    """Into the byte cache: a by-range segment's ranged reads are then served from it."""
    if reader.by_range(ns, seg) is None:
        reader.docs(ns, seg)
        return
    list(reader.pool.map(lambda name: reader.store.get(segment.file_key(ns, seg.id, name)), _BY_RANGE))
