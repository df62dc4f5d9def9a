"""Object storage: one interface (:class:`ObjectStore`), a backend per URI scheme, and a
read cache in front.

    file://DIR              LocalStore   a directory (relative or absolute)
    s3://BUCKET[/PREFIX]    S3Store      S3, MinIO, SeaweedFS, OSS via the minio SDK
    memory://NAME           MemoryStore  shared in-process dict, for tests
"""

from __future__ import annotations

from storage.base import ObjectInfo, ObjectStore
from storage.cache import CachedStore
from storage.errors import InvalidKey, ObjectNotFound, PreconditionFailed, StorageUnavailable
from vectordb.errors import InvalidArgument
from vectordb.settings import Settings

__all__ = [
    "CachedStore",
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PreconditionFailed",
    "StorageUnavailable",
    "open_raw_store",
    "open_store",
]


def open_store(settings: Settings) -> CachedStore:
    """The store at ``settings.store_uri`` behind the read cache (``cache_bytes`` of RAM,
    plus ``disk_cache_dir`` if set). Raises InvalidArgument for an unknown scheme, and
    StorageUnavailable if an S3 bucket cannot be reached or created."""
    return CachedStore(
        open_raw_store(settings),
        settings.cache_bytes,
        disk_dir=settings.disk_cache_dir,
        disk_max_bytes=settings.disk_cache_bytes,
    )


def open_raw_store(settings: Settings) -> ObjectStore:
    """The backend for ``settings.store_uri``, without a cache."""
    uri = settings.store_uri
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme = ""
    # Backends are imported on use: a worker on local disk never loads the S3 SDK.
    if scheme == "file":
        from storage.local import LocalStore

        return LocalStore.from_uri(uri)
    if scheme == "s3":
        from storage.s3 import S3Store

        return S3Store.from_uri(uri, settings)
    if scheme == "memory":
        from storage.memory import MemoryStore

        return MemoryStore.named(rest)
    raise InvalidArgument(
        f"unsupported store URI {uri!r}: expected file://DIR, s3://BUCKET/PREFIX or memory://NAME"
    )
