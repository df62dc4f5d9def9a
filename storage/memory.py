"""In-memory object store (``memory://name``) for unit tests and experiments."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from storage.base import (
    ObjectInfo,
    check_dir_prefix,
    check_key,
    check_prefix,
    check_range,
)
from storage.errors import ObjectNotFound, PreconditionFailed


class MemoryStore:
    """A dict of bytes behind a lock. Instances are independent unless shared by name."""

    _named: ClassVar[dict[str, MemoryStore]] = {}
    _named_lock = threading.Lock()

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def named(cls, name: str) -> MemoryStore:
        """One shared store per name, so ``memory://x`` opened twice sees the same data."""
        with cls._named_lock:
            if name not in cls._named:
                cls._named[name] = cls(f"memory://{name}")
            return cls._named[name]

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self._objects[check_key(key)][0]
            except KeyError:
                raise ObjectNotFound(f"no object {key!r}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length)
        return self.get(key)[start : start + length]

    def head(self, key: str) -> ObjectInfo | None:
        with self._lock:
            item = self._objects.get(check_key(key))
        return None if item is None else ObjectInfo(key, len(item[0]), item[1])

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._objects[check_key(key)] = (bytes(data), time.time())

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.put(key, Path(path).read_bytes())

    def put_if_absent(self, key: str, data: bytes) -> None:
        with self._lock:
            if check_key(key) in self._objects:
                raise PreconditionFailed(f"object {key!r} already exists")
            self._objects[key] = (bytes(data), time.time())

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(check_key(key), None)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        with self._lock:
            items = sorted((k, v) for k, v in self._objects.items() if k.startswith(prefix))
        for key, (data, mtime) in items:
            if start_after is None or key > start_after:
                yield ObjectInfo(key, len(data), mtime)

    def list_prefixes(self, prefix: str) -> list[str]:
        check_dir_prefix(prefix)
        with self._lock:
            keys = [k for k in self._objects if k.startswith(prefix)]
        return sorted({k[len(prefix) :].split("/", 1)[0] for k in keys if "/" in k[len(prefix) :]})
