"""Where a namespace's objects live inside the store. One namespace = one prefix:

    <ns>/manifests/<version:020d>.json   one per committed version (a stub once pruned)
    <ns>/latest.json                     best-effort copy of a recent manifest (a hint)
    <ns>/wal/<version:020d>-<uuid>.parquet
    <ns>/segments/<version:020d>-<uuid>/<file>   segment.FILES (ivf.bin, vectors.bin, bm25.bin, ...)
    <ns>/segments/<segment-id>/tomb-<version:020d>-<uuid>.json
    <ns>/tags/<version:020d>-<uuid>.json   a tag's (or a protection's) copy of a manifest

Every WAL, segment, tombstone and tag key carries a *key version*: the version its writer
meant to commit it at (its base version + 1). Garbage collection deletes an unreferenced
object only if its key version is at or below the collector's fence (see ``ingest.gc``),
so an object still on its way to a commit is never taken for garbage.
"""

from __future__ import annotations

import re

MANIFEST_DIGITS = 20

_VERSIONED = re.compile(rf"(\d{{{MANIFEST_DIGITS}}})-")


def manifests_prefix(ns: str) -> str:
    return f"{ns}/manifests/"


def manifest_key(ns: str, version: int) -> str:
    return f"{ns}/manifests/{version:0{MANIFEST_DIGITS}d}.json"


def version_of_manifest_key(key: str) -> int:
    return int(key.rsplit("/", 1)[1].split(".", 1)[0])


def latest_hint_key(ns: str) -> str:
    return f"{ns}/latest.json"


def layout_hint_key(ns: str) -> str:
    """Copies of a recent version's segments' ``ivf.bin`` (:mod:`vectordb.layout_hint`)."""
    return f"{ns}/layouts.bin"


def wal_key(ns: str, version: int, uid: str) -> str:
    return f"{ns}/wal/{versioned_name(version, uid)}.parquet"


# A segment a branch borrows from namespace ``home`` has the id ``<home>=<id>``: its files
# stay under ``home``'s prefix, its tombstone lists are the branch's own. ``=`` is in no
# namespace name and no segment id, and may appear in a key segment.
HOME_SEP = "="


def segment_prefix(ns: str, segment_id: str) -> str:
    """Where a segment's files are: under ``ns``, or under its home if it is borrowed."""
    home, sep, own_id = segment_id.partition(HOME_SEP)
    return f"{home}/segments/{own_id}/" if sep else f"{ns}/segments/{segment_id}/"


def segment_own_prefix(ns: str, segment_id: str) -> str:
    """Where ``ns`` keeps its own objects about a segment (tombstone lists), borrowed or not."""
    return f"{ns}/segments/{segment_id}/"


def borrowed_segment_id(home: str, segment_id: str) -> str:
    """The id under which another namespace refers to segment ``segment_id`` of ``home``."""
    return segment_id if HOME_SEP in segment_id else f"{home}{HOME_SEP}{segment_id}"


def tag_key(ns: str, version: int, uid: str) -> str:
    """A tag's object: the manifest of the tagged version, kept whatever happens to it."""
    return f"{ns}/tags/{versioned_name(version, uid)}.json"


def namespace_of(key: str) -> str:
    return key.split("/", 1)[0]


def versioned_name(version: int, uid: str) -> str:
    """``<version:020d>-<uid>``: a fresh object name that records its key version."""
    return f"{version:0{MANIFEST_DIGITS}d}-{uid}"


def key_version(ns: str, key: str) -> int:
    """The key version of a WAL, segment, tombstone or tag object of ``ns`` (see the module
    docstring); 0 for objects named before key versions existed (plain-uuid segments)."""
    rest = key[len(ns) + 1 :]
    kind, _, rest = rest.partition("/")
    if kind == "segments":
        segment_id, _, name = rest.partition("/")
        if name.startswith("tomb-"):
            rest = name[len("tomb-") :]
        else:
            rest = segment_id.rpartition(HOME_SEP)[2]
    match = _VERSIONED.match(rest)
    return int(match.group(1)) if match else 0
