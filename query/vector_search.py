"""Vector search over the segments and the tail of one manifest.

Unfiltered: probe ``nprobe`` partitions (with several segments, one budget for all of
them: :func:`_shared_probes`, the clean segments' partitions scanned as one:
:func:`_search_shared`) and scan them exactly, asking for a
few extra rows wherever rows are dead (tombstoned, or overridden by the tail). Which rows
are dead comes from the reader's per-partition live masks, derived from the previous tail
version's with a writer beside us, so a scan never walks a partition's ids in Python.

Filtered: the filter is evaluated over the segment's attributes (DuckDB) first. When it
keeps few rows they are searched exactly (:mod:`query.exact_filter`), so a selective
filter never loses recall (a filter on the namespace's ``cluster_by`` keys alone is
decided per group of ``clusters.bin`` and reads only the groups it keeps). When it keeps
many, more partitions are probed the more it drops (``nprobe × (rows / kept) ** 0.35``:
``PROBE_GROWTH``), and the scan skips rows the filter rejects. Dead rows are dropped
per partition from its ids (in memory).

With ``search_device`` set to a torch device (:mod:`query.gpu`), unfiltered segment search
runs on tensors that device holds; filtered search and the tail stay on this FAISS path.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from query import exact_filter, gpu
from query.plan import TAIL, Candidate, Context
from vectordb import ivf
from vectordb.manifest import SegmentRef
from vectordb.reader import NamespaceReader
from vectordb.segment import Layout

_TIE_ROOM = exact_filter.TIE_ROOM
# A broad filter keeping a fraction f of a segment's rows probes nprobe × (1/f) ** this
# many partitions. 1 scanned about as many kept rows as an unfiltered query scans rows;
# 0.5 kept recall@10 at or above the unfiltered query's for filters keeping 4-46% of 1M
# rows and read 17-78% fewer bytes; 0.35 kept it at 0.979-0.990 (unfiltered: 0.971;
# 0.5: 0.981-0.991) and read 5-27% fewer bytes than 0.5; 0.25 came within 0.005 of the
# unfiltered query's at the broadest filter (bench/filtered_recall.py, 20261207-055710).
PROBE_GROWTH = 0.35
# With the default budget, each set of centroids (a segment, or segments sharing one) probes
# at least this many of its own best partitions, whatever the shared ranking gave it: the
# sets overlap in space, and a small segment probed once lost neighbours across its
# partitions' edges (1M rows in four background-built segments: recall@10 0.943-0.945 at a
# budget of 10, 0.9725 with this minimum, 0.972 in one segment).
MIN_PROBES_PER_SET = 2


def search(
    reader: NamespaceReader,
    ctx: Context,
    q: np.ndarray,
    k: int,
    exact_max_rows: int,
    device: str = "cpu",
    device_bytes: int = 2 * 1024**3,
) -> list[Candidate]:
    """Candidates from every segment and the tail. ``device``: the ``search_device``
    setting; ``device_bytes`` bounds the segment tensors a torch device holds."""
    metric = ctx.manifest.config.metric
    out = _search_tail(reader, ctx, q, k, metric)
    torch_device = gpu.resolve_device(device) if ctx.filter is None else None
    tensors = gpu.segment_tensors(reader, torch_device, device_bytes) if torch_device else None
    segments = ctx.manifest.segments
    shared = _shared_probes(reader, ctx, q, metric) if ctx.filter is None and len(segments) > 1 else None
    if shared is not None and tensors is None:
        return out + _search_shared(reader, ctx, shared, q, k, metric)
    for seg in segments:
        if ctx.filter is None:
            probes = shared.get(seg.id, []) if shared is not None else None
            out += _search_segment(reader, ctx, seg, q, k, metric, tensors, probes)
        else:
            out += _search_segment_filtered(reader, ctx, seg, q, k, metric, exact_max_rows)
    return out


def _search_shared(reader: NamespaceReader, ctx: Context, shared: dict[str, list[int]], q, k, metric) -> list[Candidate]:
    """The segments' shares of one probe budget (:func:`_shared_probes`) searched: the
    partitions not held are read in one round of parallel GETs for all segments, and all
    probed partitions scanned as one as they land (:func:`_scan_arriving`), so only the
    best ``k`` of them all become candidates (a namespace grown in batches has ~10
    segments, and ~50 probed partitions, many small: scoring, sorting and naming each
    segment's own top k cost more than its scan)."""
    work = []
    for seg in ctx.manifest.segments:
        probes = shared.get(seg.id)
        if not probes:
            continue
        layout = reader.layout(ctx.ns, seg)
        if ctx.fields:
            reader.prefetch_fields(ctx.ns, seg, layout, probes)
        work.append((seg, layout, probes))
    return _scan_arriving(reader, ctx, work, q, k, metric)


def _scan_arriving(reader: NamespaceReader, ctx: Context, work: list[tuple[SegmentRef, Layout, list[int]]], q, k,
                   metric) -> list[Candidate]:
    """The top ``k`` of the probed partitions of ``work`` (per segment: its layout and
    probes), all scanned as one (:class:`vectordb.ivf.BlockScan`); in a segment with
    tombstones, or when the tail overrides ids, each partition's dead rows are dropped
    from its picks (:meth:`NamespaceReader.partition_live`; it picks as many more as it
    has dead rows), and rows tied with the k-th are kept (the engine breaks ties by id).
    Those not held are read in one round of parallel GETs
    (:meth:`NamespaceReader.partition_loads`), and each GET's partitions are picked from by the
    thread that read them, as soon as they land, while the other GETs are in flight: a
    cold query at 10M vectors reads ~70-100 MB in ~17 GETs, and picking from all of them
    once the last had landed left ~50 ms of work after it (FAISS lets go of the
    interpreter while it scans, so two cores pick). Partitions held already are picked
    from while the reads are in flight."""
    blocks = [(seg, layout, p) for seg, layout, probes in work for p in probes]
    number = {(seg.id, p): i for i, (seg, _, p) in enumerate(blocks)}
    scan = ivf.BlockScan(q, k, metric)
    parts: list = [None] * len(blocks)
    lock = threading.Lock()
    held = [reader.peek_partitions(ctx.ns, seg, probes) for seg, _, probes in work]
    loads = [(seg, load) for (seg, layout, probes), found in zip(work, held) if None in found
             for load in reader.partition_loads(ctx.ns, seg, layout, probes, metric)]
    # Dead rows are asked for once a partition is in: the tombstone lists are read beside
    # the partitions (QueryEngine._prefetch), not before them.
    dead: dict[str, bool] = {}

    def take(seg: SegmentRef, got: dict) -> None:
        if not got:
            return
        if seg.id not in dead:
            dead[seg.id] = bool(ctx.tail.touched or reader.tombstones(ctx.ns, seg))
        for p, part in got.items():
            i = number.get((seg.id, p))
            if i is None:
                continue
            with lock:
                if parts[i] is not None:
                    continue
                parts[i] = part
            scan.add(i, part.vectors, reader.partition_live(ctx.ns, seg, p, part, ctx.tail) if dead[seg.id] else None)

    if loads:
        pending = [reader.pool.submit(lambda seg=seg, load=load: take(seg, load())) for seg, load in loads] \
            if len(loads) > 1 else []
        for (seg, _, probes), found in zip(work, held):  # while the reads are in flight
            take(seg, {p: part for p, part in zip(probes, found) if part is not None})
        if len(loads) == 1:  # a hand-off to a thread costs more than it saves
            seg, load = loads[0]
            take(seg, load())
        for done in pending:
            done.result()
    for seg, layout, probes in work:  # all held now (any evicted meanwhile: read again)
        take(seg, dict(zip(probes, reader.partitions(ctx.ns, seg, layout, probes))))
    ties = ctx.tail.touched or any(reader.tombstones(ctx.ns, seg) for seg, _, _ in work)
    scores, which, rows = scan.result(ties=bool(ties))
    out = []
    for s, w, r in zip(scores.tolist(), which.tolist(), rows.tolist()):
        seg, layout, p = blocks[w]
        out.append(Candidate(s, parts[w].ids[r], seg, int(layout.part_rows[p]) + r))
    return out


def _shared_probes(reader: NamespaceReader, ctx: Context, q, metric) -> dict[str, list[int]]:
    """One probe budget for all segments: every distinct centroid ranked together, the
    best ``nprobe`` partitions of the namespace (``nprobe`` as for one segment of all
    their partitions) scanned, wherever they are; a one-partition segment always. So a
    namespace in many segments scans about the rows one compacted segment would, not
    ``nprobe`` per segment; with the default budget each set of centroids also probes
    at least ``MIN_PROBES_PER_SET`` of its own best partitions. Segments that share one set of centroids (a Ray build's
    shards: ``Layout.centroid_set``) count it once: its centroid ``p`` is ranked once
    and, when picked, partition ``p`` of each of them is scanned (together they are the
    partition one segment of all their rows would have). Layouts are fetched in one round
    of parallel reads, however many segments there are, and the picked partitions in one
    more (:func:`_search_shared`)."""
    segments = ctx.manifest.segments
    layouts = _parallel(reader, [(lambda seg=seg: reader.layout(ctx.ns, seg)) for seg in segments],
                        all(reader.has_layout(ctx.ns, seg) for seg in segments))
    groups = centroid_groups(layouts)
    total = sum(layouts[members[0]].nlist for members in groups)
    budget = min(total, ctx.nprobe or ivf.default_nprobe(total))
    owner, part, scores = [], [], []
    picked: dict[str, list[int]] = {}
    for g, members in enumerate(groups):
        layout = layouts[members[0]]
        if layout.nlist == 1:
            for i in members:
                picked[segments[i].id] = [0] if layouts[i].rows_in(0) else []
            continue
        # Each set's best ``budget`` (best first) hold the namespace's best ``budget``.
        best_scores, best_parts = layout.top_centroids(q, budget, metric)
        owner.append(np.full(len(best_parts), g))
        part.append(best_parts)
        scores.append(best_scores)
    if scores:
        order = np.argsort(-np.concatenate(scores), kind="stable")[:budget]
        owners, parts = np.concatenate(owner)[order], np.concatenate(part)[order]
        if len(scores) > 1 and ctx.nprobe is None:
            # Every set of centroids probes at least MIN_PROBES_PER_SET of its own best.
            extra_o, extra_p = [], []
            for o, best_parts in zip(owner, part):
                g, want = int(o[0]), min(len(best_parts), MIN_PROBES_PER_SET)
                have = set(parts[owners == g].tolist())
                more = [p for p in best_parts[:want].tolist() if p not in have]
                more = more[: max(0, want - len(have))]
                extra_o += [g] * len(more)
                extra_p += more
            owners = np.concatenate([owners, np.array(extra_o, np.int64)])
            parts = np.concatenate([parts, np.array(extra_p, np.int64)])
        for g, p in zip(owners.tolist(), parts.tolist()):
            for i in groups[g]:
                if layouts[i].rows_in(p):
                    picked.setdefault(segments[i].id, []).append(p)
    return picked


def centroid_groups(layouts: list[Layout]) -> list[list[int]]:
    """The segments (indices into ``layouts``) grouped by the centroids they share, in
    order of first appearance; a segment with centroids of its own is a group alone."""
    groups: list[list[int]] = []
    shared: dict[str, int] = {}
    for i, layout in enumerate(layouts):
        if layout.centroid_set is None:
            groups.append([i])
        elif layout.centroid_set in shared:
            groups[shared[layout.centroid_set]].append(i)
        else:
            shared[layout.centroid_set] = len(groups)
            groups.append([i])
    return groups


def _parallel(reader: NamespaceReader, calls: list, inline: bool) -> list:
    """The results of ``calls``: in the reader's pool, or here when ``inline`` (all held
    already, or one: a hand-off to a thread costs more than it saves)."""
    if inline:
        return [call() for call in calls]
    return list(reader.pool.map(lambda call: call(), calls))


def _search_tail(reader, ctx: Context, q, k, metric) -> list[Candidate]:
    rows = ctx.tail.rows
    if not len(rows):
        return []
    if ctx.filter is None:
        scores, idx = ivf.scan(rows.vectors, q, k, metric)
    else:
        allowed = np.flatnonzero(reader.tail_filter_mask(ctx.manifest, ctx.filter, ctx.filter_key))
        scores, sub = ivf.scan(rows.vectors[allowed], q, k, metric)
        idx = allowed[sub]
    return [Candidate(float(s), rows.ids[r], TAIL, int(r)) for s, r in zip(scores, idx)]


def _nprobe(ctx: Context, nlist: int) -> int:
    return ctx.nprobe or ivf.default_nprobe(nlist)


def _search_segment(reader: NamespaceReader, ctx: Context, seg: SegmentRef, q, k, metric, tensors=None,
                    probes: list[int] | None = None) -> list[Candidate]:
    """Top-k candidates of one segment: from ``probes`` (its share of :func:`_shared_probes`),
    or its own ``nprobe`` partitions closest to ``q``."""
    if probes is not None and not probes:
        return []
    layout = reader.layout(ctx.ns, seg)
    index = tensors.index(reader, ctx.ns, seg, layout, metric) if tensors is not None else None
    if index is not None:
        return _search_segment_tensors(tensors, index, seg, q, k, _nprobe(ctx, layout.nlist),
                                       reader.tombstones(ctx.ns, seg), ctx.tail.touched, probes)
    if probes is None:
        probes = layout.top_centroids(q, _nprobe(ctx, layout.nlist), metric)[1]
        probes = [int(p) for p in probes if p >= 0 and layout.rows_in(int(p)) > 0]
        if ctx.fields:
            reader.prefetch_fields(ctx.ns, seg, layout, probes)
    return _scan_arriving(reader, ctx, [(seg, layout, [int(p) for p in probes])], q, k, metric)


def _search_segment_tensors(tensors, index: gpu.DeviceIndex, seg: SegmentRef, q, k, nprobe, dead, touched,
                            probes: list[int] | None = None) -> list[Candidate]:
    """The torch twin of :func:`_search_segment`: the same rows, dead ones masked on the device."""
    exclude = None
    if dead or touched:

        def exclude(rows: np.ndarray) -> np.ndarray:
            ids = index.ids
            return np.fromiter((ids[r] in dead or ids[r] in touched for r in rows), bool, len(rows))

    scores, rows = tensors.search(index, q, k, nprobe, exclude, probes)
    return [Candidate(float(s), index.ids[r], seg, int(r)) for s, r in zip(scores, rows) if r >= 0]


def _search_segment_filtered(reader, ctx: Context, seg: SegmentRef, q, k, metric, exact_max_rows) -> list[Candidate]:
    layout = reader.layout(ctx.ns, seg)
    groups = layout.clusters.matching(ctx.filter, ctx.filter_key) if layout.clusters is not None else None
    n_grouped = layout.clusters.rows_in(groups) if groups is not None else 0
    if groups is not None and n_grouped <= exact_max_rows:
        # A filter on the namespace's cluster_by keys alone: its rows are the groups it
        # keeps in clusters.bin, read as a few ranges; no attribute column is read.
        if not len(groups):
            return []
        key = (seg.id, seg.tombstones_key, ctx.filter_key, "clusters")
        return exact_filter.search(reader, ctx, seg, layout, None, q, k, metric, key, groups)
    if groups is not None and layout.clusters.group_of_row:
        # A broad filter on them: the probed partitions' rows whose group it keeps, read
        # beside the partitions (2 bytes a row), never a column of the whole segment.
        return _search_segment_broad(reader, ctx, seg, layout, q, k, metric, groups, n_grouped)
    allowed = reader.filter_mask(ctx.ns, seg, ctx.filter, ctx.filter_key)
    if layout.docs is None:
        # The whole docs are read for the filter anyway: their ids give the live mask.
        live = reader.live_mask(ctx.ns, seg, ctx.tail)
        if live is not None:
            allowed = allowed & live
    n_allowed = int(np.count_nonzero(allowed))
    if n_allowed == 0:
        return []
    if n_allowed <= exact_max_rows:
        # Memoised per filter (and, where the whole docs folded the tail's overrides into
        # ``allowed``, per tail version): a later query with another vector reads nothing.
        key = (seg.id, seg.tombstones_key, ctx.filter_key, ctx.tail.serial if layout.docs is None else None)
        return exact_filter.search(reader, ctx, seg, layout, allowed, q, k, metric, key)
    parts = _broad_probes(reader, ctx, seg, layout, q, metric, n_allowed)
    held = reader.partitions(ctx.ns, seg, layout, parts)
    kept = [allowed[int(layout.part_rows[p]) : int(layout.part_rows[p]) + len(part.ids)] for p, part in zip(parts, held)]
    return _scan_kept(reader, ctx, seg, layout, q, k, metric, parts, held, kept)


def _search_segment_broad(reader, ctx: Context, seg: SegmentRef, layout: Layout, q, k, metric,
                          groups: np.ndarray, n_allowed: int) -> list[Candidate]:
    """A filter on ``cluster_by`` keys keeping ``groups`` (``n_allowed`` rows: too many to
    search exactly)."""
    parts = _broad_probes(reader, ctx, seg, layout, q, metric, n_allowed)
    held, of_rows = reader.partitions_grouped(ctx.ns, seg, layout, parts)
    wanted = layout.clusters.kept(groups)
    return _scan_kept(reader, ctx, seg, layout, q, k, metric, parts, held, [wanted[g] for g in of_rows])


def _broad_probes(reader, ctx: Context, seg: SegmentRef, layout: Layout, q, metric, n_allowed: int) -> np.ndarray:
    """The partitions a filter keeping ``n_allowed`` of the segment's rows probes: more the
    more it drops (PROBE_GROWTH). Starts fetching the fields of their rows."""
    base_nprobe = _nprobe(ctx, layout.nlist)
    wanted = min(layout.nlist, math.ceil(base_nprobe * (seg.rows / n_allowed) ** PROBE_GROWTH))
    parts = layout.top_centroids(q, wanted, metric)[1]
    parts = np.array([p for p in parts if p >= 0 and layout.rows_in(int(p)) > 0], np.int64)
    if ctx.fields:
        reader.prefetch_fields(ctx.ns, seg, layout, parts)
    return parts


def _scan_kept(reader, ctx: Context, seg: SegmentRef, layout: Layout, q, k, metric, parts: np.ndarray,
               held: list, kept: list[np.ndarray]) -> list[Candidate]:
    """The top k of partitions ``parts`` (``held``) over their rows the filter keeps (``kept``,
    a mask per partition) that are live."""
    # Each partition's kept rows scanned where they are (:func:`vectordb.ivf.scan_rows`), the rows
    # picked in all of them scored exactly at once, the best kept, and only the winners'
    # ids decoded.
    found_parts, found_rows = [], []
    for w, (p, part) in enumerate(zip(parts, held)):
        keep = kept[w]
        live = reader.partition_live(ctx.ns, seg, int(p), part, ctx.tail)
        if live is not None:
            keep = keep & live
        keep = np.flatnonzero(keep)
        if len(keep):
            found_rows.append(ivf.scan_rows(part.vectors, keep, q, k + _TIE_ROOM, metric))
            found_parts.append(w)
    if not found_rows:
        return []
    vectors = np.concatenate([held[w].vectors[rows] for w, rows in zip(found_parts, found_rows)])
    scores = ivf.exact_scores(vectors, np.asarray(q, np.float32).reshape(-1), metric)
    which = np.repeat(found_parts, [len(rows) for rows in found_rows])
    rows = np.concatenate(found_rows)
    best = np.lexsort((rows, which, -scores))[: k + _TIE_ROOM]
    if len(best) > k:  # the top k, and rows tied with the k-th (the engine breaks ties by id)
        best = best[scores[best] >= scores[best[k - 1]]]
    return [Candidate(float(scores[i]), held[which[i]].ids[rows[i]], seg, int(layout.part_rows[parts[which[i]]]) + int(rows[i]))
            for i in best.tolist()]
