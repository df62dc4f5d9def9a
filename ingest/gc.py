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

Also kept: what the copies held by tags reference (``vectordb.versions``), and what the
readable versions and tags of the namespace's branches (``forks``) reference under its
prefix. Expired protections (tags a crashed restore or branch left) are removed by the
fence commit.

The order is prune, then fence, then delete. A restore, tag or branch that takes a new
reference to an old version first commits a tag for it, then checks the version is still
readable: if it is, whichever collection prunes it does so after that check, and fences
(and reads the tags) after that, so the new reference is seen before anything it needs
is deleted.

A dropped namespace is collected the same way with nothing kept (but what its branches
use): its dropped version is the fence, so a re-creation racing the collection keeps
everything it writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from storage.base import ObjectInfo, ObjectStore
from storage.errors import ObjectNotFound, PreconditionFailed
from vectordb import keys, segment, versions
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
    # What was kept, and why (each object counted under the first reason that holds):
    versions_kept: int = 0  # readable versions after the collection
    versions_kept_by_retention: int = 0  # the newest ``retain`` (and the newest of all)
    versions_kept_by_grace: int = 0  # older than those, but younger than ``grace_s``
    objects_kept: int = 0  # WAL, segment and tag objects left
    objects_kept_for_versions: int = 0  # a readable version references them
    objects_kept_for_tags: int = 0  # only a tag's copy of a pruned version does
    objects_kept_for_branches: int = 0  # only a readable version or tag of a branch (fork) does
    objects_kept_by_fence: int = 0  # referenced by nothing, but newer than the fence: a write in flight may commit them


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
    by_retention = _kept_versions(full, newest, retain, 0.0, now)

    # Prune first: a restore, tag or branch that protects an old version and then finds it
    # still readable is sure that any collection deleting its objects fences after it.
    pruned = bytes_ = 0
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

    own: set[str] = set()  # what the kept versions reference
    tagged: set[str] = set()  # what the copies held by their tags reference
    for version in kept:
        found = catalog.read_version(ns, version)
        if isinstance(found, Manifest):
            own |= _own_references(found)
            tagged |= _tag_references(store, found)
    forked = _fork_references(catalog, store, ns, newest.forks)
    listed_objects = [
        info for prefix in (f"{ns}/wal/", f"{ns}/segments/", f"{ns}/tags/") for info in store.list(prefix)
    ]
    garbage = [info for info in listed_objects if info.key not in own | tagged | forked]

    fence_version = None
    objects = spared = 0
    if garbage or versions.expired_protections(newest, now):
        fence = _fence(catalog, newest, retries)
        fence_version = fence.version
        # Versions committed since the listing are summed up in the fence's own content.
        own |= _own_references(fence)
        tagged |= _tag_references(store, fence)
        forked |= _fork_references(catalog, store, ns, fence.forks)
        referenced = own | tagged | forked
        for info in garbage:
            if info.key in referenced:
                continue
            if keys.key_version(ns, info.key) <= fence.gc_fence:
                store.delete(info.key)
                objects += 1
                bytes_ += info.size
            else:
                spared += 1
    if newest.deleted:
        # A dropped namespace's copies of its centroids (vectordb.layout_hint): no live
        # version names those segments. A re-creation racing this loses only its own copy,
        # which its cold workers do without until its next build.
        store.delete(keys.layout_hint_key(ns))
    left = [info.key for info in listed_objects if info.key in own | tagged | forked]
    for_versions = sum(key in own for key in left)
    for_tags = sum(key in tagged and key not in own for key in left)
    return GcResult(
        pruned, expired, objects, bytes_, fence_version,
        versions_kept=len(kept),
        versions_kept_by_retention=len(by_retention),
        versions_kept_by_grace=len(kept - by_retention),
        objects_kept=len(left) + spared,
        objects_kept_for_versions=for_versions,
        objects_kept_for_tags=for_tags,
        objects_kept_for_branches=len(left) - for_versions - for_tags,
        objects_kept_by_fence=spared,
    )


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


def _references(store: ObjectStore, manifest: Manifest) -> set[str]:
    """What ``manifest`` needs, with what the copies in its tags need."""
    return _own_references(manifest) | _tag_references(store, manifest)


def _own_references(manifest: Manifest) -> set[str]:
    """What ``manifest`` needs (its tags' objects included, not what their copies need)."""
    if manifest.deleted:
        return set()
    return manifest.referenced_keys(lambda seg: segment.file_keys(manifest.namespace, seg.id))


def _tag_references(store: ObjectStore, manifest: Manifest) -> set[str]:
    """What the copies held by ``manifest``'s tags need."""
    found: set[str] = set()
    if manifest.deleted:
        return found
    for tag in manifest.tags:
        try:
            copy = Manifest.from_bytes(store.get(tag.key))
        except ObjectNotFound:  # a tag whose object a crash left unwritten protects nothing
            continue
        found |= copy.referenced_keys(lambda seg, c=copy: segment.file_keys(c.namespace, seg.id))
    return found


def _fork_references(catalog: Catalog, store: ObjectStore, ns: str, forks: tuple[str, ...]) -> set[str]:
    """The objects of ``ns`` that a readable version (or a tag) of one of its branches needs."""
    found: set[str] = set()
    for fork in forks:
        for info in store.list(keys.manifests_prefix(fork)):
            if info.size <= STUB_MAX_BYTES:
                continue
            version = catalog.read_version(fork, keys.version_of_manifest_key(info.key))
            if isinstance(version, Manifest):
                found |= {k for k in _references(store, version) if keys.namespace_of(k) == ns}
    return found


def _fence(catalog: Catalog, newest: Manifest, retries: int) -> Manifest:
    """A committed version whose ``gc_fence`` is its own version: the newest one if it is
    one already (a dropped version, or nothing committed since the last collection) and
    holds no expired protection, else a new commit of the newest content with the fence
    raised and expired protections removed."""
    current = newest
    for _ in range(retries):
        stale = versions.expired_protections(current, catalog.clock())
        if current.gc_fence >= current.version and not stale:
            return current
        try:
            return catalog.commit(
                current.next(gc_fence=current.version + 1, tags=current.with_tags(remove=stale), change={"op": "gc"})
            )
        except PreconditionFailed:
            time.sleep(0.001)
            current = catalog.newest(newest.namespace)
            if current is None:  # cannot happen: versions are never all removed
                raise NamespaceNotFound(f"namespace {newest.namespace!r} does not exist") from None
    raise Conflict(f"garbage collection of {newest.namespace!r} kept conflicting with writers")
