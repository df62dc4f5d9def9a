"""The warm hint: fetch, before any query asks, what a namespace's queries will need.

A worker that has just started (or a router that expects traffic for a namespace) calls
:func:`warm`. In this order, each step in parallel where it can be:

1. the newest manifest (strong);
2. the namespace's embedder (the model) in the background, since it needs no I/O;
3. every segment's ``ivf.bin`` (centroids and partition offsets) and tombstones, and
   the write-ahead-log tail;
4. within ``budget_bytes``, most useful per byte first, each taken where it still fits:
   a by-range segment's attribute columns (``attrs.bin``: every filter), and, where it
   has ``clusters.bin``, its rows' groups (2 bytes a row: a broad filter on the
   ``cluster_by`` keys), then partitions,
   biggest first (a partition with more rows answers more queries: k-means cells hold the
   data's dense regions; counted at their decoded size, which is what the reader holds),
   then the ids decoded from ``attrs.bin`` (the ids of hits found without their
   partitions: BM25, a filter's exact path), then ``bm25.bin``
   (every BM25 and hybrid query's dictionary blocks and postings), then ``rows.bin``
   (where each row's record is: fields of hits);
5. optionally (``include_docs``) the rest of each segment's documents, within the same
   budget: ``ids.bin`` (``GET`` by id) and ``fields.bin`` (texts and attributes of hits),
   or an older segment's ``docs.parquet``.

Partitions go through the same reader calls as queries (decoded and memoised); whole files
into the store's byte cache (and its disk tier), from which every ranged read of them is
then served. So a warmed worker whose budget held it all reads nothing but the newest
manifest's probe. Warming is only a hint: it never changes what a query answers.
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
    bm25_bytes: int = 0
    column_bytes: int = 0
    group_bytes: int = 0
    id_bytes: int = 0
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

    budget = budget_bytes
    # Attribute columns first: small, and every filter reads them.
    budget = _take_files(reader, ns, metas, ("attrs.bin",), budget, result, "column_bytes")
    budget = _take_row_groups(reader, ns, metas, budget, result)
    budget = _take_partitions(reader, ns, metas, budget, result)
    budget = _take_ids(reader, ns, metas, budget, result)
    budget = _take_files(reader, ns, metas, ("bm25.bin",), budget, result, "bm25_bytes", reader.lexicon.hold)
    budget = _take_files(reader, ns, metas, ("rows.bin",), budget, result)
    if include_docs:
        whole = [(seg, layout) for seg, layout in metas if layout.docs is None]
        for seg, _ in whole:
            size = _size(reader, ns, seg, "docs.parquet")
            if size is None or size > budget:
                result.skipped.append(f"docs of segment {seg.id} (over budget)")
                continue
            budget -= size
            reader.docs(ns, seg)
            result.docs_bytes += size
        budget = _take_files(reader, ns, metas, ("ids.bin", "fields.bin"), budget, result)

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


def _decoded_bytes(layout, p: int) -> int:
    """What partition ``p`` takes once decoded: its stored bytes, float16 vectors widened
    to float32 as the reader holds them (int8 codes are held as stored)."""
    widened = 2 if layout.vector_dtype == "float16" else 0
    return layout.byte_range(p)[1] + layout.rows_in(p) * layout.dims * widened


def _take_partitions(reader, ns: str, metas, budget: int, result: WarmResult) -> int:
    """Partitions, biggest first across all segments, each where it still fits."""
    wanted = sorted(
        ((layout.rows_in(p), seg, layout, p) for seg, layout in metas for p in range(layout.nlist)),
        key=lambda t: -t[0],
    )
    result.partitions_total = sum(1 for rows, *_ in wanted if rows > 0)
    chosen: dict[str, tuple[Any, Any, list[int]]] = {}
    for rows, seg, layout, p in wanted:
        size = _decoded_bytes(layout, p)
        if rows == 0 or size > budget:
            continue
        budget -= size
        result.partitions += 1
        result.partition_bytes += layout.byte_range(p)[1]
        chosen.setdefault(seg.id, (seg, layout, []))[2].append(p)
    for seg, layout, parts in chosen.values():
        reader.partitions(ns, seg, layout, parts)
    return budget


def _take_row_groups(reader, ns: str, metas, budget: int, result: WarmResult) -> int:
    """Each ``cluster_by`` segment's rows' groups, where the budget still holds them."""
    for seg, layout in metas:
        directory = layout.clusters
        if directory is None or not directory.group_of_row:
            continue
        size = directory.group_range(0, int(directory.counts.sum()))[1]
        if size > budget:
            result.skipped.append(f"rows' groups of segment {seg.id} (over budget)")
            continue
        budget -= size
        result.group_bytes += reader.hold_row_groups(ns, seg, layout)
    return budget


def _size(reader, ns: str, seg, name: str) -> int | None:
    info = reader.store.head(segment.file_key(ns, seg.id, name))
    return None if info is None else info.size


def _take_ids(reader, ns: str, metas, budget: int, result: WarmResult) -> int:
    """Each by-range segment's ids (its ``$id`` column, decoded per partition), from the
    ``attrs.bin`` just fetched, where the budget still holds them: every query that returns
    hits found without their partitions (BM25, a filter's exact path) names them by these."""
    from vectordb.attr_columns import ID_COLUMN

    for seg, layout in metas:
        if layout.docs is None:
            continue
        base = segment.file_key(ns, seg.id, "")
        metadata = reader.documents.footers(base, layout.docs, [ID_COLUMN])[ID_COLUMN].metadata
        estimate = sum(metadata.row_group(g).column(0).total_uncompressed_size for g in range(metadata.num_row_groups))
        if estimate > budget:
            result.skipped.append(f"ids of segment {seg.id} (over budget)")
            continue
        ids = reader.documents.group_ids(base, layout.docs, range(layout.nlist))
        size = sum(group.nbytes for group in ids.values())
        budget -= size
        result.id_bytes += size
    return budget


def _take_files(reader, ns: str, metas, names: tuple[str, ...], budget: int, result: WarmResult,
                counter: str = "docs_bytes", held=None) -> int:
    """Whole files ``names`` of each by-range segment into the byte cache (in parallel),
    each where it still fits in ``budget``; returns what is left of it. ``held``: called
    with each key fetched."""
    wanted = []
    for seg, layout in metas:
        if layout.docs is None and names != ("bm25.bin",):  # an older segment has no by-range files
            continue
        for name in names:
            size = _size(reader, ns, seg, name)
            if size is None:
                continue
            if size > budget:
                result.skipped.append(f"{name} of segment {seg.id} (over budget)")
                continue
            budget -= size
            setattr(result, counter, getattr(result, counter) + size)
            wanted.append(segment.file_key(ns, seg.id, name))
    list(reader.pool.map(reader.store.get, wanted))
    for key in wanted if held is not None else ():
        held(key)
    return budget
