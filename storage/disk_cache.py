"""The local-disk tier of the read cache: immutable objects (or byte ranges of them) kept
as files, bounded in bytes, least recently used evicted first, kept across restarts.

Layout: ``DIR/<h[:2]>/<h>.<part>`` where ``h`` hashes the store URI and the key (one
directory may serve several stores) and ``part`` is ``all`` or ``<start>-<length>``.
Each file starts with a small header holding the payload's length and CRC-32, so a file
torn by a crash (the cache does not fsync) is detected, dropped and fetched again.
Recency survives a restart through the files' mtimes, which a hit refreshes.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from pathlib import Path

_HEADER = struct.Struct("<4sIQ")  # magic, crc32, payload length
_MAGIC = b"VDC1"
_TEMP_PREFIX = "~tmp-"
_STALE_TEMP_S = 60.0  # older temporary files were left by a crash, not by a live writer


class DiskCache:
    """Byte strings in files under ``directory``, at most ``max_bytes`` of them in all."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, namespace: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._namespace = namespace
        self._lock = threading.Lock()
        self._files: OrderedDict[str, int] = OrderedDict()  # path -> size, oldest first
        self._bytes = 0
        self._load()

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: str, part: str) -> bytes | None:
        """The cached bytes, or None if absent or damaged."""
        path = self._path(key, part)
        try:
            with open(path, "rb") as f:
                data = _decode(f.read(_HEADER.size), f.read())
        except FileNotFoundError:
            return None
        if data is None:
            self._remove(str(path))
            return None
        with self._lock:
            if str(path) in self._files:
                self._files.move_to_end(str(path))
        try:
            os.utime(path)  # remembered recency for the next process
        except FileNotFoundError:
            pass
        return data

    def put(self, key: str, part: str, data: bytes) -> None:
        """Store ``data``, then evict the least recently used files beyond the bound."""
        size = _HEADER.size + len(data)
        if size > self.max_bytes:
            return
        path = self._path(key, part)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(_HEADER.pack(_MAGIC, zlib.crc32(data), len(data)))
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            # A full or read-only disk must not fail the read that wanted to cache.
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            self._bytes += size - self._files.pop(str(path), 0)
            self._files[str(path)] = size
            victims = []
            while self._bytes > self.max_bytes and self._files:
                victim, victim_size = self._files.popitem(last=False)
                self._bytes -= victim_size
                victims.append(victim)
        for victim in victims:
            Path(victim).unlink(missing_ok=True)

    def invalidate(self, key: str) -> None:
        """Drop every part cached for ``key``."""
        stem = self._stem(key)
        shard = self.directory / stem[:2]
        try:
            names = [e.name for e in os.scandir(shard) if e.name.startswith(stem + ".")]
        except FileNotFoundError:
            return
        for name in names:
            self._remove(str(shard / name))

    def _remove(self, path: str) -> None:
        with self._lock:
            self._bytes -= self._files.pop(path, 0)
        Path(path).unlink(missing_ok=True)

    def _stem(self, key: str) -> str:
        return hashlib.sha256(f"{self._namespace}\n{key}".encode()).hexdigest()[:40]

    def _path(self, key: str, part: str) -> Path:
        stem = self._stem(key)
        return self.directory / stem[:2] / f"{stem}.{part}"

    def _load(self) -> None:
        """Index the files a previous process left, oldest first; trim to the bound."""
        found = []
        now = time.time()
        for shard in os.scandir(self.directory):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.name.startswith(_TEMP_PREFIX):
                    if now - st.st_mtime > _STALE_TEMP_S:
                        Path(entry.path).unlink(missing_ok=True)
                    continue
                found.append((st.st_mtime, entry.path, st.st_size))
        for _, path, size in sorted(found):
            self._files[path] = size
            self._bytes += size
        while self._bytes > self.max_bytes and self._files:
            path, size = self._files.popitem(last=False)
            self._bytes -= size
            Path(path).unlink(missing_ok=True)


def _decode(header: bytes, data: bytes) -> bytes | None:
    """The payload if the header vouches for it, else None."""
    if len(header) < _HEADER.size:
        return None
    magic, crc, length = _HEADER.unpack(header)
    if magic != _MAGIC or length != len(data) or zlib.crc32(data) != crc:
        return None
    return data
