"""Manifests: the immutable, versioned description of a namespace.

Version ``v`` of namespace ``ns`` is the object ``ns/manifests/<v>.json``. It names
every object a reader needs: the indexed segments (with their tombstone lists) and the
unindexed write-ahead-log tail, in commit order. A commit is the conditional create of
version ``v+1``; whoever loses the race re-reads and rebases (see ``ingest.commit``).

Garbage collection does not delete an old version's key: it overwrites the object with a
small *stub* (:class:`Pruned`), so the version number stays taken and a lagging writer's
conditional create of it fails instead of committing that number a second time (see
``vectordb.catalog`` for when stubs themselves go).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

from vectordb.namespace import NamespaceConfig


@dataclass(frozen=True)
class WalRef:
    """One group-committed write batch that is not yet in a segment."""

    key: str
    version: int  # the manifest version that committed it
    upserts: int
    deletes: int
    bytes: int

    def to_json(self) -> dict:
        return self.__dict__.copy()

    @classmethod
    def from_json(cls, d: dict) -> WalRef:
        return cls(**d)


@dataclass(frozen=True)
class SegmentRef:
    """An immutable indexed segment and the ids deleted from it since it was built."""

    id: str
    rows: int  # rows stored in the segment
    nlist: int
    bytes: int
    tombstones_key: str | None = None
    tombstones: int = 0  # how many of its rows are dead

    @property
    def live_rows(self) -> int:
        return self.rows - self.tombstones

    def to_json(self) -> dict:
        return self.__dict__.copy()

    @classmethod
    def from_json(cls, d: dict) -> SegmentRef:
        return cls(**d)


@dataclass(frozen=True)
class TagRef:
    """A named version, kept whatever garbage collection does: ``key`` is an object that
    holds a copy of that version's manifest, and everything the copy references is kept
    while the tag is in the newest manifest. A *protection* is a tag with an expiry
    (``expires_at``), held while a restore or a branch copies a version; its name starts
    with ``.``, which no user tag may."""

    name: str
    version: int
    key: str
    created_at: float
    expires_at: float | None = None

    def to_json(self) -> dict:
        return self.__dict__.copy()

    @classmethod
    def from_json(cls, d: dict) -> TagRef:
        return cls(**d)


# A full manifest is always larger than this and a stub always smaller (a test checks
# both), so a listing tells them apart by size without reading them.
STUB_MAX_BYTES = 200


@dataclass(frozen=True)
class Pruned:
    """What garbage collection leaves of an old version: the number, still taken."""

    namespace: str
    version: int

    def to_bytes(self) -> bytes:
        doc = {"format": 1, "namespace": self.namespace, "version": self.version, "pruned": True}
        return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Manifest:
    namespace: str
    version: int
    config: NamespaceConfig
    segments: tuple[SegmentRef, ...] = ()
    wal: tuple[WalRef, ...] = ()
    deleted: bool = False  # the namespace was dropped at this version
    created_at: float = field(default_factory=time.time)
    # The version that (re)created the namespace: a write validated against one
    # incarnation never commits into the next one (see ingest.commit).
    incarnation: int = 0
    # Highest fence of a garbage collection so far: it may delete unreferenced objects
    # whose key version is at or below it, so a commit must not reference such an object
    # unless a manifest at or above the fence already does (see ingest.gc).
    gc_fence: int = 0
    tags: tuple[TagRef, ...] = ()  # sorted by name
    # Namespaces (branches) that may reference this namespace's objects: its garbage
    # collection keeps what their readable versions and tags reference.
    forks: tuple[str, ...] = ()
    # A branch's source: {"namespace", "version"} it was created from.
    origin: dict | None = None
    # What this commit did, for the history: {"op": upsert|delete|write|index|compact|gc|
    # create|drop|tag|untag|restore|branch, and counts or names where they apply}.
    change: dict | None = None

    @property
    def unindexed_rows(self) -> int:
        return sum(w.upserts + w.deletes for w in self.wal)

    @property
    def indexed_rows(self) -> int:
        return sum(s.live_rows for s in self.segments)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments) + sum(w.bytes for w in self.wal)

    def referenced_keys(self, segment_files) -> set[str]:
        """Every object this version needs (its tags' objects included, not what their
        copies reference); ``segment_files(ref)`` lists a segment's files."""
        keys = {w.key for w in self.wal}
        for seg in self.segments:
            keys.update(segment_files(seg))
            if seg.tombstones_key:
                keys.add(seg.tombstones_key)
        keys.update(t.key for t in self.tags)
        return keys

    def tag(self, name: str) -> TagRef | None:
        return next((t for t in self.tags if t.name == name), None)

    def with_tags(self, add: tuple[TagRef, ...] = (), remove: tuple[str, ...] = ()) -> tuple[TagRef, ...]:
        """This version's tags, ``remove`` taken out and ``add`` put in (replacing by name)."""
        gone = set(remove) | {t.name for t in add}
        return tuple(sorted((*(t for t in self.tags if t.name not in gone), *add), key=lambda t: t.name))

    def next(self, **changes) -> Manifest:
        """The following version with ``changes`` applied (``change``, what it did, is
        never inherited)."""
        changes.setdefault("change", None)
        return replace(self, version=self.version + 1, created_at=time.time(), **changes)

    def to_bytes(self) -> bytes:
        doc = {
            "format": 1,
            "namespace": self.namespace,
            "version": self.version,
            "config": self.config.to_json(),
            "segments": [s.to_json() for s in self.segments],
            "wal": [w.to_json() for w in self.wal],
            "deleted": self.deleted,
            "created_at": self.created_at,
            "incarnation": self.incarnation,
            "gc_fence": self.gc_fence,
        }
        if self.tags:
            doc["tags"] = [t.to_json() for t in self.tags]
        if self.forks:
            doc["forks"] = list(self.forks)
        if self.origin is not None:
            doc["origin"] = self.origin
        if self.change is not None:
            doc["change"] = self.change
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """A full manifest. Raises ValueError for a stub (use :func:`decode`)."""
        version = decode(data)
        if isinstance(version, Pruned):
            raise ValueError(f"version {version.version} of {version.namespace!r} was pruned")
        return version

    @classmethod
    def _from_doc(cls, doc: dict) -> Manifest:
        return cls(
            namespace=doc["namespace"],
            version=int(doc["version"]),
            config=NamespaceConfig.from_json(doc["config"]),
            segments=tuple(SegmentRef.from_json(s) for s in doc["segments"]),
            wal=tuple(WalRef.from_json(w) for w in doc["wal"]),
            deleted=bool(doc.get("deleted", False)),
            created_at=float(doc.get("created_at", 0.0)),
            incarnation=int(doc.get("incarnation", 0)),
            gc_fence=int(doc.get("gc_fence", 0)),
            tags=tuple(TagRef.from_json(t) for t in doc.get("tags", ())),
            forks=tuple(doc.get("forks", ())),
            origin=doc.get("origin"),
            change=doc.get("change"),
        )


def decode(data: bytes) -> Manifest | Pruned:
    """A version object as stored: a full manifest, or the stub of a pruned one."""
    doc = json.loads(data)
    if doc.get("pruned"):
        return Pruned(doc["namespace"], int(doc["version"]))
    return Manifest._from_doc(doc)
