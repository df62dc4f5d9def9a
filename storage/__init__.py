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
    "describe_store",
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


def describe_store(settings: Settings) -> str:
    """Where ``settings.store_uri`` points, for logs and the command line, with nothing
    secret in it: a directory as an absolute path, an S3 bucket with its endpoint; user
    info and query strings of the URI are left out, and keys are never part of it."""
    from pathlib import Path
    from urllib.parse import urlsplit

    uri = settings.store_uri
    if uri.startswith("file://"):
        return "file://" + str(Path(uri.removeprefix("file://")).resolve())
    parts = urlsplit(uri)
    where = f"{parts.scheme}://{parts.hostname or ''}{parts.path}" if parts.scheme else uri.split("?")[0]
    if parts.scheme == "s3":
        endpoint = settings.s3_endpoint.rpartition("@")[2]
        where += f" at {'https' if settings.s3_secure else 'http'}://{endpoint}"
    return where
