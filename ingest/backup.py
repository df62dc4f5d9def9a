"""Backup and restore of one namespace version across stores (another bucket, prefix,
directory): ``vectordb backup NS DEST_URI`` and ``vectordb restore SRC_URI NS``.

A backup copies exactly the objects one version needs (its WAL objects, segment files and
tombstone lists, wherever they live: a branch's borrowed segments included) into the
destination store under a namespace of its own, then commits that namespace's first
version there, listing the copies. So a backup is itself a namespace: a server pointed at
the destination store answers from it, and a restore is the same copy in the other
direction, under a new name.

* **Only what the version needs**: not other versions, not garbage.
* **Resumable**: objects keep their names (made unique when they were written), so a run
  that stops half-way and is started again skips every object already copied whole (same
  size); the destination version is committed last, so a half-made copy is never visible.
* **Consistent**: the source version is protected (``vectordb.versions``) while it is
  copied, so garbage collection cannot delete what is being read.
* **Progress**: ``progress(copied_objects, total_objects, copied_bytes, total_bytes)`` after
  each object.

The destination name must be new (never used in that store): a copy never merges into,
or replaces, a namespace there.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from storage.base import ObjectStore
from storage.errors import ObjectNotFound, PreconditionFailed
from vectordb import keys, segment, versions
from vectordb.catalog import Catalog
from vectordb.errors import AlreadyExists, VersionNotRetained
from vectordb.manifest import Manifest, SegmentRef, WalRef

Progress = Callable[[int, int, int, int], None]


@dataclass(frozen=True)
class CopyResult:
    namespace: str  # in the destination store
    version: int  # the source version copied
    objects: int  # objects the version needs
    copied: int  # of which this run copied (the others were there already)
    bytes: int  # bytes the version needs
    bytes_copied: int


def copy_version(
    source: Catalog,
    ns: str,
    dest: Catalog,
    dest_ns: str,
    as_of: versions.AsOf | None = None,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy version ``as_of`` (default: the newest) of ``ns`` from ``source``'s store into
    ``dest``'s store as namespace ``dest_ns`` (see the module docstring). Raises
    AlreadyExists if ``dest_ns`` is taken there (unless it is this very copy, finished)."""
    existing = dest.newest(dest_ns)
    copy, still = versions.source_of(source, ns, source.latest(ns).version if as_of is None else as_of)
    if existing is not None:
        done = existing.origin or {}
        if existing.version == 0 and (done.get("namespace"), done.get("store")) == (ns, source.store.uri) and (
            as_of is None or done.get("version") == copy.version
        ):  # this copy was made already (a command run again): nothing to do
            return CopyResult(dest_ns, done["version"], 0, 0, 0, 0)
        raise AlreadyExists(f"namespace {dest_ns!r} exists in {dest.store.uri}; copy into a new name")
    guard = versions.protect(source, ns, f".copy-{uuid.uuid4().hex[:12]}", copy,
                              source.clock() + versions.PROTECTION_S, {"op": "protect", "for": "copy",
                                                                         "version": copy.version})
    try:
        if not still():
            raise VersionNotRetained(versions.not_retained(source, ns, f"version {copy.version}"))
        sizes = _sizes(source.store, copy)
        total_bytes = sum(sizes.values())
        done = copied = done_bytes = copied_bytes = 0
        for key, size in sizes.items():
            target = _renamed(key, dest_ns)
            present = dest.store.head(target)
            if present is None or present.size != size:
                dest.store.put(target, source.store.get(key))
                copied += 1
                copied_bytes += size
            done += 1
            done_bytes += size
            if progress is not None:
                progress(done, len(sizes), done_bytes, total_bytes)
        first = Manifest(
            namespace=dest_ns,
            version=0,
            config=copy.config,
            segments=tuple(_own_segment(dest_ns, seg) for seg in copy.segments),
            wal=tuple(WalRef(_renamed(w.key, dest_ns), w.version, w.upserts, w.deletes, w.bytes) for w in copy.wal),
            origin=_origin(source, ns, copy),
            change={"op": "copy", "namespace": ns, "version": copy.version},
        )
        try:
            dest.commit(first)
        except PreconditionFailed:
            raise AlreadyExists(f"namespace {dest_ns!r} was created in {dest.store.uri} meanwhile") from None
        return CopyResult(dest_ns, copy.version, len(sizes), copied, total_bytes, copied_bytes)
    finally:
        versions.unprotect(source, ns, guard)


def _origin(source: Catalog, ns: str, copy: Manifest) -> dict:
    return {"namespace": ns, "version": copy.version, "store": source.store.uri, "incarnation": copy.incarnation}


def _sizes(store: ObjectStore, manifest: Manifest) -> dict[str, int]:
    """Every object ``manifest`` needs that exists, with its size (a segment's file list
    may name files an older segment format does not have)."""
    out: dict[str, int] = {}
    for key in sorted(manifest.referenced_keys(lambda seg: segment.file_keys(manifest.namespace, seg.id))):
        if key.split("/")[1] == "tags":
            continue  # a tag's copy of another version: a copy is of one version, not of its tags
        info = store.head(key)
        if info is None:
            if "/wal/" in key or key.endswith("/ivf.bin"):
                raise ObjectNotFound(f"{key} is missing: the version cannot be copied")
            continue
        out[key] = info.size
    return out


def _renamed(key: str, dest_ns: str) -> str:
    """The key of an object's copy in ``dest_ns``: same name, the namespace's own prefix,
    borrowed segments' files under their plain id."""
    _, _, rest = key.partition("/")
    kind, _, rest = rest.partition("/")
    if kind == "segments":
        segment_id, _, name = rest.partition("/")
        return f"{dest_ns}/segments/{segment_id.rpartition(keys.HOME_SEP)[2]}/{name}"
    return f"{dest_ns}/{kind}/{rest}"


def _own_segment(dest_ns: str, seg: SegmentRef) -> SegmentRef:
    own_id = seg.id.rpartition(keys.HOME_SEP)[2]
    tombstones = _renamed(seg.tombstones_key, dest_ns) if seg.tombstones_key else None
    return SegmentRef(own_id, seg.rows, seg.nlist, seg.bytes, tombstones, seg.tombstones)
