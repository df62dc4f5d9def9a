"""The read cache: byte bound, counters, single flight, invalidation, the disk tier."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage import CachedStore
from storage.errors import ObjectNotFound
from storage.memory import MemoryStore


class CountingStore(MemoryStore):
    """A memory store that counts reads and can hold them at a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def get(self, key: str) -> bytes:
        self.reads += 1
        self.entered.set()
        assert self.gate.wait(10)
        return super().get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.reads += 1
        return MemoryStore.get(self, key)[start : start + length]


def test_hits_and_misses_are_counted() -> None:
    inner = CountingStore()
    inner.put("k", b"abc")
    cache = CachedStore(inner, max_bytes=1000)
    assert cache.get("k") == b"abc"
    assert cache.get("k") == b"abc"
    stats = cache.stats()
    assert (stats["requests"], stats["hits"], stats["misses"], stats["bytes_fetched"]) == (2, 1, 1, 3)
    assert (stats["ram_bytes"], stats["ram_entries"]) == (3, 1)
    assert inner.reads == 1


def test_ram_is_bounded_in_bytes_and_evicts_least_recently_used() -> None:
    inner = CountingStore()
    for name in "abcd":
        inner.put(name, name.encode() * 40)
    cache = CachedStore(inner, max_bytes=100)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # "a" is now more recent than "b"
    cache.get("c")  # 120 bytes > 100: evict "b"
    stats = cache.stats()
    assert stats["ram_bytes"] <= 100
    assert stats["evictions"] == 1
    reads = inner.reads
    cache.get("a")
    cache.get("c")
    assert inner.reads == reads  # both still cached
    cache.get("b")
    assert inner.reads == reads + 1


def test_an_object_larger_than_the_budget_is_returned_but_not_kept() -> None:
    inner = CountingStore()
    inner.put("big", b"x" * 500)
    cache = CachedStore(inner, max_bytes=100)
    assert cache.get("big") == b"x" * 500
    assert cache.get("big") == b"x" * 500
    assert inner.reads == 2
    assert cache.stats()["ram_bytes"] == 0


def test_ranges_are_cached_by_key_start_and_length() -> None:
    inner = CountingStore()
    inner.put("seg", bytes(range(100)))
    cache = CachedStore(inner, max_bytes=1000)
    assert cache.get_range("seg", 10, 5) == bytes(range(10, 15))
    assert cache.get_range("seg", 10, 5) == bytes(range(10, 15))
    assert inner.reads == 1
    assert cache.get_range("seg", 10, 6) == bytes(range(10, 16))
    assert inner.reads == 2
    cache.get("seg")
    reads = inner.reads
    assert cache.get_range("seg", 90, 50) == bytes(range(90, 100))  # sliced from the whole
    assert inner.reads == reads


def test_concurrent_misses_share_one_fetch() -> None:
    inner = CountingStore()
    inner.put("part", b"p" * 64)
    inner.gate.clear()
    cache = CachedStore(inner, max_bytes=1000)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get, "part") for _ in range(8)]
        assert inner.entered.wait(5)
        # Let the other seven arrive and join the flight before the fetch ends.
        deadline = threading.Event()
        while cache.stats()["coalesced"] < 7 and not deadline.wait(0.01):
            pass
        inner.gate.set()
        results = [f.result(timeout=10) for f in futures]
    assert results == [b"p" * 64] * 8
    assert inner.reads == 1
    assert cache.stats()["coalesced"] == 7


def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached() -> None:
    inner = CountingStore()
    inner.gate.clear()
    cache = CachedStore(inner, max_bytes=1000)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get, "absent") for _ in range(4)]
        assert inner.entered.wait(5)
        inner.gate.set()
        for f in futures:
            with pytest.raises(ObjectNotFound):
                f.result(timeout=10)
    inner.put("absent", b"now here")
    assert cache.get("absent") == b"now here"
    assert cache.head("absent") is not None


def test_writes_through_the_cache_invalidate() -> None:
    inner = CountingStore()
    cache = CachedStore(inner, max_bytes=1000)
    cache.put("k", b"old")
    assert cache.get("k") == b"old"
    assert cache.get_range("k", 0, 2) == b"ol"
    cache.put("k", b"new")
    assert cache.get("k") == b"new"
    cache.delete("k")
    with pytest.raises(ObjectNotFound):
        cache.get("k")
    with pytest.raises(ObjectNotFound):
        cache.get_range("k", 0, 2)
    assert cache.stats()["ram_bytes"] == 0


def test_a_write_during_a_fetch_keeps_the_old_bytes_out_of_the_cache() -> None:
    inner = CountingStore()
    inner.put("k", b"old")
    inner.gate.clear()
    cache = CachedStore(inner, max_bytes=1000)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(cache.get, "k")
        assert inner.entered.wait(5)
        cache.put("k", b"new")  # lands while the read of "old" is in flight
        inner.gate.set()
        slow.result(timeout=10)
    assert cache.get("k") == b"new"


def test_get_uncached_bypasses_the_cache() -> None:
    inner = CountingStore()
    inner.put("manifest", b"v1")
    cache = CachedStore(inner, max_bytes=1000)
    assert cache.get_uncached("manifest") == b"v1"
    inner.put("manifest", b"v2")  # written by another process, unseen by the cache
    assert cache.get_uncached("manifest") == b"v2"
    assert cache.stats()["ram_entries"] == 0


# --- the disk tier -----------------------------------------------------------------------


def test_disk_tier_survives_a_restart(tmp_path: Path) -> None:
    inner = MemoryStore("memory://disk-test")
    inner.put("seg/1", b"vectors" * 10)
    first = CachedStore(inner, max_bytes=1000, disk_dir=tmp_path)
    assert first.get_range("seg/1", 7, 7) == b"vectors"
    assert first.get("seg/1") == b"vectors" * 10

    inner.put("seg/1", b"changed behind our back")  # proves the next reads come from disk
    second = CachedStore(inner, max_bytes=1000, disk_dir=tmp_path)
    assert second.get_range("seg/1", 7, 7) == b"vectors"
    assert second.get("seg/1") == b"vectors" * 10
    stats = second.stats()
    assert (stats["disk_hits"], stats["misses"]) == (2, 0)


def test_disk_tier_is_per_store_uri(tmp_path: Path) -> None:
    one, two = MemoryStore("memory://one"), MemoryStore("memory://two")
    one.put("k", b"from one")
    two.put("k", b"from two")
    assert CachedStore(one, 1000, disk_dir=tmp_path).get("k") == b"from one"
    assert CachedStore(two, 1000, disk_dir=tmp_path).get("k") == b"from two"


def test_disk_tier_is_bounded(tmp_path: Path) -> None:
    inner = MemoryStore()
    for i in range(10):
        inner.put(f"k{i}", bytes([i]) * 300)
    cache = CachedStore(inner, max_bytes=0, disk_dir=tmp_path, disk_max_bytes=1000)
    for i in range(10):
        cache.get(f"k{i}")
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk <= 1000
    assert cache.stats()["disk_bytes"] == on_disk
    # The newest survive; a restart with a smaller bound trims the oldest.
    restarted = CachedStore(inner, max_bytes=0, disk_dir=tmp_path, disk_max_bytes=400)
    assert restarted.stats()["disk_bytes"] <= 400
    assert restarted.get("k9") == bytes([9]) * 300
    assert restarted.stats()["disk_hits"] == 1


def test_disk_tier_drops_a_damaged_file(tmp_path: Path) -> None:
    inner = MemoryStore()
    inner.put("k", b"good bytes")
    CachedStore(inner, 0, disk_dir=tmp_path).get("k")
    (damaged,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    damaged.write_bytes(damaged.read_bytes()[:-3])  # torn by a crash
    cache = CachedStore(inner, 0, disk_dir=tmp_path)
    assert cache.get("k") == b"good bytes"
    assert cache.stats()["misses"] == 1


def test_disk_tier_is_invalidated_by_writes(tmp_path: Path) -> None:
    inner = MemoryStore()
    cache = CachedStore(inner, 0, disk_dir=tmp_path)
    cache.put("k", b"one")
    cache.get("k")
    cache.put("k", b"two")
    assert cache.get("k") == b"two"
    assert CachedStore(inner, 0, disk_dir=tmp_path).get("k") == b"two"


def test_disk_tier_cleans_up_stale_temporary_files(tmp_path: Path) -> None:
    shard = tmp_path / "ab"
    shard.mkdir()
    stale = shard / "~tmp-crashed"
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    CachedStore(MemoryStore(), 0, disk_dir=tmp_path)
    assert not stale.exists()
