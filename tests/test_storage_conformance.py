"""One behaviour for every object store: memory, a local directory and a real S3 server
(SeaweedFS), each also behind the read cache."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from storage import CachedStore, ObjectStore
from storage.errors import InvalidKey, ObjectNotFound, PreconditionFailed
from storage.local import LocalStore
from storage.memory import MemoryStore
from storage.s3 import S3Store
from vectordb.errors import InvalidArgument

BACKENDS = ["memory", "local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(params=BACKENDS)
def raw_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return S3Store.from_uri(request.getfixturevalue("s3_settings").store_uri, request.getfixturevalue("s3_settings"))


@pytest.fixture(params=["raw", "cached"])
def store(request: pytest.FixtureRequest, raw_store: ObjectStore) -> ObjectStore:
    if request.param == "cached":
        return CachedStore(raw_store, max_bytes=1 << 20)
    return raw_store


def keys(store: ObjectStore, prefix: str = "", start_after: str | None = None) -> list[str]:
    return [info.key for info in store.list(prefix, start_after)]


# --- reads and writes ------------------------------------------------------------------


def test_put_then_get(store: ObjectStore) -> None:
    store.put("ns/a.bin", b"hello")
    store.put("ns/empty", b"")
    assert store.get("ns/a.bin") == b"hello"
    assert store.get("ns/empty") == b""


def test_put_overwrites(store: ObjectStore) -> None:
    store.put("k", b"one")
    assert store.get("k") == b"one"  # and, behind the cache, cached
    store.put("k", b"two")
    assert store.get("k") == b"two"


def test_get_missing_raises(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("nope")
    with pytest.raises(ObjectNotFound):
        store.get_range("nope", 0, 10)


def test_get_range(store: ObjectStore) -> None:
    store.put("r", b"0123456789")
    assert store.get_range("r", 0, 3) == b"012"
    assert store.get_range("r", 4, 2) == b"45"
    assert store.get_range("r", 8, 100) == b"89"  # past the end: what there is
    assert store.get_range("r", 10, 5) == b""  # at the end
    assert store.get_range("r", 50, 5) == b""  # beyond it
    assert store.get_range("r", 3, 0) == b""
    store.put("e", b"")
    assert store.get_range("e", 0, 5) == b""


def test_get_range_rejects_negative(store: ObjectStore) -> None:
    store.put("r", b"0123456789")
    with pytest.raises(InvalidArgument):
        store.get_range("r", -1, 3)
    with pytest.raises(InvalidArgument):
        store.get_range("r", 0, -3)


def test_head(store: ObjectStore) -> None:
    before = time.time()
    store.put("h/x", b"12345")
    info = store.head("h/x")
    assert info is not None
    assert (info.key, info.size) == ("h/x", 5)
    # S3 reports whole seconds; allow for that and a little clock skew.
    assert before - 2 <= info.last_modified <= time.time() + 2
    assert store.head("h/missing") is None
    assert store.head("h") is None  # a prefix is not an object


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("d/x", b"1")
    assert store.get("d/x") == b"1"
    store.delete("d/x")
    store.delete("d/x")
    store.delete("never/was")
    assert store.head("d/x") is None
    with pytest.raises(ObjectNotFound):
        store.get("d/x")


# --- listings --------------------------------------------------------------------------

# "-" and "." sort before "/", so a directory-tree walk would misplace "a-b" and "a.c".
TRICKY_KEYS = ["a/x", "a-b", "a0", "a/y/z", "b", "a.c", "a/x0", "a/x-1", "a=1"]


def test_list_is_in_key_order(store: ObjectStore) -> None:
    for key in TRICKY_KEYS:
        store.put(key, key.encode())
    assert keys(store) == sorted(TRICKY_KEYS)
    infos = list(store.list(""))
    assert [i.size for i in infos] == [len(i.key) for i in infos]


def test_list_prefix_and_start_after(store: ObjectStore) -> None:
    for key in TRICKY_KEYS:
        store.put(key, b"x")
    assert keys(store, "a/") == ["a/x", "a/x-1", "a/x0", "a/y/z"]
    assert keys(store, "a") == sorted(k for k in TRICKY_KEYS if k.startswith("a"))
    assert keys(store, "a/x") == ["a/x", "a/x-1", "a/x0"]
    assert keys(store, "", start_after="a-b") == [k for k in sorted(TRICKY_KEYS) if k > "a-b"]
    assert keys(store, "", start_after="a/x") == ["a/x-1", "a/x0", "a/y/z", "a0", "a=1", "b"]
    assert keys(store, "a/", start_after="a/x0") == ["a/y/z"]
    assert keys(store, "", start_after="b") == []
    assert keys(store, "zzz/") == []


def test_list_prefixes(store: ObjectStore) -> None:
    for key in ["ns1/manifests/1.json", "ns1/wal/1", "ns2/segments/s1/ivf", "ns2/segments/s2/ivf", "top"]:
        store.put(key, b"x")
    assert store.list_prefixes("") == ["ns1", "ns2"]
    assert store.list_prefixes("ns1/") == ["manifests", "wal"]
    assert store.list_prefixes("ns2/segments/") == ["s1", "s2"]
    assert store.list_prefixes("ns2/segments/s1/") == []
    assert store.list_prefixes("missing/") == []
    with pytest.raises(InvalidKey):
        store.list_prefixes("ns1")  # must be empty or end in "/"


def test_list_prefixes_forgets_emptied_prefixes(store: ObjectStore) -> None:
    store.put("gone/deep/x", b"x")
    store.put("kept/x", b"x")
    store.delete("gone/deep/x")
    assert store.list_prefixes("") == ["kept"]
    assert keys(store) == ["kept/x"]


# --- keys ------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/abs",
    "../x",
    "a/../../x",
    "a//b",
    "a/",
    ".",
    "a/./b",
    "a\n",  # "$" in a regex would let this through
    "a b",
    "a\\b",
    "ａ",  # fullwidth a
    "a\u2215b",  # division slash, looks like "/"
    "a\u2024b",  # one dot leader, looks like "."
    "\u2024\u2024/x",
    "e\u0301",  # combining accent
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.put_if_absent(key, b"x")
    with pytest.raises(InvalidKey):
        store.get(key)
    with pytest.raises(InvalidKey):
        store.get_range(key, 0, 1)
    with pytest.raises(InvalidKey):
        store.head(key)
    with pytest.raises(InvalidKey):
        store.delete(key)
    assert isinstance(InvalidKey("x"), InvalidArgument)  # so a stray one maps to HTTP 400


def test_invalid_list_prefix_is_refused(store: ObjectStore) -> None:
    for prefix in ["/", "../", "a//", "a/../b/"]:
        with pytest.raises(InvalidKey):
            list(store.list(prefix))


# --- conditional create ----------------------------------------------------------------


def test_put_if_absent(store: ObjectStore) -> None:
    store.put_if_absent("m/00001.json", b"first")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("m/00001.json", b"second")
    assert store.get("m/00001.json") == b"first"


def test_put_if_absent_after_delete(store: ObjectStore) -> None:
    store.put_if_absent("m/1", b"a")
    store.delete("m/1")
    store.put_if_absent("m/1", b"b")
    assert store.get("m/1") == b"b"


def race(store: ObjectStore, key: str, writers: int) -> list[int]:
    """Let ``writers`` threads put_if_absent ``key`` at once; the ones that succeeded."""
    barrier = threading.Barrier(writers)
    winners: list[int] = []

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.put_if_absent(key, f"writer {i}".encode())
            winners.append(i)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return winners


def test_put_if_absent_race_between_threads(store: ObjectStore) -> None:
    # Few writers: SeaweedFS makes each losing conditional PUT of a contended key wait ~1 s.
    for round_ in range(2):
        winners = race(store, f"race/{round_}", writers=6)
        assert len(winners) == 1, winners
        assert store.get(f"race/{round_}") == f"writer {winners[0]}".encode()


def _claim_keys(root: str, name: str, count: int, start: threading.Event) -> list[int]:
    store = LocalStore(root)
    start.wait()
    won = []
    for i in range(count):
        try:
            store.put_if_absent(f"claims/{i}", name.encode())
            won.append(i)
        except PreconditionFailed:
            pass
    return won


def test_local_put_if_absent_race_between_processes(tmp_path: Path) -> None:
    count, names = 200, ["p1", "p2", "p3"]
    context = multiprocessing.get_context("spawn")
    start = context.Manager().Event()
    with context.Pool(len(names)) as pool:
        results = [pool.apply_async(_claim_keys, (str(tmp_path), n, count, start)) for n in names]
        time.sleep(0.5)  # let every worker reach the start line
        start.set()
        won = {name: set(r.get(timeout=60)) for name, r in zip(names, results, strict=True)}
    claimed = [i for name in names for i in won[name]]
    assert sorted(claimed) == list(range(count))  # each key exactly once
    store = LocalStore(tmp_path)
    for name in names:
        for i in won[name]:
            assert store.get(f"claims/{i}") == name.encode()
