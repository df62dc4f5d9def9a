"""The unindexed tail of each manifest, folded once per WAL object rather than per version.

Every commit makes a new manifest whose WAL list is the previous one's plus one object, so
a strong reader beside a writer meets a new tail every few queries. Folding each new tail
from scratch made a query's cost grow with the whole tail (issue 11: one writer committing
10 documents at a time cut strong reads to a fifth, bench/strong_reads.py). Here a new tail extends the newest
tail this process folded for the namespace whenever that one's WAL keys are a prefix of
the new ones (:func:`vectordb.tail.extend`); the new tail knows its parent and the step
from it, so what depends on the tail (filter masks and BM25 here, live masks in the
reader) is derived from an earlier version's the same way, at a cost that follows the
writes in between. After an index build drops a WAL prefix the remaining (short) tail is
folded from the decoded objects, each decoded once.

A WAL merge (``ingest.wal_merge``) replaces the first WAL objects by one merged object
whose name says which keys it stands for (``vectordb.wal.covers``): when those are the
first keys of the tail folded last, the merged object holds exactly their fold, so the new
tail is that one extended by what follows the merge, without fetching the merged object,
and with the same row order (so the same Tail object, masks and BM25 index go on). A
process that did not fold those keys (a fresh one, or one that skipped the versions
before the merge) folds the now short list of objects from scratch.

Keys are WAL object keys, which are never reused, so everything here stays valid forever
and only needs bounding, in bytes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from storage.base import ObjectStore
from vectordb import wal
from vectordb.filters import Filter
from vectordb.id_set import IdSet, distinct
from vectordb.key_table import blake2b64
from vectordb.manifest import Manifest, WalRef
from vectordb.memo import Memo
from vectordb.tail import Batch, Tail, extend, fold
from vectordb.tail_bm25 import TailBM25
from vectordb.tail_doc_ids import doc_id_of

# How many versions back a tail's filter mask or BM25 index looks for an earlier one to
# extend before making it anew (a filter seen a few seconds ago is still worth extending).
_MASK_STEPS = 256
_BM25_STEPS = 256


@dataclass(frozen=True)
class ObjectOps:
    """What one WAL object does to each id, without its rows: the ids it names (an
    :class:`~vectordb.id_set.IdSet`) and, in the same order, whether the last operation
    on each in the object is a delete."""

    ids: IdSet
    deleted: np.ndarray  # bool

    @classmethod
    def read(cls, store: ObjectStore, key: str) -> ObjectOps:
        ids, hashes, deletes = wal.read_ops(store, key)
        named, last = distinct(hashes, ids)
        return cls(named, deletes[last])

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.deleted.nbytes


@dataclass(frozen=True)
class ObjectChunks(ObjectOps):
    """:class:`ObjectOps` and, in the same order, the ``doc_id`` of each id's last
    operation in the object (an Arrow string array; null for a delete or a row without
    one) and that operation's place in the object: which chunks of which documents one
    WAL object leaves, without its rows."""

    doc_ids: pa.Array
    at: np.ndarray  # int32

    @classmethod
    def read(cls, store: ObjectStore, key: str) -> ObjectChunks:
        ids, hashes, deletes, attributes = wal.read_ops(store, key, attributes=True)
        named, last = distinct(hashes, ids)
        parents = [None if deletes[j] else doc_id_of(attributes[j]) for j in last.tolist()]
        return cls(named, deletes[last], pa.array(parents, pa.string()), last.astype(np.int32))

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.doc_ids.nbytes + self.at.nbytes


def _newest(count: int, object_at, ids: list[str]):
    """For each of ``ids``, the newest of ``count`` WAL objects that names it (as
    :class:`ObjectOps`; ``object_at(o)`` gives object ``o``, asked newest first and only
    while some id is undecided): yields (index into ``ids``, o, the object, the id's place
    in its :class:`~vectordb.id_set.IdSet`). Ids no object names are not yielded."""
    hashes = blake2b64(ids)
    open_ = np.arange(len(ids))
    for o in range(count - 1, -1, -1):
        if not len(open_):
            return
        obj = object_at(o)
        at = obj.ids.positions([ids[n] for n in open_.tolist()], hashes[open_])
        for n, j in zip(open_[at >= 0].tolist(), at[at >= 0].tolist()):
            yield n, o, obj, j
        open_ = open_[at < 0]


def signature(manifest: Manifest) -> tuple:
    """What identifies a manifest's tail: its namespace and dimensions (an empty WAL looks
    the same in every namespace), then its WAL keys in order."""
    return (manifest.namespace, manifest.config.dimensions, *(w.key for w in manifest.wal))


_SIGNATURE_HEAD = 2  # the items of a signature before the WAL keys


def _batch_bytes(batch: Batch) -> int:
    ops, rows = batch
    return ops.nbytes + rows.vectors.nbytes + 200 * len(rows)


@dataclass
class FoldStats:
    """How this process made the tails it folded (``/healthz`` shows them): beside a writer
    nearly all should be extended; ``from_scratch`` counts the whole folds."""

    extended: int = 0  # from the tail of an earlier version, replaying the objects appended
    past_merge: int = 0  # of those, past a WAL merge of objects already folded
    from_scratch: int = 0


class TailReader:
    """Folded tails, their filter masks and BM25 indexes, for every namespace of a store.

    ``max_bytes`` bounds the tails; decoded WAL objects, masks and BM25 indexes get a
    quarter of it each. Thread-safe; concurrent queries of a new version fold it once
    (single flight).
    """

    def __init__(self, store: ObjectStore, fetch_threads: int, max_bytes: int) -> None:
        self.store = store
        # Its own pool: a fold may run on a thread of the reader's pool, which may be full
        # of callers waiting for that very fold.
        self._pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="wal")
        self._batches = Memo(1 << 20, max_bytes // 4, _batch_bytes)
        self._folded = Memo(1024, max_bytes, lambda tail: tail.nbytes)
        self._masks = Memo(1 << 16, max_bytes // 4, lambda m: m.nbytes)
        self._lexical = Memo(1 << 12, max_bytes // 4, lambda index: index.nbytes)
        self._ops = Memo(1 << 20, max_bytes // 4, lambda ops: ops.nbytes)
        self._heads: dict[str, tuple[int, tuple]] = {}  # ns -> newest (version, signature) folded
        self._lock = threading.Lock()
        self.stats = FoldStats()

    def has(self, manifest: Manifest) -> bool:
        """Folded, or being folded now."""
        return signature(manifest) in self._folded

    def batch(self, ref: WalRef, dims: int) -> Batch:
        """One decoded WAL object."""
        return self._batches.get(ref.key, lambda: wal.decode(self.store.get(ref.key), dims))

    def tail(self, manifest: Manifest) -> Tail:
        """The folded tail of ``manifest``."""
        return self._folded.get(signature(manifest), lambda: self._fold(manifest))

    def _fold(self, manifest: Manifest) -> Tail:
        ns, dims, sig = manifest.namespace, manifest.config.dimensions, signature(manifest)
        with self._lock:
            head = self._heads.get(ns)
        base, done, merged = None, 0, False
        if head is not None and head[1][:_SIGNATURE_HEAD] == sig[:_SIGNATURE_HEAD]:
            folded = head[1][_SIGNATURE_HEAD:]
            found = continues(folded, sig[_SIGNATURE_HEAD:])
            if found is not None:
                base, done, merged = self._folded.peek(head[1]), found, found != len(folded)
        if base is not None:  # the head's WAL (or its merge) starts ours: replay only the rest
            rest = manifest.wal[done:]
            tail = extend(base, self._decode(rest, dims), dims) if rest else base
        else:
            tail = fold(self._decode(manifest.wal, dims), dims)
        with self._lock:
            if base is None:
                self.stats.from_scratch += 1
            else:
                self.stats.extended += 1
                self.stats.past_merge += merged
            head = self._heads.get(ns)
            if head is None or head[0] <= manifest.version:
                self._heads[ns] = (manifest.version, sig)
        return tail

    def last_ops(self, manifest: Manifest, ids: list[str]) -> dict[str, bool]:
        """Of ``ids``, those the tail of ``manifest`` touches: whether the last operation on
        each is an upsert (True) or a delete (False). From the folded tail when this
        process holds it; else from each WAL object's ``id`` and ``op`` columns alone
        (by range, memoised as :class:`ObjectOps`, ~40 bytes and the id an operation),
        newest object first: a delete by id, on an ingest worker that serves no query,
        need not fold the tail (each row's vector, text and attributes in memory)."""
        if not ids:
            return {}
        if self.has(manifest):
            tail = self.tail(manifest)
            return {i: i not in tail.deleted for i in ids if i in tail.touched}
        wal_refs = manifest.wal

        def ops_of(o: int) -> ObjectOps:
            key = wal_refs[o].key
            return self._ops.get(key, lambda: ObjectOps.read(self.store, key))

        return {ids[n]: not ops.deleted[j] for n, _, ops, j in _newest(len(wal_refs), ops_of, ids)}

    def chunk_ids(self, manifest: Manifest, parents: list[str]) -> list[str]:
        """Ids of the rows of the tail of ``manifest`` whose ``doc_id`` is one of
        ``parents`` (the live chunks of those documents in the tail), from each WAL
        object's ``id``, ``op`` and ``attributes`` columns alone (memoised as
        :class:`ObjectChunks`): what a chunked upsert replaces, found on an ingest worker
        without folding the tail. An id counts where its newest operation is an upsert
        with one of ``parents`` as its ``doc_id``; in the order of those operations."""
        import pyarrow.compute as pc

        if not parents or not manifest.wal:
            return []
        keys = [("chunks", ref.key) for ref in manifest.wal]
        objects = self._ops.peek_many(keys)
        missing = [key for key, obj in zip(keys, objects) if obj is None]
        read = dict(zip(missing, self._pool.map(
            lambda key: self._ops.get(key, lambda: ObjectChunks.read(self.store, key[1])), missing)))
        objects = [obj if obj is not None else read[key] for key, obj in zip(keys, objects)]
        wanted = pa.array(parents, pa.string())
        named: dict[str, None] = {}
        for obj in objects:
            rows = np.flatnonzero(pc.is_in(obj.doc_ids, value_set=wanted).to_numpy(zero_copy_only=False))
            named.update(dict.fromkeys(obj.ids.ids.take(pa.array(rows)).to_pylist()))
        ids, wanted_set = list(named), set(parents)
        live = sorted((o, int(obj.at[j]), ids[n]) for n, o, obj, j in _newest(len(objects), objects.__getitem__, ids)
                      if not obj.deleted[j] and obj.doc_ids[j].as_py() in wanted_set)
        return [i for _, _, i in live]  # in the order of their operations

    def _decode(self, refs, dims: int) -> list[Batch]:
        if len(refs) <= 1:
            return [self.batch(ref, dims) for ref in refs]
        return list(self._pool.map(lambda ref: self.batch(ref, dims), refs))

    def filter_mask(self, manifest: Manifest, filt: Filter, filter_key: str) -> np.ndarray:
        """Rows of the tail that match ``filt``: an earlier version's mask of the rows that
        stay, and one DuckDB call over the rows appended since, when an earlier one is held."""
        from vectordb.filter_sql import matching_rows  # DuckDB: imported when a filter first needs it

        tail = self.tail(manifest)

        def make() -> np.ndarray:
            mask, chain = _ancestor(tail, self._masks, lambda t: ("filter", t.serial, filter_key), _MASK_STEPS)
            if mask is None:
                return matching_rows(filt, tail.rows.ids, tail.rows.attributes)
            steps = [t.step for t in chain]
            fresh = matching_rows(
                filt, [i for s in steps for i in s.appended.ids], [a for s in steps for a in s.appended.attributes]
            )
            for step in steps:
                n = len(step.appended)
                kept = mask if step.kept is None else mask[step.kept]
                mask, fresh = np.concatenate([kept, fresh[:n]]), fresh[n:]
            return mask

        return self._masks.get(("filter", tail.serial, filter_key), make)

    def bm25(self, manifest: Manifest) -> TailBM25:
        """BM25 over the tail's rows, extended from an earlier version's when one is held."""
        tail = self.tail(manifest)

        def make() -> TailBM25:
            index, chain = _ancestor(tail, self._lexical, lambda t: t.serial, _BM25_STEPS)
            if index is None:
                return TailBM25.build(tail)
            for later in chain:
                index = index.extended(later)
            return index

        return self._lexical.get(tail.serial, make)


def continues(folded: tuple[str, ...], keys: tuple[str, ...]) -> int | None:
    """How many leading WAL objects of ``keys`` hold exactly the writes of ``folded`` (a
    tail already folded), so that the tail of ``keys`` is that one extended by the rest;
    None if they do not start with them.

    Either ``folded`` is a prefix of ``keys`` (writes were appended), or a merge replaced
    its first objects by one merged object and ``keys`` goes on with the rest of ``folded``.
    """
    n = len(folded)
    if keys[:n] == folded:
        return n
    count = wal.covered_count(keys[0]) if keys else None
    if count is None or count > n or keys[1 : 1 + n - count] != folded[count:]:
        return None
    return 1 + n - count if wal.covers(keys[0], folded[:count]) else None


def _ancestor(tail: Tail, memo: Memo, key_of, max_steps: int) -> tuple[object | None, list[Tail]]:
    """The value ``memo`` holds for the nearest ancestor of ``tail`` (at most ``max_steps``
    back), and the tails after that ancestor up to ``tail``, oldest first; (None, []) if
    there is none."""
    chain = []
    version = tail
    for _ in range(max_steps):
        parent = version.parent
        if parent is None or version.step is None:
            break
        chain.append(version)
        value = memo.peek(key_of(parent))
        if value is not None:
            return value, chain[::-1]
        version = parent
    return None, []
