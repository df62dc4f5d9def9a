"""Garbage collection: delete what no retained version needs, without racing writers.

Kept in full: the newest ``retain`` versions and any younger than ``grace_s`` (a reader
may be using them). Older versions are *pruned*: their manifest is overwritten by a stub,
so the version number stays taken (see ``vectordb.catalog``); stubs older than
``pruned_ttl_s`` are deleted. WAL, segment and tombstone objects that no kept version
references are deleted, but only those at or below the collector's *fence*:

A writer uploads its WAL object (an indexer its segment) before the manifest that will
reference it, so a listing cannot tell an abandoned object from one on its way to a
commit. The collector therefore first commits a version that records ``gc_fence = F``
(its own version), then deletes only unreferenced objects whose key version (the version
their writer meant to commit at, part of the key) is at most F. A writer whose object has
a key version at or below the fence of the version it is about to commit on writes the
object again under a fresh key first (``ingest.commit``, ``ingest.indexer``). Every
commit after F sees F's fence, so every object a version after F references is either
referenced by F itself (and kept) or newer than F (and spared): nothing acknowledged can
lose its data, whatever ``grace_s`` is, even 0.

A dropped namespace is collected the same way with nothing kept: its dropped version is
the fence, so a re-creation racing the collection keeps everything it writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from storage.base import ObjectInfo, ObjectStore
from storage.errors import PreconditionFailed
from vectordb import keys, segment
from vectordb.catalog import Catalog
from vectordb.errors import Conflict, NamespaceNotFound
from vectordb.manifest import STUB_MAX_BYTES, Manifest, Pruned


@dataclass(frozen=True)
class GcResult:
    manifests_pruned: int  # full manifests replaced by stubs
    manifests_deleted: int  # expired stubs removed
    objects_deleted: int  # WAL, segment and tombstone objects
    bytes_deleted: int
    fence: int | None  # the fence version the deletions were made under (None: nothing to delete)


def collect(
    catalog: Catalog,
    store: ObjectStore,
    ns: str,
    retain: int,
    grace_s: float,
    pruned_ttl_s: float | None = None,
    retries: int = 50,
) -> GcResult:
    """Collect ``ns`` (live or dropped). Raises NamespaceNotFound if it never existed."""
    clock: Callable[[], float] = catalog.clock
    pruned_ttl_s = catalog.pruned_ttl_s if pruned_ttl_s is None else pruned_ttl_s
    newest = catalog.newest(ns)
    if newest is None:
        raise NamespaceNotFound(f"namespace {ns!r} does not exist")
    now = clock()
    listed = sorted(store.list(keys.manifests_prefix(ns)), key=lambda i: keys.version_of_manifest_key(i.key))
    full = [i for i in listed if i.size > STUB_MAX_BYTES]
    stubs = [i for i in listed if i.size <= STUB_MAX_BYTES]
    kept = _kept_versions(full, newest, retain, grace_s, now)

    referenced: set[str] = set()
    for version in kept:
        found = catalog.read_version(ns, version)
        if isinstance(found, Manifest):
            referenced |= _references(found)
    garbage = [
        info
        for prefix in (f"{ns}/wal/", f"{ns}/segments/")
        for info in store.list(prefix)
        if info.key not in referenced
    ]

    fence_version = None
    objects = bytes_ = 0
    if garbage:
        fence = _fence(catalog, newest, retries)
        fence_version = fence.version
        # Versions committed since the listing are summed up in the fence's own content.
        referenced |= _references(fence)
        for info in garbage:
            if info.key not in referenced and keys.key_version(ns, info.key) <= fence.gc_fence:
                store.delete(info.key)
                objects += 1
                bytes_ += info.size

    # Manifests last: until their data is gone they still describe something real.
    pruned = 0
    for info in full:
        version = keys.version_of_manifest_key(info.key)
        if version not in kept and version < newest.version:
            _prune(store, info.key, ns, version)
            pruned += 1
            bytes_ += info.size
    expired = 0
    for info in stubs:
        if now - info.last_modified >= pruned_ttl_s and keys.version_of_manifest_key(info.key) < newest.version:
            store.delete(info.key)
            expired += 1
    return GcResult(pruned, expired, objects, bytes_, fence_version)


def _prune(store: ObjectStore, key: str, ns: str, version: int) -> None:
    """Overwrite a version's manifest with its stub: the data goes, the number stays taken."""
    store.put(key, Pruned(ns, version).to_bytes())


def _kept_versions(full: list[ObjectInfo], newest: Manifest, retain: int, grace_s: float, now: float) -> set[int]:
    if newest.deleted:  # nothing of a dropped namespace is readable
        return {newest.version}
    keep_from = max(0, len(full) - max(1, retain))
    kept = {newest.version}
    for n, info in enumerate(full):
        version = keys.version_of_manifest_key(info.key)
        if n >= keep_from or now - info.last_modified < grace_s or version >= newest.version:
            kept.add(version)
    return kept


def _references(manifest: Manifest) -> set[str]:
    if manifest.deleted:
        return set()
    return manifest.referenced_keys(lambda seg: segment.file_keys(manifest.namespace, seg.id))


def _fence(catalog: Catalog, newest: Manifest, retries: int) -> Manifest:
    """A committed version whose ``gc_fence`` is its own version: the newest one if it is
    one already (a dropped version, or nothing committed since the last collection), else
    a new commit of the newest content with the fence raised."""
    current = newest
    for _ in range(retries):
        if current.gc_fence >= current.version:
            return current
        try:
            return catalog.commit(current.next(gc_fence=current.version + 1))
        except PreconditionFailed:
            time.sleep(0.001)
            current = catalog.newest(newest.namespace)
            if current is None:  # cannot happen: versions are never all removed
                raise NamespaceNotFound(f"namespace {newest.namespace!r} does not exist") from None
    raise Conflict(f"garbage collection of {newest.namespace!r} kept conflicting with writers")
