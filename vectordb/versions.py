"""Versions as features: read the past, list the history, tag, restore, branch.

Every commit is an immutable manifest; garbage collection keeps the newest few readable and
prunes older ones to stubs (``ingest.gc``). This module turns them into what users ask for:

* :func:`resolve` — ``as_of`` (a version number, a tag, or a time) to the manifest to read;
* :func:`history` — versions with their time and what each committed;
* :func:`tag` / :func:`untag` — a name for a version, kept whatever the retention: the tag's
  own object holds a copy of the version's manifest, and garbage collection keeps what the
  copy references while the tag is in the newest manifest;
* :func:`restore` — a new commit with an old version's content (the history is kept);
* :func:`branch` — a new namespace whose first version references another's objects: no
  data is copied; segments are *borrowed* (``keys.borrowed_segment_id``) and the source
  records the branch in ``forks``, so its collection keeps what the branch references.
  Writes, indexing and compaction of either never touch the other's objects.

**A new reference to an old version is the race to guard.** Garbage collection may be
pruning that version and deleting what only it references. So each operation first
*protects* the version: it commits a tag (the user's, or a protection: a tag with an expiry
and a name starting with ``.``) holding a copy of the manifest, and only then checks that the
version is still readable (for a tag: that the tag is still there). Collection prunes before
it fences and fences before it deletes, so if the version was readable after the tag was
committed, every collection that could delete its objects fences after the tag and keeps
them; if it was not, the operation is undone and refused with ``version_not_retained``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from storage.errors import ObjectNotFound, PreconditionFailed
from vectordb import keys
from vectordb.catalog import Catalog, get_fresh
from vectordb.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NamespaceNotFound,
    VersionNotFound,
    VersionNotRetained,
)
from vectordb.manifest import STUB_MAX_BYTES, Manifest, SegmentRef, TagRef, decode

# How long a protection lasts: a restore or a branch takes seconds; one that crashed leaves
# its protection behind, and garbage collection removes it after this.
PROTECTION_S = 3600.0
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
_RETRIES = 50

AsOf = int | float | str


def check_tag_name(name: str) -> str:
    if not isinstance(name, str) or not _TAG_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid tag name {str(name)[:80]!r}: 1-63 ASCII letters, digits, '_', '-' or '.', starting with a letter"
        )
    return name


# --- reading the past ----------------------------------------------------------------------
def resolve(catalog: Catalog, ns: str, as_of: AsOf) -> Manifest:
    """The manifest ``as_of`` names: an ``int`` version, a ``str`` tag name or ISO-8601 time,
    or a ``float`` time (Unix seconds: the newest version committed at or before it).

    Raises VersionNotFound (never existed, a tag that is not there, a time before the
    namespace) or VersionNotRetained (pruned; the message names the oldest readable one).
    """
    return source_of(catalog, ns, as_of)[0]


def source_of(catalog: Catalog, ns: str, as_of: AsOf) -> tuple[Manifest, Callable[[], bool]]:
    """The manifest ``as_of`` names, and a check, run after protecting it, that it is still
    protected by what named it (the version still readable; the tag still there)."""
    if isinstance(as_of, bool):
        raise InvalidArgument("as_of is a version number, a tag name or a time")
    if isinstance(as_of, int):
        return _version(catalog, ns, as_of)
    if isinstance(as_of, str):
        when = _parse_time(as_of)
        if when is None:
            return _tagged(catalog, ns, as_of)
        as_of = when
    if isinstance(as_of, float):
        return _version(catalog, ns, _at_time(catalog, ns, as_of))
    raise InvalidArgument("as_of is a version number, a tag name or a time")


def _version(catalog: Catalog, ns: str, version: int) -> tuple[Manifest, Callable[[], bool]]:
    newest = catalog.latest(ns)
    if version < 0 or version > newest.version:
        raise VersionNotFound(f"{ns!r} has no version {version} (the newest is {newest.version})")
    found = catalog.read_version(ns, version)
    if not isinstance(found, Manifest) or found.deleted or found.incarnation != newest.incarnation:
        raise VersionNotRetained(not_retained(catalog, ns, f"version {version}"))

    def still_readable() -> bool:
        try:
            return isinstance(decode(get_fresh(catalog.store, keys.manifest_key(ns, version))), Manifest)
        except ObjectNotFound:
            return False

    return found, still_readable


def _tagged(catalog: Catalog, ns: str, name: str) -> tuple[Manifest, Callable[[], bool]]:
    check_tag_name(name)
    ref = catalog.latest(ns).tag(name)
    if ref is None:
        raise VersionNotFound(f"{ns!r} has no tag {name!r}")
    copy = Manifest.from_bytes(catalog.store.get(ref.key))

    def still_tagged() -> bool:
        current = catalog.latest(ns)  # strong: checks for a newer version
        return current.tag(name) == ref

    return copy, still_tagged


def _at_time(catalog: Catalog, ns: str, when: float) -> int:
    """The newest version of the current incarnation committed at or before ``when``."""
    newest = catalog.latest(ns)
    if when >= newest.created_at:
        return newest.version
    readable = [v for v in _full_versions(catalog, ns) if v >= newest.incarnation]
    lo, hi, best = 0, len(readable) - 1, None
    while lo <= hi:  # created_at grows with the version: binary search
        mid = (lo + hi) // 2
        found = catalog.read_version(ns, readable[mid])
        if isinstance(found, Manifest) and found.created_at <= when:
            best, lo = readable[mid], mid + 1
        else:
            hi = mid - 1
    if best is not None:
        return best
    if readable and readable[0] > newest.incarnation:
        raise VersionNotRetained(not_retained(catalog, ns, f"the version of {_iso(when)}"))
    raise VersionNotFound(f"{ns!r} did not exist at {_iso(when)}")


def _full_versions(catalog: Catalog, ns: str) -> list[int]:
    return [
        keys.version_of_manifest_key(info.key)
        for info in catalog.store.list(keys.manifests_prefix(ns))
        if info.size > STUB_MAX_BYTES
    ]


def not_retained(catalog: Catalog, ns: str, what: str) -> str:
    newest = catalog.latest(ns)
    readable = [v for v in _full_versions(catalog, ns) if v >= newest.incarnation]
    tags = ", ".join(t.name for t in newest.tags if not t.name.startswith(".")) or "none"
    oldest = readable[0] if readable else newest.version
    return (
        f"{what} of {ns!r} is no longer retained (garbage collection pruned it); the oldest readable "
        f"version is {oldest}; tagged versions stay readable (tags: {tags})"
    )


def _parse_time(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        raise InvalidArgument(f"as_of time {text!r} needs a time zone (e.g. 'Z' or '+00:00')")
    return parsed.timestamp()


def _iso(when: float) -> str:
    try:
        return datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):  # outside datetime's years 1..9999 (an as_of of 1e17)
        return f"unix time {when:g}"


# --- the history ----------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: float | None  # None once pruned
    change: dict | None  # what the commit did (None before this was recorded, or pruned)
    readable: bool
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "change": self.change,
            "readable": self.readable,
            "tags": list(self.tags),
        }


def history(catalog: Catalog, ns: str, limit: int = 100, before: int | None = None) -> list[VersionInfo]:
    """The newest ``limit`` versions below ``before`` (all, if None), newest first."""
    if not 1 <= limit <= 1000:
        raise InvalidArgument("limit must be between 1 and 1000")
    newest = catalog.latest(ns)
    tagged: dict[int, list[str]] = {}
    for t in newest.tags:
        if not t.name.startswith("."):
            tagged.setdefault(t.version, []).append(t.name)
    infos = [
        info for info in catalog.store.list(keys.manifests_prefix(ns))
        if before is None or keys.version_of_manifest_key(info.key) < before
    ][-limit:]
    out = []
    for info in reversed(infos):
        version = keys.version_of_manifest_key(info.key)
        found = catalog.read_version(ns, version) if info.size > STUB_MAX_BYTES else None
        if isinstance(found, Manifest):
            out.append(VersionInfo(version, found.created_at, found.change, not found.deleted, tuple(tagged.get(version, ()))))
        else:
            out.append(VersionInfo(version, None, None, False, tuple(tagged.get(version, ()))))
    return out


# --- tags ---------------------------------------------------------------------------------
def tag(catalog: Catalog, ns: str, name: str, as_of: AsOf) -> TagRef:
    """Name the version ``as_of`` names; garbage collection keeps it until :func:`untag`."""
    check_tag_name(name)
    copy, still = source_of(catalog, ns, as_of)
    # Under a protection's name first: a tag ``name`` that exists stays as it is until the
    # new one is sure to hold (if the version was pruned meanwhile, nothing changed).
    guard = protect(catalog, ns, f".tag-{uuid.uuid4().hex[:12]}", copy, catalog.clock() + PROTECTION_S,
                    {"op": "protect", "for": "tag", "name": name, "version": copy.version})
    if not still():
        unprotect(catalog, ns, guard)
        raise VersionNotRetained(not_retained(catalog, ns, f"version {copy.version}"))
    ref = TagRef(name, copy.version, guard.key, catalog.clock())
    for _ in range(_RETRIES):
        base = catalog.latest(ns)
        if base.tag(guard.name) != guard:
            raise Conflict(f"tagging {ns!r} took longer than its protection lasts; nothing was changed, try again")
        try:
            catalog.commit(base.next(tags=base.with_tags(add=(ref,), remove=(guard.name,)),
                                     change={"op": "tag", "name": name, "version": copy.version}))
            return ref
        except PreconditionFailed:
            continue
    raise Conflict(f"tagging {ns!r} kept conflicting with other writers")


def untag(catalog: Catalog, ns: str, name: str) -> Manifest:
    check_tag_name(name)
    for _ in range(_RETRIES):
        base = catalog.latest(ns)
        if base.tag(name) is None:
            raise VersionNotFound(f"{ns!r} has no tag {name!r}")
        try:
            return catalog.commit(base.next(tags=base.with_tags(remove=(name,)), change={"op": "untag", "name": name}))
        except PreconditionFailed:
            continue
    raise Conflict(f"removing tag {name!r} of {ns!r} kept conflicting with other writers")


def protect(catalog: Catalog, ns: str, name: str, copy: Manifest, expires_at: float | None, change: dict,
             more: Callable[[Manifest], dict] | None = None) -> TagRef:
    """Commit tag ``name`` for ``copy`` (its object first, written again under a fresh key if
    a collection fenced past it, as WAL objects are: see ingest.gc)."""
    store = catalog.store
    data = copy.to_bytes()
    base = catalog.latest(ns)
    key_version = base.version + 1
    key = keys.tag_key(ns, key_version, uuid.uuid4().hex)
    store.put(key, data)
    for _ in range(_RETRIES):
        if base.gc_fence >= key_version:
            old, key_version = key, base.version + 1
            key = keys.tag_key(ns, key_version, uuid.uuid4().hex)
            store.put(key, data)
            store.delete(old)
        ref = TagRef(name, copy.version, key, catalog.clock(), expires_at)
        extra = more(base) if more is not None else {}
        try:
            catalog.commit(base.next(tags=base.with_tags(add=(ref,)), change=change, **extra))
            return ref
        except PreconditionFailed:
            base = catalog.latest(ns)
    raise Conflict(f"tagging {ns!r} kept conflicting with other writers")


def unprotect(catalog: Catalog, ns: str, ref: TagRef) -> None:
    """Take tag ``ref`` out again (if it is still that tag)."""
    for _ in range(_RETRIES):
        try:
            base = catalog.latest(ns)
        except NamespaceNotFound:
            return
        if base.tag(ref.name) != ref:
            return
        try:
            catalog.commit(base.next(tags=base.with_tags(remove=(ref.name,)), change={"op": "untag", "name": ref.name}))
            return
        except PreconditionFailed:
            continue


# --- restore ------------------------------------------------------------------------------
def restore(catalog: Catalog, ns: str, as_of: AsOf) -> Manifest:
    """Commit a new version of ``ns`` with the content of the version ``as_of`` names."""
    copy, still = source_of(catalog, ns, as_of)
    if copy.incarnation != catalog.latest(ns).incarnation:
        raise InvalidArgument(f"version {copy.version} belongs to an earlier incarnation of {ns!r} (it was dropped since)")
    guard = protect(catalog, ns, f".restore-{uuid.uuid4().hex[:12]}", copy, catalog.clock() + PROTECTION_S,
                     {"op": "protect", "for": "restore", "version": copy.version})
    if not still():
        unprotect(catalog, ns, guard)
        raise VersionNotRetained(not_retained(catalog, ns, f"version {copy.version}"))
    for _ in range(_RETRIES):
        base = catalog.latest(ns)
        if base.tag(guard.name) != guard:
            raise Conflict(f"restoring {ns!r} took longer than its protection lasts; nothing was changed, try again")
        restored = base.next(
            segments=copy.segments, wal=copy.wal, tags=base.with_tags(remove=(guard.name,)),
            change={"op": "restore", "version": copy.version},
        )
        try:
            return catalog.commit(restored)
        except PreconditionFailed:
            continue
    raise Conflict(f"restoring {ns!r} kept conflicting with other writers")


# --- branches -----------------------------------------------------------------------------
def branch(catalog: Catalog, target: str, source: str, as_of: AsOf | None = None) -> Manifest:
    """Create namespace ``target`` from ``source`` as of ``as_of`` (default: its newest
    version), in O(1): the new namespace borrows the source's objects."""
    existing = catalog.newest(target)
    if existing is not None and not existing.deleted:
        raise AlreadyExists(f"namespace {target!r} exists; a branch needs a new name")
    if target == source:
        raise InvalidArgument("a namespace cannot be branched into itself")
    copy, still = source_of(catalog, source, catalog.latest(source).version if as_of is None else as_of)

    def add_fork(base: Manifest) -> dict:
        return {"forks": tuple(sorted(set(base.forks) | {target}))}

    guard = protect(catalog, source, f".branch-{uuid.uuid4().hex[:12]}", copy, catalog.clock() + PROTECTION_S,
                     {"op": "protect", "for": "branch", "branch": target, "version": copy.version}, add_fork)
    if not still():
        unprotect(catalog, source, guard)
        raise VersionNotRetained(not_retained(catalog, source, f"version {copy.version}"))
    # Namespaces whose objects the copy borrows in turn (a branch of a branch) keep them too.
    for home in sorted(_homes(copy) - {source, target}):
        _register_fork(catalog, home, target)
    version = 0 if existing is None else existing.version + 1
    first = Manifest(
        namespace=target,
        version=version,
        config=copy.config,
        segments=tuple(_borrow(source, seg) for seg in copy.segments),
        wal=copy.wal,
        incarnation=version,
        gc_fence=existing.gc_fence if existing is not None else 0,
        forks=existing.forks if existing is not None else (),
        origin={"namespace": source, "version": copy.version},
        change={"op": "branch", "namespace": source, "version": copy.version},
    )
    if catalog.latest(source).tag(guard.name) != guard:
        raise Conflict(f"branching {source!r} took longer than its protection lasts; nothing was created, try again")
    try:
        committed = catalog.commit(first)
    except PreconditionFailed:
        unprotect(catalog, source, guard)
        raise AlreadyExists(f"namespace {target!r} was created meanwhile") from None
    unprotect(catalog, source, guard)
    return committed


def _borrow(source: str, seg: SegmentRef) -> SegmentRef:
    return SegmentRef(keys.borrowed_segment_id(source, seg.id), seg.rows, seg.nlist, seg.bytes,
                      seg.tombstones_key, seg.tombstones)


def _homes(manifest: Manifest) -> set[str]:
    """Every namespace whose prefix holds an object ``manifest`` references."""
    homes = {keys.namespace_of(w.key) for w in manifest.wal}
    for seg in manifest.segments:
        homes.add(keys.namespace_of(keys.segment_prefix(manifest.namespace, seg.id)))
        if seg.tombstones_key:
            homes.add(keys.namespace_of(seg.tombstones_key))
    return homes


def _register_fork(catalog: Catalog, home: str, fork: str) -> None:
    for _ in range(_RETRIES):
        base = catalog.newest(home)
        if base is None or fork in base.forks:
            return
        try:
            catalog.commit(base.next(forks=tuple(sorted(set(base.forks) | {fork})),
                                     change={"op": "fork", "branch": fork}))
            return
        except PreconditionFailed:
            continue
    raise Conflict(f"recording branch {fork!r} in {home!r} kept conflicting with other writers")


def expired_protections(manifest: Manifest, now: float) -> tuple[str, ...]:
    return tuple(t.name for t in manifest.tags if t.expires_at is not None and t.expires_at <= now)

