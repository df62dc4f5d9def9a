"""Where a namespace's objects live inside the store. One namespace = one prefix:

    <ns>/manifests/<version:020d>.json   immutable, one per committed version
    <ns>/latest.json                     best-effort copy of a recent manifest (a hint)
    <ns>/wal/<version:020d>-<uuid>.parquet
    <ns>/segments/<segment-id>/{ivf.bin,vectors.bin,docs.parquet,tomb-<version>.json}
"""

from __future__ import annotations

MANIFEST_DIGITS = 20


def manifests_prefix(ns: str) -> str:
    return f"{ns}/manifests/"


def manifest_key(ns: str, version: int) -> str:
    return f"{ns}/manifests/{version:0{MANIFEST_DIGITS}d}.json"


def version_of_manifest_key(key: str) -> int:
    return int(key.rsplit("/", 1)[1].split(".", 1)[0])


def latest_hint_key(ns: str) -> str:
    return f"{ns}/latest.json"


def wal_key(ns: str, version: int, uid: str) -> str:
    return f"{ns}/wal/{version:0{MANIFEST_DIGITS}d}-{uid}.parquet"


def segment_prefix(ns: str, segment_id: str) -> str:
    return f"{ns}/segments/{segment_id}/"
