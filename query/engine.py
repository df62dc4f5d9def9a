"""The read path of a stateless query worker.

For one query: resolve the manifest (strong: check for a newer version; eventual: reuse a
recent one), embed the text if needed, then for every segment pick the ``nprobe`` nearest
partitions from its (cached) centroids, fetch those partitions in parallel with ranged
reads, scan them exactly, drop rows that are tombstoned or overridden by the unindexed
tail, scan the tail exhaustively, and merge the top-k. Nothing here outlives a restart
except what the store's cache holds; a fresh worker answers exactly the same.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field

import numpy as np

from storage.errors import ObjectNotFound
from vectordb import embedders, ivf
from vectordb.catalog import Catalog
from vectordb.errors import DocumentNotFound, InvalidArgument
from vectordb.manifest import Manifest, SegmentRef
from vectordb.reader import NamespaceReader
from vectordb.settings import Settings

INCLUDABLE = ("text", "attributes", "vector")
CONSISTENCY = ("strong", "eventual")


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str | None = None
    attributes: dict | None = None
    vector: list[float] | None = None


@dataclass
class QueryResult:
    hits: list[Hit]
    version: int
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Candidate:
    score: float
    id: str
    source: object  # ("tail", row) or (SegmentRef, partition, row-in-partition)


class QueryEngine:
    def __init__(self, catalog: Catalog, reader: NamespaceReader, settings: Settings) -> None:
        self.catalog = catalog
        self.reader = reader
        self.settings = settings

    # --- public ------------------------------------------------------------------------
    def query(
        self,
        ns: str,
        *,
        vector: list[float] | np.ndarray | None = None,
        text: str | None = None,
        top_k: int = 10,
        include: tuple[str, ...] = (),
        consistency: str = "strong",
        nprobe: int | None = None,
    ) -> QueryResult:
        """Nearest documents to ``vector`` (or to the embedding of ``text``)."""
        if consistency not in CONSISTENCY:
            raise InvalidArgument(f"consistency must be one of {', '.join(CONSISTENCY)}")
        if not 1 <= top_k <= self.settings.max_top_k:
            raise InvalidArgument(f"top_k must be between 1 and {self.settings.max_top_k}")
        bad = set(include) - set(INCLUDABLE)
        if bad:
            raise InvalidArgument(f"include may name {', '.join(INCLUDABLE)}; not {sorted(bad)}")
        if nprobe is not None and nprobe < 1:
            raise InvalidArgument("nprobe must be at least 1")
        manifest = self.catalog.latest(ns, consistency)
        q = self._query_vector(manifest, vector, text)
        try:
            return self._search(manifest, q, top_k, include, nprobe)
        except ObjectNotFound:
            # Garbage collection removed an object of an old version under our feet:
            # the newest manifest never references removed objects.
            manifest = self.catalog.latest(ns, "strong")
            return self._search(manifest, q, top_k, include, nprobe)

    def get_document(self, ns: str, doc_id: str, consistency: str = "strong") -> Hit:
        manifest = self.catalog.latest(ns, consistency)
        tail = self.reader.tail(manifest)
        if doc_id in tail.touched:
            if doc_id in tail.deleted:
                raise DocumentNotFound(f"document {doc_id!r} not found in {ns!r}")
            row = tail.rows.ids.index(doc_id)
            return self._tail_hit(manifest, row, 0.0, ("text", "attributes"))
        for seg in reversed(manifest.segments):
            if doc_id in self.reader.tombstones(ns, seg):
                continue
            docs = self.reader.docs(ns, seg)
            ids = docs.column("id").to_pylist()
            if doc_id in ids:
                row = ids.index(doc_id)
                attrs = docs.column("attributes")[row].as_py()
                return Hit(doc_id, 0.0, docs.column("text")[row].as_py(), json.loads(attrs) if attrs else None)
        raise DocumentNotFound(f"document {doc_id!r} not found in {ns!r}")

    # --- internals -----------------------------------------------------------------------
    def _query_vector(self, manifest: Manifest, vector, text) -> np.ndarray:
        config = manifest.config
        if (vector is None) == (text is None):
            raise InvalidArgument("give exactly one of 'vector' or 'text'")
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgument("text must be a non-empty string")
            q = embedders.get(config.embedder, self.settings).embed_query(text)
        else:
            from ingest.validate import check_vector  # shared rule for every vector we accept

            q = check_vector(list(vector), config.dimensions, "vector")
        q = np.asarray(q, np.float32)
        if config.metric == "cosine":
            norm = float(np.linalg.norm(q))
            if not norm > 0:
                raise InvalidArgument("a zero vector cannot be compared by cosine")
            q = q / norm
        return q

    def _search(self, manifest: Manifest, q: np.ndarray, k: int, include, nprobe: int | None) -> QueryResult:
        ns, metric = manifest.namespace, manifest.config.metric
        tail = self.reader.tail(manifest)
        candidates: list[_Candidate] = []
        if len(tail):
            scores, rows = ivf.scan(tail.rows.vectors, q, k, metric)
            candidates += [_Candidate(float(s), tail.rows.ids[r], ("tail", int(r))) for s, r in zip(scores, rows)]
        for seg in manifest.segments:
            candidates += self._search_segment(ns, seg, q, k, metric, nprobe, tail.touched)
        best = heapq.nlargest(k, candidates, key=lambda c: c.score)
        hits = self._materialise(manifest, best, include)
        return QueryResult(hits, manifest.version)

    def _search_segment(self, ns, seg: SegmentRef, q, k, metric, nprobe, touched) -> list[_Candidate]:
        layout = self.reader.layout(ns, seg)
        dead = self.reader.tombstones(ns, seg)
        nprobe = nprobe or self.settings.nprobe or ivf.default_nprobe(layout.nlist)
        probes = ivf.probe(layout.centroids, q.reshape(1, -1), nprobe, metric)[0]
        probes = [int(p) for p in probes if p >= 0 and layout.rows_in(int(p)) > 0]
        out = []
        for p, part in zip(probes, self.reader.partitions(ns, seg, layout, probes)):
            # Ask for enough extra rows that dropping the dead ones still leaves k.
            extra = sum(1 for i in part.ids if i in dead or i in touched) if (dead or touched) else 0
            scores, rows = ivf.scan(part.vectors, q, k + extra, metric)
            for s, r in zip(scores, rows):
                doc_id = part.ids[r]
                if doc_id not in dead and doc_id not in touched:
                    out.append(_Candidate(float(s), doc_id, (seg, p, int(r))))
        return out

    def _materialise(self, manifest: Manifest, best: list[_Candidate], include) -> list[Hit]:
        if not include:
            return [Hit(c.id, c.score) for c in best]
        hits = []
        for c in best:
            if c.source[0] == "tail":
                hits.append(self._tail_hit(manifest, c.source[1], c.score, include))
            else:
                seg, p, r = c.source
                hits.append(self._segment_hit(manifest, seg, p, r, c, include))
        return hits

    def _tail_hit(self, manifest: Manifest, row: int, score: float, include) -> Hit:
        rows = self.reader.tail(manifest).rows
        attrs = rows.attributes[row]
        return Hit(
            rows.ids[row],
            score,
            text=rows.texts[row] if "text" in include else None,
            attributes=(json.loads(attrs) if attrs else {}) if "attributes" in include else None,
            vector=rows.vectors[row].tolist() if "vector" in include else None,
        )

    def _segment_hit(self, manifest: Manifest, seg: SegmentRef, p: int, r: int, c: _Candidate, include) -> Hit:
        ns = manifest.namespace
        layout = self.reader.layout(ns, seg)
        docs = self.reader.docs(ns, seg)
        row = int(layout.part_rows[p]) + r
        attrs = docs.column("attributes")[row].as_py()
        vector = None
        if "vector" in include:
            vector = self.reader.partition(ns, seg, layout, p).vectors[r].tolist()
        return Hit(
            c.id,
            c.score,
            text=docs.column("text")[row].as_py() if "text" in include else None,
            attributes=(json.loads(attrs) if attrs else {}) if "attributes" in include else None,
            vector=vector,
        )
