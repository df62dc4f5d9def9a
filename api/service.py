"""The service: one object that wires storage, the write path and the read path.

The HTTP app and the command line both drive this; it holds no state that matters
(everything durable is in the object store), only caches and background threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ingest import gc, validate
from query import rag
from query.engine import QueryEngine, QueryResult
from query.llm import ChatClient
from storage import CachedStore, open_store
from storage.base import ObjectStore
from vectordb import embedders, versions
from vectordb.catalog import Catalog
from vectordb.clusters import check_names as check_cluster_by
from vectordb.errors import InvalidArgument, PayloadTooLarge
from vectordb.manifest import Manifest, TagRef
from vectordb.namespace import NamespaceConfig, check_namespace_name
from vectordb.reader import NamespaceReader
from vectordb.rows import RowBatch, WriteBatch
from vectordb.settings import Settings

if TYPE_CHECKING:
    from ingest.commit import GroupCommitter
    from ingest.indexer import Indexer, IndexResult
    from ingest.jobs import Job, JobRun, Jobs
    from ingest.parse_pool import ParsePool
    from ingest.wal_merge import WalMerger

# How long the embedder preload waits after the first query is answered (see ``preload``).
_AFTER_ANSWER_S = 0.1


def _after_commit(indexer, merger, manifest: Manifest) -> None:
    """After each write commit: an index build or a WAL merge in the background, if due.
    (A function of the two, not a method: a committer thread that outlives ``close()`` a
    moment must not keep the whole Service alive.)"""
    indexer.maybe_index(manifest)
    merger.maybe_merge(manifest)


class Service:
    def __init__(
        self, settings: Settings | None = None, store: ObjectStore | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        """``clock``: wall-clock seconds, for the catalog (tests pass a fake one)."""
        self.settings = settings or Settings()
        self.store = store if store is not None else open_store(self.settings)
        self.own_store = store is None  # opened from the settings: another process can open it too
        self.catalog = Catalog(self.store, self.settings.eventual_ttl_s, self.settings.pruned_manifest_ttl_s, clock)
        self.reader = NamespaceReader(self.store, self.settings.fetch_threads, self.settings.cache_bytes)
        self.engine = QueryEngine(self.catalog, self.reader, self.settings)
        self._counter = None
        self.llm = ChatClient.from_settings(self.settings)
        # The write side (group commit, indexer, WAL merges, upload jobs and their parsers)
        # is made at its first use: a query worker never writes, and never imports it.
        self._write_side: _WriteSide | None = None
        self._write_side_lock = threading.Lock()

    def _writes(self) -> _WriteSide:
        with self._write_side_lock:
            if self._write_side is None:
                self._write_side = _WriteSide(self)
            return self._write_side

    @property
    def indexer(self) -> Indexer:
        return self._writes().indexer

    @property
    def merger(self) -> WalMerger:
        return self._writes().merger

    @property
    def committer(self) -> GroupCommitter:
        return self._writes().committer

    @property
    def jobs(self) -> Jobs:
        return self._writes().jobs

    @property
    def parse_pool(self) -> ParsePool:
        return self._writes().parse_pool

    def preload(self, documents: bool = False) -> None:
        """Load the configured embedder in a background thread (cold-start work off the query
        path); ``documents``: also the runtime that embeds document batches (ingest roles).

        The load waits until the first query has been answered, or ``preload_delay_s``: a
        worker started for a waiting request answers it first (on two cores a model loading
        beside it made a vector query's cold start ~0.25 s slower); a text query that comes
        first loads the model itself, as it would have had to wait for it anyway.
        """
        name = self.settings.preload_embedder
        if not name:
            return

        def load() -> None:
            if self.engine.answered.wait(self.settings.preload_delay_s):
                # The answer is computed but not yet sent: loading a model holds the GIL in
                # long stretches, so give the response a moment to go out first.
                time.sleep(_AFTER_ANSWER_S)
            try:
                embedder = embedders.get(name, self.settings)
                if isinstance(embedder, embedders.SplitEmbedder):
                    embedder.load(documents=documents)
                else:
                    getattr(embedder, "load", lambda: None)()
            except Exception:  # the first query will load it and report any error properly
                pass

        threading.Thread(target=load, name="preload-embedder", daemon=True).start()

    def close(self) -> None:
        with self._write_side_lock:
            if self._write_side is not None:
                self._write_side.committer.close()
                self._write_side.parse_pool.close()
                self._write_side.indexer.close()
        if self.llm is not None:
            self.llm.close()

    # --- namespaces ----------------------------------------------------------------------
    def create_namespace(
        self,
        ns: str,
        embedder: str = "minilm",
        dimensions: int | None = None,
        metric: str = "cosine",
        chunking: dict | bool | None = None,
        vector_dtype: str = "float32",
        cluster_by: list[str] | tuple[str, ...] | None = None,
    ) -> tuple[Manifest, bool]:
        """Create ``ns`` (or return it if it exists with the same configuration).

        ``chunking``: ``{"chunk_tokens", "overlap_tokens"}``, ``False`` for none, or None for
        the default (256/32 tokens with an embedder, none when the client sends vectors).
        ``vector_dtype``: ``float32``, ``float16`` or ``int8``, how indexed segments store vectors.
        ``cluster_by``: up to 4 attribute keys each segment also groups its vectors by
        (:mod:`vectordb.clusters`): a selective filter on them reads a few ranges.
        """
        check_namespace_name(ns)
        fixed = embedders.dimensions_of(embedder)
        if fixed is None and dimensions is None:
            raise InvalidArgument("embedder 'none' needs 'dimensions' (the length of the vectors you will send)")
        if fixed is not None and dimensions is not None and dimensions != fixed:
            raise InvalidArgument(f"embedder {embedder!r} makes {fixed}-dimensional vectors, not {dimensions}")
        if chunking is None:
            chunking = embedder != embedders.NONE
        if chunking is True:
            chunking = {}
        if chunking is not False:
            if not isinstance(chunking, dict) or set(chunking) - {"chunk_tokens", "overlap_tokens"}:
                raise InvalidArgument('chunking is false or {"chunk_tokens": int, "overlap_tokens": int}')
            from ingest.chunker import ChunkingConfig

            chunking = ChunkingConfig(**chunking)  # validates the sizes
        config = NamespaceConfig(
            embedder,
            fixed if dimensions is None else dimensions,
            metric,
            chunk_tokens=chunking.chunk_tokens if chunking else None,
            overlap_tokens=chunking.overlap_tokens if chunking else 0,
            vector_dtype=vector_dtype,
            cluster_by=check_cluster_by(cluster_by),
        ).validate()
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
        """Commit the dropped version, then delete every object of the namespace but the
        stubs of its versions (a crash in between leaves garbage for the next collection)."""
        version = self.catalog.drop(ns).version
        self.collect_garbage(ns)
        return version

    # --- writes ---------------------------------------------------------------------------
    def upsert(self, ns: str, docs: list) -> tuple[int, int]:
        """Upsert documents (long texts become chunks); returns (version, rows written)."""
        manifest = self.catalog.latest(ns)
        config = manifest.config
        from ingest import documents  # the write path's chunker: not loaded by a query worker

        expanded = documents.expand(docs, config, self.token_counter()) if config.chunk_tokens else docs
        rows = validate.prepare_upserts(expanded, config, self.settings)
        return self._write_replacing(ns, config, rows, documents.parents(expanded), manifest.incarnation), len(rows)

    def upsert_table(self, ns: str, table) -> tuple[int, int]:
        """Bulk upsert of an Arrow table (see ``validate.prepare_table``)."""
        manifest = self.catalog.latest(ns)
        rows = validate.prepare_table(table, manifest.config, self.settings)
        return self._write(ns, manifest.config, WriteBatch(rows, []), manifest.incarnation), len(rows)

    def _write_replacing(
        self, ns: str, config, rows: RowBatch, parents: list[str], incarnation: int | None = None
    ) -> int:
        """Write ``rows``, deleting in the same commit the old chunks of ``parents`` that
        the new rows do not overwrite (a re-ingested document may have fewer chunks)."""
        stale = sorted(set(self._chunks_of(ns, parents)) - set(rows.ids)) if parents else []
        return self._write(ns, config, WriteBatch(rows, stale), incarnation)

    def _write(self, ns: str, config, batch: WriteBatch, incarnation: int | None) -> int:
        """Commit ``batch``, validated against ``config`` of the namespace's ``incarnation``:
        if the namespace is dropped or re-created before the commit, nothing is written and
        the caller hears so (NamespaceNotFound, Conflict)."""
        return self.committer.write(ns, batch, config.dimensions, incarnation=incarnation)

    def _chunks_of(self, ns: str, parents: list[str]) -> list[str]:
        """The live chunks of ``parents``: a lookup per segment (``doc_ids.bin``), not a scan."""
        return self.engine.chunk_ids(ns, parents)

    def delete(self, ns: str, ids: list | None = None, filter: dict | None = None) -> tuple[int, int]:
        """Delete by ids (a document's chunks go with it) and/or by filter; returns (version,
        rows deleted). Only live rows count, and when none matches nothing is committed:
        the version returned is the newest one, unchanged."""
        manifest = self.catalog.latest(ns)
        config = manifest.config
        if ids is None and filter is None:
            raise InvalidArgument("give 'ids' or 'filter'")
        asked = sorted(set(validate.check_ids(ids, self.settings))) if ids is not None else []
        doomed = self.engine.live_ids(ns, asked)  # an id lookup per segment, not a scan
        if filter is not None:
            doomed += self.engine.matching_ids(ns, filter)
        if config.chunk_tokens and (asked or doomed):
            doomed += self._chunks_of(ns, sorted(set(asked) | set(doomed)))
        doomed = sorted(set(doomed))
        if not doomed:
            return self.catalog.latest(ns).version, 0
        # Every id asked is deleted, live or not: a concurrent upsert of one committed
        # before this delete does not survive it (the delete is the later write).
        batch = WriteBatch(RowBatch.empty(config.dimensions), sorted(set(doomed) | set(asked)))
        return self._write(ns, config, batch, manifest.incarnation), len(doomed)

    def ingest_file(self, ns: str, filename: str, data: bytes, content_type: str | None,
                    document_id: str | None, attributes: dict | None, owner: str | None = None) -> Job:
        """Start a job that parses, chunks, embeds and commits an uploaded file; returns at once.

        Checked here (so the client hears at once): the namespace, its embedder, the file
        type, size, ``document_id`` and ``attributes``, and the job limits (TooManyRequests;
        ``owner`` is the API key id, None on an open server). Everything else -- a file that
        cannot be parsed, too many chunks, the parse time limit -- fails the job.
        """
        manifest = self.catalog.latest(ns)
        config = manifest.config
        if config.embedder == embedders.NONE:
            raise InvalidArgument("files need an embedder; this namespace takes vectors (embedder 'none')")
        if attributes is not None and not isinstance(attributes, dict):
            raise InvalidArgument("attributes must be a JSON object")
        from ingest import parsers
        from ingest.uploads import Upload, chunk_upload

        kind = parsers.file_kind(filename, content_type)
        if len(data) > self.settings.max_body_bytes:
            raise PayloadTooLarge(f"file is {len(data)} bytes, more than the limit of {self.settings.max_body_bytes}")
        parent = None
        if kind != "jsonl":  # a file's rows are always chunks: <parent>#<n>
            parent = validate.check_new_id(document_id or filename, "document_id")
            validate.check_parent_id(parent, "document_id")
        upload = Upload(
            filename, data, content_type, kind, parent, attributes or {}, config,
            tokenizer_dir=str(Path(self.settings.model_path or embedders.bundled_model_dir()).resolve()),
            max_bytes=self.settings.max_body_bytes,
            max_docs=self.settings.max_batch_docs,
            max_chunks=self.settings.max_chunks_per_file,
        )

        def work(run: JobRun) -> None:
            # Parsing and chunking in a child process, killed at the time limit or on cancel.
            docs = self.parse_pool.run(chunk_upload, upload, self.settings.parse_timeout_s, check=run.checkpoint)
            self._run_docs_job(run, ns, config, docs, manifest.incarnation)

        return self.jobs.start(ns, filename, work, owner=owner)

    def _run_docs_job(self, run: JobRun, ns: str, config, docs: list, incarnation: int | None) -> None:
        """Embed ``docs`` batch by batch, then commit them all at once: a job cancelled or
        failed before the commit has written nothing."""
        from ingest import documents

        job = run.job
        job.chunks_total = len(docs)
        job.documents = len(documents.parents(docs)) or len(docs)
        batches = []
        for lo in range(0, len(docs), self.settings.embed_batch_size):
            run.checkpoint()
            batches.append(validate.prepare_upserts(docs[lo : lo + self.settings.embed_batch_size], config, self.settings))
            job.chunks_done = min(len(docs), lo + self.settings.embed_batch_size)
        rows = RowBatch.concat(batches, config.dimensions)
        validate.reject_duplicate_ids(rows.ids)
        run.before_commit()
        job.version = self._write_replacing(ns, config, rows, documents.parents(docs), incarnation)

    def job(self, job_id: str) -> Job:
        """An upload job's record, from any worker (see ``ingest.jobs``). Raises JobNotFound."""
        return self.jobs.get(job_id)

    def cancel_job(self, job_id: str) -> Job:
        """Ask an upload job to stop, whichever worker runs it. Raises JobNotFound."""
        return self.jobs.cancel(job_id)

    def token_counter(self):
        """The tokenizer that chunk sizes are measured in (loaded once, no torch)."""
        if self._counter is None:
            from ingest.chunker import TokenizerCounter

            self._counter = TokenizerCounter(self.settings.model_path or embedders.bundled_model_dir())
        return self._counter

    # --- reads ----------------------------------------------------------------------------
    def query(self, ns: str, **kwargs) -> QueryResult:
        return self.engine.query(ns, **kwargs)

    def rag(
        self,
        ns: str,
        question: str,
        *,
        top_k: int = 8,
        mode: str = "hybrid",
        filter: dict | None = None,
        max_context_tokens: int = 2000,
        max_answer_tokens: int = 512,
        generate: bool | None = None,
        consistency: str = "strong",
        as_of: int | float | str | None = None,
    ) -> dict:
        """Passages for ``question`` (merged, ordered, trimmed, cited), a ready prompt, and the
        LLM's answer when one is configured. ``as_of``: answer from a past version (each
        citation names the version it read)."""
        if not isinstance(question, str) or not question.strip():
            raise InvalidArgument("question must be a non-empty string")
        if not 1 <= max_context_tokens <= 100_000 or not 1 <= max_answer_tokens <= 100_000:
            raise InvalidArgument("max_context_tokens and max_answer_tokens must be between 1 and 100000")
        config = self.catalog.latest(ns, consistency).config
        if config.embedder == embedders.NONE and mode != "bm25":
            mode = "bm25"  # no model to embed the question: lexical retrieval only
        result = self.engine.query(ns, text=question, top_k=top_k, mode=mode, filter=filter,
                                   include=("text", "attributes"), consistency=consistency, as_of=as_of)
        context = rag.build_context(question, result.hits, max_context_tokens, self.token_counter())
        cited = [{**c, "version": result.version} for c in context.citations]
        if generate is None:
            generate = self.llm is not None
        answer = None
        if generate:
            if self.llm is None:
                # The request asks for what this server is not set up to do: no upstream failed.
                raise InvalidArgument('"generate": true needs an LLM, and none is configured (VECTORDB_LLM_URL)')
            answer = self.llm.complete(context.prompt, max_tokens=max_answer_tokens)
        return {
            "answer": answer,
            "citations": cited,
            "passages": [{**c, "text": p.text, "score": p.score} for c, p in zip(cited, context.passages)],
            "prompt": context.prompt,
            "context_tokens": context.tokens,
            "mode": mode,
            "version": result.version,
        }

    def get_document(self, ns: str, doc_id: str, consistency: str = "strong", as_of=None) -> dict:
        """A stored row; or a chunked document: its chunks' texts joined, the attributes they
        share, and ``chunks`` (each with its own) in order."""
        return self.engine.document(ns, validate.check_id(doc_id, "id"), consistency, as_of).to_json()

    def get_documents(self, ns: str, ids: list, consistency: str = "strong", as_of=None) -> list[dict]:
        """Those of ``ids`` found (as :meth:`get_document`), in the order asked, all read
        from one version; at most ``max_top_k`` ids."""
        if not isinstance(ids, list) or not ids:
            raise InvalidArgument("ids must be a non-empty list of ids")
        if len(ids) > self.settings.max_top_k:
            raise InvalidArgument(f"at most {self.settings.max_top_k} ids in one request")
        checked = [validate.check_id(i, "ids") for i in ids]
        return [d.to_json() for d in self.engine.documents(ns, checked, consistency, as_of)]

    def list_documents(self, ns: str, limit: int = 100, cursor: str | None = None, as_of=None,
                       include_vectors: bool = False) -> dict:
        """A page of the live documents (stored rows: a chunked document's chunks each) in a
        stable order, with their vectors if asked; ``cursor`` (from the previous page)
        continues the listing at the version its first page read."""
        if not isinstance(limit, int) or not 1 <= limit <= self.settings.max_top_k:
            raise InvalidArgument(f"limit must be between 1 and {self.settings.max_top_k}")
        if cursor is not None and as_of is not None:
            raise InvalidArgument("give cursor or as_of, not both: a cursor names its version")
        docs, vectors, following, version = self.engine.list_documents(ns, limit, cursor, as_of, include_vectors)
        out = [d.to_json() for d in docs]
        for doc, vector in zip(out, vectors or ()):
            doc["vector"] = vector.tolist()
        return {"documents": out, "cursor": following, "version": version}

    # --- versions (vectordb.versions) -------------------------------------------------------
    def versions(self, ns: str, limit: int = 100, before: int | None = None) -> list[versions.VersionInfo]:
        """The newest ``limit`` versions below ``before``, newest first, with what each did."""
        return versions.history(self.catalog, ns, limit, before)

    def tags(self, ns: str) -> list[TagRef]:
        return [t for t in self.catalog.latest(ns).tags if not t.name.startswith(".")]

    def tag(self, ns: str, name: str, as_of: int | float | str) -> TagRef:
        """Name a version; it stays readable whatever the retention until :meth:`untag`."""
        return versions.tag(self.catalog, ns, name, as_of)

    def untag(self, ns: str, name: str) -> int:
        return versions.untag(self.catalog, ns, name).version

    def restore(self, ns: str, as_of: int | float | str) -> Manifest:
        """Roll ``ns`` back to a past version (or tag) as a new commit."""
        return versions.restore(self.catalog, ns, as_of)

    def branch(self, ns: str, source: str, as_of: int | float | str | None = None) -> Manifest:
        """Create ``ns`` from ``source`` as of ``as_of`` (default: its newest version), in O(1)."""
        check_namespace_name(ns)
        check_namespace_name(source)
        return versions.branch(self.catalog, ns, source, as_of)

    # --- maintenance ----------------------------------------------------------------------
    def index(self, ns: str, compact: bool = False) -> IndexResult:
        return self.indexer.index(ns, compact=compact)

    def collect_garbage(self, ns: str) -> dict:
        result = gc.collect(
            self.catalog, self.store, ns, self.settings.retain_manifests, self.settings.gc_grace_s,
            retries=self.settings.commit_retries,
        )
        return asdict(result)

    def stats(self) -> dict:
        writes = self._write_side
        out = {"commits": asdict(writes.committer.stats) if writes else {},
               "wal_merges": asdict(writes.merger.stats) if writes else {},
               "tail_folds": asdict(self.reader.tails.stats)}
        children = writes.indexer.children if writes else None
        if children is not None:
            out["background_builds"] = asdict(children.stats)
        cache_stats = getattr(self.store, "stats", None)
        if callable(cache_stats):
            out["cache"] = cache_stats()
        return out


class _WriteSide:
    """What only writes need, made for a Service at its first write (or index, job, ...)."""

    def __init__(self, service: Service) -> None:
        from ingest import build_process
        from ingest.commit import GroupCommitter
        from ingest.indexer import Indexer
        from ingest.jobs import Jobs
        from ingest.parse_pool import ParsePool
        from ingest.wal_merge import WalMerger

        s = service
        # A build's input bypasses the RAM cache (see Indexer).
        uncached = s.store.inner if isinstance(s.store, CachedStore) else s.store
        # Background builds in child processes, when a child can open the same store.
        children = build_process.ChildBuilds(s.settings) if s.own_store and build_process.usable(s.settings) else None
        self.indexer = Indexer(s.catalog, s.store, s.reader, s.settings, uncached, children)
        self.merger = WalMerger(s.catalog, s.store, s.reader, s.settings, self.indexer.lock)
        self.committer = GroupCommitter(
            s.catalog, s.store, s.settings, on_commit=partial(_after_commit, self.indexer, self.merger)
        )
        self.jobs = Jobs(s.store, s.settings)
        self.parse_pool = ParsePool(s.settings.max_jobs_per_worker)
