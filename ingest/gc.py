"""Garbage collection: delete what no retained manifest needs.

Kept: the newest ``retain_manifests`` versions, plus any manifest younger than
``gc_grace_s`` (a reader may be using it). Deleted: older manifests, then every WAL or
segment object that no kept manifest references and that is older than ``gc_grace_s``
(younger ones may belong to a write or an index build that has not committed yet).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.base import ObjectStore
from storage.errors import ObjectNotFound
from vectordb import keys, segment
from vectordb.catalog import Catalog


@dataclass(frozen=True)
class GcResult:
    manifests_deleted: int
    objects_deleted: int
    bytes_deleted: int


def collect(catalog: Catalog, store: ObjectStore, ns: str, retain: int, grace_s: float) -> GcResult:
    newest = catalog.latest(ns)
    now = time.time()
    manifests = list(store.list(keys.manifests_prefix(ns)))
    manifests.sort(key=lambda info: keys.version_of_manifest_key(info.key))
    keep_from = max(0, len(manifests) - max(1, retain))
    kept, doomed = [], []
    for n, info in enumerate(manifests):
        version = keys.version_of_manifest_key(info.key)
        if n >= keep_from or now - info.last_modified < grace_s or version == newest.version:
            kept.append(version)
        else:
            doomed.append(info)

    referenced: set[str] = set()
    for version in kept:
        try:
            manifest = catalog.get_version(ns, version)
        except ObjectNotFound:  # removed by a concurrent collector
            continue
        referenced |= manifest.referenced_keys(lambda seg: segment.file_keys(ns, seg.id))

    objects = bytes_ = 0
    for prefix in (f"{ns}/wal/", f"{ns}/segments/"):
        for info in list(store.list(prefix)):
            if info.key not in referenced and now - info.last_modified >= grace_s:
                store.delete(info.key)
                objects += 1
                bytes_ += info.size
    # Manifests go last: until their data is gone they still describe something real.
    for info in doomed:
        store.delete(info.key)
        bytes_ += info.size
    return GcResult(len(doomed), objects, bytes_)
