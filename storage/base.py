"""The object store interface that every backend implements.

Keys are ``/``-separated relative paths (``ns/manifests/00000000000000000001.json``).
A store instance is rooted at a URI (``file:///dir``, ``s3://bucket/prefix``,
``memory://name``); keys never include that root. All methods are blocking and
thread-safe; callers run them off the event loop.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from storage.errors import InvalidKey
from vectordb.errors import InvalidArgument

# ASCII only, so that keys mean the same bytes on every backend and no Unicode look-alike
# of "/" or "." can sneak in. Matched with fullmatch: "$" would accept a trailing newline.
_SEGMENT_OK = re.compile(r"[A-Za-z0-9_.=-]+")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float  # unix seconds


@runtime_checkable
class ObjectStore(Protocol):
    """What the rest of the code may ask of object storage."""

    uri: str

    def get(self, key: str) -> bytes:
        """The whole object. Raises ObjectNotFound."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` (fewer at the end). Raises ObjectNotFound."""

    def head(self, key: str) -> ObjectInfo | None:
        """Size and modification time, or None when absent."""

    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) atomically: readers see the old or the new object, never a part."""

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Write (or overwrite) atomically the contents of a local file, streamed: an index
        build uploads files of gigabytes without holding them in memory (S3: multipart)."""

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create only if absent; raises PreconditionFailed if it exists, even under a race."""

    def delete(self, key: str) -> None:
        """Remove; absent keys are not an error."""

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """All objects whose key starts with ``prefix``, in ascending key order."""

    def list_prefixes(self, prefix: str) -> list[str]:
        """The next path level below ``prefix`` (which ends in ``/`` or is empty): the names
        of the "directories" there, without the prefix or a trailing slash."""


def check_key(key: str) -> str:
    """Reject keys that are empty, absolute, or have ``.``/``..``/odd segments."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise InvalidKey(f"invalid object key {key!r}")
    for part in key.split("/"):
        if not is_key_segment(part):
            raise InvalidKey(f"invalid object key {key!r}")
    return key


def is_key_segment(name: str) -> bool:
    """Whether ``name`` may be one ``/``-separated part of a key. Backends use it to skip
    their own temporary files and foreign names when listing."""
    return name not in (".", "..") and _SEGMENT_OK.fullmatch(name) is not None


def check_prefix(prefix: str) -> str:
    """A list prefix: empty, or a key-like path, optionally ending in ``/``."""
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix


def check_dir_prefix(prefix: str) -> str:
    """The prefix of ``list_prefixes``: empty, or a key-like path ending in ``/``."""
    if prefix and not prefix.endswith("/"):
        raise InvalidKey(f"a directory prefix must be empty or end in '/': {prefix!r}")
    return check_prefix(prefix)


def check_range(start: int, length: int) -> None:
    """Reject negative offsets and lengths of ``get_range``."""
    if start < 0 or length < 0:
        raise InvalidArgument(f"invalid byte range: start={start}, length={length}")
