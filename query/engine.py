"""The read path of a stateless query worker.

For one query: resolve the manifest (strong: check for a newer version; eventual: reuse a
recent one), embed the text if needed, run the vector search (:mod:`query.vector_search`),
the BM25 search (:mod:`query.lexical`) or both fused by reciprocal rank
(:mod:`query.fusion`), then fetch the requested fields of the winners. Nothing here
outlives a restart except what the store's cache holds; a fresh worker answers the same.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from query import documents, fusion, lexical, vector_search
from query.plan import TAIL, Candidate, Context, filter_key, partition_of, row_key
from query.probe_group import ProbeGroup
from storage.errors import ObjectNotFound
from vectordb import embedders, ivf, layout_hint
from vectordb.bm25 import analyze
from vectordb.catalog import Catalog
from vectordb.doc_fields import Record
from vectordb.errors import DocumentNotFound, InvalidArgument, VersionNotRetained
from vectordb.filters import parse_filter
from vectordb.manifest import Manifest
from vectordb.namespace import check_namespace_name
from vectordb.reader import NamespaceReader
from vectordb.settings import Settings
from vectordb.vectors import check_vector

INCLUDABLE = ("text", "attributes", "vector")
CONSISTENCY = ("strong", "eventual")
MODES = ("vector", "bm25", "hybrid")
log = logging.getLogger(__name__)
# After a probe finds a newer version, strong queries of that namespace wait for their
# probe before searching for this long (a namespace being written would search twice).
_SPECULATION_PAUSE_S = 1.0
_MISSED = object()  # no speculative answer


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str | None = None
    attributes: dict | None = None
    vector: list[float] | None = None
    scores: dict[str, float] | None = None  # per mode, for hybrid queries


@dataclass
class QueryResult:
    hits: list[Hit]
    version: int
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryRequest:
    vector: list[float] | np.ndarray | None = None
    text: str | None = None
    top_k: int = 10
    include: tuple[str, ...] = ()
    consistency: str = "strong"
    nprobe: int | None = None
    mode: str = "vector"
    filter: dict | None = None
    rrf_k: int = 60
    weights: dict[str, float] | None = None
    candidates: int = 100  # per list, before fusion
    as_of: int | float | str | None = None  # read a past version (vectordb.versions.resolve)


class QueryEngine:
    def __init__(self, catalog: Catalog, reader: NamespaceReader, settings: Settings) -> None:
        self.catalog = catalog
        self.reader = reader
        self.settings = settings
        self.answered = threading.Event()  # set once a query has been answered (or failed)
        # Concurrent strong queries share newest-manifest probes (see query.probe_group).
        self._strong = ProbeGroup(lambda ns: self.catalog.latest(ns, "strong", on_start=self._prefetch))
        # What the next prefetch of a namespace should start beyond the centroids (see _hint).
        self._hints: dict[str, list] = {}
        self._hints_lock = threading.Lock()
        self._filters_seen: set[tuple[str, str]] = set()
        # Runs a hybrid query's BM25 half beside its vector half (not on the fetch pool,
        # whose tasks must never wait for other tasks of it).
        self._side = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hybrid")
        # Reads the ids of several segments' rows at once (lexical.name); its tasks wait
        # only for the fetch pool's.
        self._naming = ThreadPoolExecutor(max_workers=8, thread_name_prefix="naming")
        # Runs the newest-manifest probe of a speculated strong query (see _speculate).
        self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._moved_at: dict[str, float] = {}  # namespace -> when a probe last found a newer version
        self._cold_starts: dict[str, Future] = {}  # namespace -> its cold start in flight (_cold_start)

    # --- public ------------------------------------------------------------------------
    def query(self, ns: str, **kwargs) -> QueryResult:
        """Search ``ns``; see :class:`QueryRequest` for the arguments."""
        req = QueryRequest(**kwargs)
        self._validate(req)
        filt = parse_filter(req.filter) if req.filter is not None else None
        key = filter_key(req.filter) if filt is not None else ""
        if filt is not None and self._first_time((ns, key)):
            self._hint(ns, lambda seg: self.reader.prefetch_filter(ns, seg, filt, key, self.settings.filter_exact_max_rows))
        if req.mode in ("bm25", "hybrid") and self._first_time((ns, "bm25")):
            # Each segment's bm25.bin head, and what the hits' ids need first, read while the
            # newest-manifest probe is in flight.
            terms = analyze(req.text) if isinstance(req.text, str) else []
            self._hint(ns, lambda seg: self.reader.prefetch_bm25(ns, seg, terms))
            self._hint(ns, lambda seg: self.reader.prefetch_ids(ns, seg))

        vectors: dict = {}  # config -> query vector: a search redone on a newer version embeds once

        def search(manifest: Manifest) -> QueryResult:
            q = None
            if req.mode in ("vector", "hybrid"):
                if manifest.config not in vectors:
                    vectors[manifest.config] = self._query_vector(manifest, req)
                q = vectors[manifest.config]
            return self._search(manifest, req, q, filt)

        manifest = None
        try:
            answer, manifest = self._speculate(ns, req, search)
            if answer is not _MISSED:
                return answer
            if manifest is None:
                manifest = self._manifest(ns, req.consistency, req.as_of)
            return search(manifest)
        except ObjectNotFound:
            if manifest is None:  # no version to search was found
                raise
            if req.as_of is not None:  # that very version was collected meanwhile
                raise VersionNotRetained(f"version {manifest.version} of {ns!r} was pruned while it was read") from None
            # Garbage collection removed an object of an old version under our feet:
            # the newest manifest never references removed objects.
            return search(self._latest(ns, "strong"))
        finally:
            self.answered.set()
            ivf.load_faiss_soon()  # a fresh worker's first answers are numpy's; FAISS after that

    def _speculate(self, ns: str, req: QueryRequest,
                   search: Callable[[Manifest], QueryResult]) -> tuple[object, Manifest | None]:
        """A strong query on a worker that knows ``ns``, or any query on one that does not
        (:meth:`_cold_start`): ``search`` the newest version it knows while the probe asks
        the store for the next one. (answer, newest) when the
        probe found no newer version: the answer is then of a version that was the newest
        during the query, which is what a strong read promises. (_MISSED, newest) when it
        found one, or the search failed: the caller searches ``newest``, where an error
        counts. (_MISSED, None): not speculated. (Not for GET by id: its work, ~1-2 ms
        warm, gained less than the hand-off to the probe's thread cost,
        bench/speculative_reads.py.)"""
        if req.as_of is not None or not self.settings.speculative_reads:
            return _MISSED, None
        if time.monotonic() - self._moved_at.get(ns, -_SPECULATION_PAUSE_S) < _SPECULATION_PAUSE_S:
            return _MISSED, None
        start = self.catalog.trusted(ns)
        if start is not None and req.consistency == "strong":
            # Started after this query arrived, so it sees every write acknowledged before.
            probe = self._probes.submit(self._strong.latest, ns)
        elif start is not None:  # eventual, on a worker that knows ns: no probe to hide
            return _MISSED, None
        else:  # a cold worker, strong or eventual: the probe is the same
            start, probe = self._cold_start(ns)
            if start is None:
                return _MISSED, None
        time.sleep(0)  # hand the probe's thread the GIL: its GET goes out before the search's work
        try:
            answer = search(start)
        except Exception:  # noqa: BLE001 - done again on the newest version, where the error counts
            answer = _MISSED
        newest = probe.result()  # NamespaceNotFound (dropped meanwhile) and store errors propagate
        if newest.version != start.version:
            self._moved_at[ns] = time.monotonic()
            return _MISSED, newest
        return answer, newest

    def _manifest(self, ns: str, consistency: str, as_of) -> Manifest:
        """The newest version (strong or eventual), or the one ``as_of`` names."""
        if as_of is None:
            return self._latest(ns, consistency)
        from vectordb import versions  # only past reads need it

        return versions.resolve(self.catalog, ns, as_of)

    def _latest(self, ns: str, consistency: str) -> Manifest:
        if consistency == "strong":
            return self._strong.latest(ns)
        return self.catalog.latest(ns, consistency, on_start=self._prefetch)

    def _cold_start(self, ns: str) -> tuple[Manifest | None, Future | None]:
        """A worker that does not know ``ns``: the version to speculate on (``latest.json``,
        :meth:`Catalog.start`), read beside ``layouts.bin`` (:mod:`vectordb.layout_hint`),
        whose copies of its segments' ``ivf.bin`` the reader then holds. So the query reads
        its partitions in its second round trip, beside the probe for a newer version, not
        its third. Returns that version and the probe past it (started as soon as the
        version is known, while the hint is still being read and decoded); (None, None):
        no live version to start from (the caller finds out why). Queries that arrive
        together at a cold worker share one read of both (a burst would otherwise read and
        decode the hint once each); each probes for itself, after it arrived, so it sees
        every write acknowledged before."""
        check_namespace_name(ns)  # before its name goes into a key
        with self._hints_lock:
            flight = self._cold_starts.get(ns)
            leader = flight is None
            if leader:
                flight = self._cold_starts[ns] = Future()
        if not leader:
            start = flight.result()
            return (start, self._probes.submit(self.catalog.probe_from, ns, start)) if start else (None, None)
        try:
            start, probe = self._read_cold_start(ns)
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(start)
            return start, probe
        finally:
            with self._hints_lock:
                del self._cold_starts[ns]

    def _read_cold_start(self, ns: str) -> tuple[Manifest | None, Future | None]:
        hint = self.reader.pool.submit(layout_hint.read, self.reader.store, ns)
        start = self.catalog.start(ns)
        if start is None or start.deleted:
            return None, None
        probe = self._probes.submit(self.catalog.probe_from, ns, start)
        try:
            copies = hint.result()
        except Exception:  # noqa: BLE001 - only a hint: the query reads each ivf.bin, where errors count
            log.warning("could not read the layout hint of %s", ns, exc_info=True)
            copies = {}
        self.reader.hold_layouts(ns, start.segments, copies)
        self._prefetch(start)
        return start, probe

    def _prefetch(self, manifest: Manifest) -> None:
        """Start loading what any query of ``manifest`` needs first (centroids, tombstones, the
        WAL tail) without waiting: on a cold worker this overlaps the newest-manifest probe.
        Loads are memoised and single-flight, so a warm worker pays nothing."""
        ns = manifest.namespace
        with self._hints_lock:
            hints = self._hints.pop(ns, [])
        for seg in manifest.segments:
            if not self.reader.has_layout(ns, seg):
                self.reader.pool.submit(self.reader.layout, ns, seg)
            # Beside the layout, or beside layouts.bin's copy of it: a query needs both
            # before it can pick from its partitions.
            if not self.reader.has_tombstones(seg):
                self.reader.pool.submit(self.reader.tombstones, ns, seg)
            for hint in hints:
                self.reader.pool.submit(hint, seg)
        if manifest.wal and not self.reader.has_tail(manifest):
            self.reader.pool.submit(self.reader.tail, manifest)

    def _first_time(self, key: tuple) -> bool:
        """Whether this engine meets ``key`` (a namespace and a filter, or a kind of
        query) for the first time: what it reads first is held after that, so prefetching
        it again would only wake threads."""
        with self._hints_lock:
            if key in self._filters_seen:
                return False
            if len(self._filters_seen) > 4096:
                self._filters_seen.clear()
            self._filters_seen.add(key)
            return True

    def _hint(self, ns: str, start) -> None:
        """Have the next prefetch of ``ns`` also run ``start(segment)`` on the fetch pool for
        each segment: what this request will read first once the manifest is known (a
        filter's column footers, a GET's bucket and record), read while the newest-manifest
        probe is in flight. Only a hint: a query that finds nothing prefetched reads it."""
        with self._hints_lock:
            pending = self._hints.setdefault(ns, [])
            if len(pending) < 16:
                pending.append(start)

    def matching_ids(self, ns: str, raw_filter: dict) -> list[str]:
        """Ids of every live document matching ``raw_filter`` (strongly consistent)."""
        filt = parse_filter(raw_filter)
        manifest = self._latest(ns, "strong")
        return documents.matching_ids(self.reader, manifest, filt, filter_key(raw_filter))

    def live_ids(self, ns: str, ids: list[str]) -> list[str]:
        """Those of ``ids`` that name a live row (strongly consistent), by id lookups. The
        newest version is probed without a query's prefetch, which would fold the WAL tail
        (every row's vector, text and attributes) that a delete by id does not need
        (``TailReader.last_ops``): on an ingest worker, gigabytes at a 1M-row tail."""
        if not ids:
            return []
        return documents.live_ids(self.reader, self.catalog.latest(ns, "strong"), list(dict.fromkeys(ids)))

    def chunk_ids(self, ns: str, parents: list[str]) -> list[str]:
        """Ids of the live chunks of documents ``parents`` (rows whose ``doc_id`` attribute
        is one of them), strongly consistent: what re-ingesting or deleting them replaces.
        Probed without a query's prefetch, as :meth:`live_ids`: the tail's chunks are found
        from the WAL objects' ids and attributes, not by folding it."""
        if not parents:
            return []
        return documents.chunk_ids(self.reader, self.catalog.latest(ns, "strong"), list(dict.fromkeys(parents)))

    def get_document(self, ns: str, doc_id: str, consistency: str = "strong", as_of=None) -> Hit:
        """The row ``doc_id`` with its text and attributes. Raises DocumentNotFound."""
        self._hint(ns, lambda seg: self.reader.prefetch_id(ns, seg, doc_id))
        record = documents.find(self.reader, self._manifest(ns, consistency, as_of), doc_id)
        if record is None:
            raise DocumentNotFound(f"document {doc_id!r} not found in {ns!r}")
        return _record_hit(record)

    def document(self, ns: str, doc_id: str, consistency: str = "strong", as_of=None) -> documents.Document:
        """The row ``doc_id``, or the chunked document ``doc_id``: its chunks in order (see
        :class:`query.documents.Document`). Raises DocumentNotFound."""
        self._hint(ns, lambda seg: self.reader.prefetch_id(ns, seg, doc_id))
        found = documents.document(self.reader, self._manifest(ns, consistency, as_of), doc_id)
        if found is None:
            raise DocumentNotFound(f"document {doc_id!r} not found in {ns!r}")
        return found

    def documents(self, ns: str, ids: list[str], consistency: str = "strong", as_of=None) -> list[documents.Document]:
        """Those of ``ids`` found (rows or chunked documents, as :meth:`document`), in the
        order asked, all read from one version."""
        manifest = self._manifest(ns, consistency, as_of)
        found = (documents.document(self.reader, manifest, doc_id) for doc_id in dict.fromkeys(ids))
        return [doc for doc in found if doc is not None]

    def list_documents(self, ns: str, limit: int, cursor: str | None = None, as_of=None, vectors: bool = False
                       ) -> tuple[list[documents.Document], list | None, str | None, int]:
        """A page of the live rows of ``ns`` in a stable order, their vectors (with
        ``vectors``), the cursor of the next page (None: the end) and the version read. A
        cursor names its version: every page of a listing reads the version its first page
        read, whatever is written meanwhile."""
        if cursor is not None:
            version, start = documents.decode_cursor(cursor)
            manifest = self._manifest(ns, "strong", version)
        else:
            manifest, start = self._manifest(ns, "strong", as_of), (0, 0)
        records, found, after = documents.page(self.reader, manifest, start, limit, vectors)
        following = None if after is None else documents.encode_cursor(manifest.version, after)
        return [documents.Document.of(r) for r in records], found, following, manifest.version

    # --- internals -----------------------------------------------------------------------
    def _validate(self, req: QueryRequest) -> None:
        if req.consistency not in CONSISTENCY:
            raise InvalidArgument(f"consistency must be one of {', '.join(CONSISTENCY)}")
        if req.mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}")
        if not 1 <= req.top_k <= self.settings.max_top_k:
            raise InvalidArgument(f"top_k must be between 1 and {self.settings.max_top_k}")
        bad = set(req.include) - set(INCLUDABLE)
        if bad:
            raise InvalidArgument(f"include may name {', '.join(INCLUDABLE)}; not {sorted(bad)}")
        if req.nprobe is not None and req.nprobe < 1:
            raise InvalidArgument("nprobe must be at least 1")
        if req.mode in ("bm25", "hybrid") and (not isinstance(req.text, str) or not req.text.strip()):
            raise InvalidArgument(f"mode {req.mode!r} needs 'text'")
        if req.mode == "bm25" and req.vector is not None:
            raise InvalidArgument("mode 'bm25' takes 'text', not 'vector'")
        if req.mode == "vector" and (req.vector is None) == (req.text is None):
            raise InvalidArgument("give exactly one of 'vector' or 'text'")
        if not 1 <= req.rrf_k <= 10_000:
            raise InvalidArgument("rrf_k must be between 1 and 10000")
        for name, weight in (req.weights or {}).items():
            if name not in ("vector", "bm25") or not isinstance(weight, (int, float)) or not weight >= 0:
                raise InvalidArgument("weights maps 'vector' and/or 'bm25' to a number >= 0")

    def _query_vector(self, manifest: Manifest, req: QueryRequest) -> np.ndarray:
        config = manifest.config
        if req.vector is not None:
            q = check_vector(req.vector if isinstance(req.vector, str) else list(req.vector), config.dimensions, "vector")
        else:
            if not isinstance(req.text, str) or not req.text.strip():
                raise InvalidArgument("text must be a non-empty string")
            q = embedders.get(config.embedder, self.settings).embed_query(req.text)
        q = np.asarray(q, np.float32)
        if config.metric == "cosine":
            norm = float(np.linalg.norm(q))
            if not norm > 0:
                raise InvalidArgument("a zero vector cannot be compared by cosine")
            q = q / norm
        return q

    def _search(self, manifest: Manifest, req: QueryRequest, q, filt) -> QueryResult:
        nprobe = req.nprobe or self.settings.nprobe or None
        ctx = Context.of(manifest, self.reader.tail(manifest), filt, req.filter, nprobe)
        ctx.fields = bool({"text", "attributes"} & set(req.include))
        k = req.top_k
        if req.mode == "vector":
            ranked = _best(self._vector_search(ctx, q, k), k)
            records = self._records(manifest, ranked, req.include)
            hits = [self._hit(manifest, c, req.include, records=records) for c in ranked]
        elif req.mode == "bm25":
            ranked = _best(lexical.search(self.reader, ctx, req.text, k), k)
            records = self._records(manifest, ranked, req.include)
            hits = [self._hit(manifest, c, req.include, records=records) for c in ranked]
        else:
            n = max(k, req.candidates)
            # Both searches at once: BM25's dictionary blocks and postings are read while
            # the partitions are (a round trip fewer on a cold worker than one after the other).
            # BM25's candidates come without ids: only the fusion's winners need theirs.
            lexical_found = self._side.submit(self._unnamed_bm25, ctx, req.text, n)
            lists = {"vector": _best(self._vector_search(ctx, q, n), n), "bm25": lexical_found.result()}
            fused = self._named_winners(ctx.ns, fusion.rrf(lists, req.weights or {}, req.rrf_k), k)
            records = self._records(manifest, [cand for _, cand, _ in fused], req.include)
            hits = [self._hit(manifest, cand, req.include, score, per, records) for score, cand, per in fused]
        return QueryResult(hits, manifest.version, ctx.timings_ms)

    def _unnamed_bm25(self, ctx: Context, text: str, n: int) -> list[Candidate]:
        """The ``n`` best BM25 rows, without ids: tied scores share a rank in the fusion,
        and where ties cross the ``n``-th place the first rows by position are kept."""
        found = lexical.search(self.reader, ctx, text, n, named=False)
        return sorted(found, key=lambda c: (-c.score, row_key(c)))[:n]

    def _named_winners(self, ns: str, fused: list[tuple[float, Candidate, dict]], k: int) -> list:
        """The ``k`` best of ``fused`` by score, then id: ids are read for those at or above
        the ``k``-th score that lack one."""
        if len(fused) > k:
            fused = [f for f in fused if f[0] >= fused[k - 1][0]]
        named = lexical.name(self.reader, ns, [c for _, c, _ in fused], self._naming)
        return sorted(((s, c, per) for (s, _, per), c in zip(fused, named)), key=lambda t: (-t[0], t[1].id))[:k]

    def _vector_search(self, ctx: Context, q, k: int) -> list[Candidate]:
        s = self.settings
        return vector_search.search(self.reader, ctx, q, k, s.filter_exact_max_rows, s.search_device, s.cache_bytes)

    def _records(self, manifest: Manifest, ranked: list[Candidate], include) -> dict[tuple[str, int], Record]:
        """The stored fields of the segment rows among ``ranked``, when ``include`` asks for
        text or attributes: every segment's at once, in one round of ranged reads."""
        if not {"text", "attributes"} & set(include):
            return {}
        by_segment: dict[str, tuple] = {}
        for c in ranked:
            if c.segment is not TAIL:
                by_segment.setdefault(c.segment.id, (c.segment, []))[1].append(c.row)
        wanted = list(by_segment.values())
        found = self.reader.records_many(manifest.namespace, wanted)
        return {(seg.id, row): record for (seg, rows), records in zip(wanted, found) for row, record in zip(rows, records)}

    def _hit(self, manifest: Manifest, c: Candidate, include, score: float | None = None, scores=None,
             records: dict | None = None) -> Hit:
        score = c.score if score is None else score
        if scores is not None:
            scores = {"vector": scores.get("vector"), "bm25": scores.get("bm25")}
        if not include:
            return Hit(c.id, score, scores=scores)
        ns = manifest.namespace
        if c.segment is TAIL:
            rows = self.reader.tail(manifest).rows
            text, attrs, vector = rows.texts[c.row], rows.attributes[c.row], rows.vectors[c.row]
        else:
            record = (records or {}).get((c.segment.id, c.row))
            text, attrs = (record.text, record.attributes) if record is not None else (None, None)
            vector = None
            if "vector" in include:
                layout = self.reader.layout(ns, c.segment)
                p = int(partition_of(layout.part_rows, np.array([c.row]))[0])
                part = self.reader.partition(ns, c.segment, layout, p)
                vector = part.vectors[c.row - int(layout.part_rows[p])]
        return Hit(
            c.id,
            score,
            text=text if "text" in include else None,
            attributes=(json.loads(attrs) if attrs else {}) if "attributes" in include else None,
            vector=np.asarray(vector).tolist() if "vector" in include else None,
            scores=scores,
        )


def _record_hit(record: Record) -> Hit:
    return Hit(record.id, 0.0, text=record.text, attributes=json.loads(record.attributes) if record.attributes else {})


def _best(candidates: list[Candidate], k: int) -> list[Candidate]:
    """Top k by score, ties broken by id so every worker answers identically."""
    return sorted(candidates, key=lambda c: (-c.score, c.id))[:k]
