"""The service: one object that wires storage, the write path and the read path.

The HTTP app and the command line both drive this; it holds no state that matters
(everything durable is in the object store), only caches and background threads.
"""

from __future__ import annotations

import threading
from dataclasses import asdict

from ingest import gc, validate
from ingest.commit import GroupCommitter
from ingest.indexer import Indexer, IndexResult
from query.engine import QueryEngine, QueryResult
from storage import open_store
from storage.base import ObjectStore
from vectordb import embedders
from vectordb.catalog import Catalog
from vectordb.errors import InvalidArgument
from vectordb.manifest import Manifest
from vectordb.namespace import NamespaceConfig, check_namespace_name
from vectordb.reader import NamespaceReader
from vectordb.rows import RowBatch, WriteBatch
from vectordb.settings import Settings


class Service:
    def __init__(self, settings: Settings | None = None, store: ObjectStore | None = None) -> None:
        self.settings = settings or Settings()
        self.store = store if store is not None else open_store(self.settings)
        self.catalog = Catalog(self.store, self.settings.eventual_ttl_s)
        self.reader = NamespaceReader(self.store, self.settings.fetch_threads)
        self.indexer = Indexer(self.catalog, self.store, self.reader, self.settings)
        self.committer = GroupCommitter(self.catalog, self.store, self.settings, on_commit=self.indexer.maybe_index)
        self.engine = QueryEngine(self.catalog, self.reader, self.settings)

    def preload(self) -> None:
        """Load the configured embedder in a background thread (cold-start work off the query path)."""
        name = self.settings.preload_embedder
        if not name:
            return

        def load() -> None:
            try:
                embedder = embedders.get(name, self.settings)
                getattr(embedder, "load", lambda: None)()
            except Exception:  # the first query will load it and report any error properly
                pass

        threading.Thread(target=load, name="preload-embedder", daemon=True).start()

    def close(self) -> None:
        self.committer.close()

    # --- namespaces ----------------------------------------------------------------------
    def create_namespace(
        self, ns: str, embedder: str = "minilm", dimensions: int | None = None, metric: str = "cosine"
    ) -> tuple[Manifest, bool]:
        check_namespace_name(ns)
        fixed = embedders.dimensions_of(embedder)
        if fixed is None and dimensions is None:
            raise InvalidArgument("embedder 'none' needs 'dimensions' (the length of the vectors you will send)")
        if fixed is not None and dimensions is not None and dimensions != fixed:
            raise InvalidArgument(f"embedder {embedder!r} makes {fixed}-dimensional vectors, not {dimensions}")
        config = NamespaceConfig(embedder, fixed if dimensions is None else dimensions, metric).validate()
        return self.catalog.create(ns, config)

    def describe(self, ns: str, consistency: str = "strong") -> dict:
        m = self.catalog.latest(ns, consistency)
        return {
            "name": ns,
            "version": m.version,
            **m.config.to_json(),
            "rows": {"indexed": m.indexed_rows, "unindexed": m.unindexed_rows},
            "segments": [
                {"id": s.id, "rows": s.rows, "live_rows": s.live_rows, "partitions": s.nlist, "bytes": s.bytes}
                for s in m.segments
            ],
            "wal_objects": len(m.wal),
            "bytes": m.bytes,
        }

    def list_namespaces(self) -> list[str]:
        return self.catalog.list_namespaces()

    def drop_namespace(self, ns: str) -> int:
        return self.catalog.drop(ns).version

    # --- writes ---------------------------------------------------------------------------
    def upsert(self, ns: str, documents: list) -> tuple[int, int]:
        config = self.catalog.latest(ns).config
        rows = validate.prepare_upserts(documents, config, self.settings)
        version = self.committer.write(ns, WriteBatch(rows, []), config.dimensions)
        return version, len(rows)

    def delete(self, ns: str, ids: list) -> tuple[int, int]:
        config = self.catalog.latest(ns).config
        checked = validate.check_ids(ids, self.settings)
        batch = WriteBatch(RowBatch.empty(config.dimensions), checked)
        return self.committer.write(ns, batch, config.dimensions), len(checked)

    # --- reads ----------------------------------------------------------------------------
    def query(self, ns: str, **kwargs) -> QueryResult:
        return self.engine.query(ns, **kwargs)

    def get_document(self, ns: str, doc_id: str, consistency: str = "strong") -> dict:
        hit = self.engine.get_document(ns, validate.check_id(doc_id, "id"), consistency)
        return {"id": hit.id, "text": hit.text, "attributes": hit.attributes or {}}

    # --- maintenance ----------------------------------------------------------------------
    def index(self, ns: str, compact: bool = False) -> IndexResult:
        return self.indexer.index(ns, compact=compact)

    def collect_garbage(self, ns: str) -> dict:
        result = gc.collect(self.catalog, self.store, ns, self.settings.retain_manifests, self.settings.gc_grace_s)
        return asdict(result)

    def stats(self) -> dict:
        out = {"commits": asdict(self.committer.stats)}
        cache_stats = getattr(self.store, "stats", None)
        if callable(cache_stats):
            out["cache"] = cache_stats()
        return out
