"""Object store on S3 or an S3-compatible server (``s3://bucket/prefix``) via the minio SDK.

Key ``k`` is the object ``prefix/k`` in ``bucket``. Every request is retried with
exponential backoff and jitter on transient failures (5xx, SlowDown, 429, connection
errors, timeouts), ``s3_retries`` times; what still fails raises StorageUnavailable.
Answers that retrying cannot change (403, a missing bucket) raise StorageUnavailable at
once. Absent keys raise ObjectNotFound, a lost conditional create PreconditionFailed.

Things learned from SeaweedFS (4.48) that shape this module:

* Its recursive listing walks a directory tree, so ``a/x`` comes before ``a-b``
  although ``-`` sorts before ``/``, and ``start-after`` follows that tree order. So
  ``list`` fetches the whole prefix, sorts it, and applies ``start_after`` itself.
* It keeps a "directory" after its last object is deleted, and a delimiter listing
  still reports it. So ``list_prefixes`` confirms each prefix holds an object.
* It honours ``If-None-Match: *`` on PUT, also under a race: one writer wins, the
  others get 412 PreconditionFailed.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3

from storage.base import (
    ObjectInfo,
    check_dir_prefix,
    check_key,
    check_prefix,
    check_range,
    is_key_segment,
)
from storage.errors import ObjectNotFound, PreconditionFailed, StorageUnavailable
from storage.sdk import InvalidResponseError, Minio, S3Error, ServerError, check_bucket_name
from vectordb.errors import InvalidArgument
from vectordb.settings import Settings

T = TypeVar("T")

_MAX_BACKOFF_S = 5.0
# S3 error codes worth another try; any 5xx is as well.
_TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})
_TRANSIENT_STATUSES = frozenset({408, 429})
_CONTENT_TYPE = {"Content-Type": "application/octet-stream"}


class S3Store:
    """Objects under ``prefix/`` in one bucket of an S3-compatible endpoint."""

    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise InvalidArgument(f"invalid S3 bucket name {bucket!r}: {exc}") from exc
        prefix = prefix.strip("/")
        if prefix:
            check_prefix(prefix)
        self.bucket = bucket
        self.uri = f"s3://{bucket}/{prefix}"
        self._root = f"{prefix}/" if prefix else ""
        self._retries = max(0, settings.s3_retries)
        self._backoff_s = settings.s3_backoff_s
        self._part_bytes = settings.s3_part_bytes
        timeout = urllib3.Timeout(connect=settings.s3_timeout_s, read=settings.s3_timeout_s)
        http = urllib3.PoolManager(
            timeout=timeout,
            maxsize=max(32, settings.fetch_threads),
            retries=False,  # this class retries, with backoff, and knows what is safe to retry
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
        )
        try:
            self._client = Minio(
                settings.s3_endpoint,
                access_key=settings.s3_access_key,
                secret_key=settings.s3_secret_key,
                secure=settings.s3_secure,
                region=settings.s3_region,
                http_client=http,
            )
        except ValueError as exc:
            raise InvalidArgument(f"invalid S3 endpoint {settings.s3_endpoint!r}: {exc}") from exc
        if settings.s3_create_bucket:
            self._call("create bucket", bucket, lambda: self._ensure_bucket(settings.s3_region))

    @classmethod
    def from_uri(cls, uri: str, settings: Settings) -> S3Store:
        """``s3://bucket`` or ``s3://bucket/prefix``."""
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidArgument(f"expected s3://BUCKET/PREFIX, got {uri!r}")
        return cls(parts.netloc, parts.path, settings)

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        return self._read(key, 0, 0)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length)
        if length == 0:  # the SDK reads length=0 as "to the end"
            if self.head(key) is None:
                raise ObjectNotFound(f"no object {key!r}")
            return b""
        return self._read(key, start, length)

    def head(self, key: str) -> ObjectInfo | None:
        name = self._name(key)
        try:
            stat = self._call("HEAD", key, lambda: self._client.stat_object(self.bucket, name))
        except ObjectNotFound:
            return None
        return ObjectInfo(key, stat.size or 0, _timestamp(stat.last_modified))

    # --- writes --------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        name, body = self._name(key), bytes(data)
        if len(body) > self._part_bytes:
            # A segment's vectors can be gigabytes: one PUT of that size outlives any sane
            # read timeout (and S3 caps a single PUT at 5 GB). Multipart sends bounded parts,
            # two at a time; a failed attempt is retried whole, from a fresh stream.
            self._call("PUT", key, lambda: self._client.put_object(
                self.bucket, name, io.BytesIO(body), len(body), content_type=_CONTENT_TYPE["Content-Type"],
                part_size=self._part_bytes, num_parallel_uploads=2))
            return
        # A fresh headers dict per attempt: the SDK adds its signature to the one it gets.
        self._call("PUT", key, lambda: self._client._put_object(self.bucket, name, body, dict(_CONTENT_TYPE)))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        size = os.path.getsize(path)
        if size <= self._part_bytes:
            with open(path, "rb") as f:
                self.put(key, f.read())
            return
        name = self._name(key)

        def upload() -> None:
            # Multipart from the file, one part at a time: with parallel uploads the SDK
            # reads every part into an unbounded queue ahead of its threads (a 1.5 GB file
            # took 1.5 GB), so memory stays one part here. A retry opens the file afresh.
            with open(path, "rb") as f:
                self._client.put_object(self.bucket, name, f, size, content_type=_CONTENT_TYPE["Content-Type"],
                                        part_size=self._part_bytes, num_parallel_uploads=1)

        self._call("PUT", key, upload)

    def put_if_absent(self, key: str, data: bytes) -> None:
        name, body = self._name(key), bytes(data)
        attempts = 0

        def put() -> None:
            nonlocal attempts
            attempts += 1
            # put_object cannot send If-None-Match; the SDK's lower-level call can.
            headers = {**_CONTENT_TYPE, "If-None-Match": "*"}
            self._client._put_object(self.bucket, name, body, headers)

        try:
            self._call("PUT", key, put)
        except PreconditionFailed:
            # An attempt that timed out may still have landed, and then its retry finds
            # the object present. If it holds our bytes, that write was ours.
            if attempts > 1 and self._get_or_none(key) == body:
                return
            raise

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self._call("DELETE", key, lambda: self._client.remove_object(self.bucket, name))
        except ObjectNotFound:
            pass

    # --- listings ------------------------------------------------------------------------

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)

        def fetch() -> list[ObjectInfo]:
            objects = self._client.list_objects(self.bucket, prefix=self._root + prefix, recursive=True)
            return [
                ObjectInfo(key, o.size or 0, _timestamp(o.last_modified))
                for o in objects
                if _is_key(key := o.object_name[len(self._root) :])
            ]

        # Sorted here, not by the server: SeaweedFS lists in directory-tree order.
        for info in sorted(self._call("LIST", prefix, fetch), key=lambda i: i.key):
            if start_after is None or info.key > start_after:
                yield info

    def list_prefixes(self, prefix: str) -> list[str]:
        check_dir_prefix(prefix)
        base = self._root + prefix

        def fetch() -> list[str]:
            entries = self._client.list_objects(self.bucket, prefix=base, recursive=False)
            names = [o.object_name[len(base) :].rstrip("/") for o in entries if o.is_dir]
            # SeaweedFS still reports a directory whose objects were all deleted.
            return sorted(n for n in names if is_key_segment(n) and self._holds_objects(f"{base}{n}/"))

        return self._call("LIST", prefix, fetch)

    # --- helpers -------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._root + check_key(key)

    def _read(self, key: str, offset: int, length: int) -> bytes:
        name = self._name(key)

        def fetch() -> bytes:
            try:
                response = self._client.get_object(self.bucket, name, offset=offset, length=length)
            except S3Error as exc:
                if exc.code == "InvalidRange":  # the range starts at or past the end
                    return b""
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("GET", key, fetch)

    def _get_or_none(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except ObjectNotFound:
            return None

    def _holds_objects(self, name_prefix: str) -> bool:
        # One key is enough; the public list_objects asks for pages of 1000.
        objects = self._client._list_objects(self.bucket, prefix=name_prefix, max_keys=1)
        return next(iter(objects), None) is not None

    def _ensure_bucket(self, region: str | None) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket, location=region)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """Run one request, retrying transient failures; translate the SDK's errors."""
        error: Exception | None = None
        for attempt in range(self._retries + 1):
            try:
                return fn()
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    raise ObjectNotFound(f"no object {key!r}") from exc
                if exc.code == "PreconditionFailed" or _status(exc) == 412:
                    raise PreconditionFailed(f"object {key!r} already exists") from exc
                error = exc
            except (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError) as exc:
                error = exc
            if not _is_transient(error):
                raise StorageUnavailable(f"S3 {op} {key!r} in {self.uri} failed: {error}") from error
            if attempt < self._retries:
                # Exponential backoff with jitter, so that many clients do not retry in step.
                delay = min(_MAX_BACKOFF_S, self._backoff_s * 2**attempt)
                time.sleep(delay * random.uniform(0.5, 1.0))
        raise StorageUnavailable(
            f"S3 {op} {key!r} in {self.uri} failed after {self._retries + 1} attempts: {error}"
        ) from error


def _status(exc: Exception) -> int | None:
    """The HTTP status behind an SDK error, if it has one."""
    if isinstance(exc, S3Error):
        return exc.response.status if exc.response is not None else None
    if isinstance(exc, ServerError):
        return exc.status_code
    if isinstance(exc, InvalidResponseError):  # a non-XML answer, e.g. from a proxy
        return getattr(exc, "_code", None)  # the SDK keeps the status only privately
    return None


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return True  # refused, reset, timed out: the request may succeed next time
    if isinstance(exc, S3Error) and exc.code in _TRANSIENT_CODES:
        return True
    status = _status(exc)
    return status is not None and (status >= 500 or status in _TRANSIENT_STATUSES)


def _is_key(name: str) -> bool:
    """Whether an object name under the root is one of ours (not a folder marker etc.)."""
    return all(is_key_segment(part) for part in name.split("/"))


def _timestamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0
