"""Background index builds in a child process (``ingest.build_process``), on a local
directory store (and one test on SeaweedFS too): the build commits from its own process, the rows stay answerable, a
namespace dropped under it is no error, and a build stopped by ``close()`` leaves nothing
behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from api.service import Service
from ingest import build_process
from ingest.build_process import ChildBuilds, usable
from vectordb.rows import RowBatch, WriteBatch
from vectordb.settings import Settings

DIMS = 16
NS = "child"


def _settings(tmp_path, **overrides) -> Settings:
    (tmp_path / "spill").mkdir(exist_ok=True)
    return Settings(**{
        "store_uri": f"file://{tmp_path / 'store'}", "preload_embedder": "", "group_commit_ms": 1,
        "index_threshold_rows": 300, "flat_max_rows": 100, "rows_per_partition": 50, "background_nice": 5,
        "build_temp_dir": str(tmp_path / "spill"), **overrides,
    })


def _rows(start: int, count: int) -> WriteBatch:
    rng = np.random.default_rng(start)
    ids = [f"d{i}" for i in range(start, start + count)]
    vectors = rng.normal(size=(count, DIMS)).astype(np.float32)
    return WriteBatch(RowBatch(ids, vectors, [f"text {i}" for i in range(start, start + count)],
                               [f'{{"n": {i}}}' for i in range(start, start + count)]), [])


def _wait_indexed(service: Service, rows: int, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        manifest = service.catalog.latest(NS)
        if sum(seg.live_rows for seg in manifest.segments) >= rows:
            return manifest
        time.sleep(0.1)
    raise AssertionError(f"no background build indexed {rows} rows in {timeout_s} s: {service.stats()}")


def test_which_stores_a_child_can_build():
    assert usable(Settings(store_uri="file:///tmp/x", background_builds="process"))
    assert usable(Settings(store_uri="s3://bucket/p", background_builds="process"))
    assert not usable(Settings(store_uri="memory://x", background_builds="process"))
    assert not usable(Settings(store_uri="file:///tmp/x", background_builds="thread"))


def test_the_child_leaves_the_parents_disk_cache_alone(tmp_path):
    settings = _settings(tmp_path, disk_cache_dir=str(tmp_path / "disk-cache"))
    child = json.loads(ChildBuilds(settings)._settings_json)
    assert child["disk_cache_dir"] is None and child["store_uri"] == settings.store_uri


def test_a_background_build_runs_in_a_child_and_commits(tmp_path):
    service = Service(_settings(tmp_path))
    try:
        service.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        for start in range(0, 400, 100):
            service.committer.commit_batches(NS, [_rows(start, 100)], DIMS)
        manifest = _wait_indexed(service, 300)
        assert manifest.segments
        deadline = time.monotonic() + 30  # the child commits, then prints and exits
        while service.stats()["background_builds"]["built"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = service.stats()["background_builds"]
        assert stats["started"] >= 1 and stats["built"] >= 1 and stats["failed"] == 0
        # Every acknowledged row answers, indexed or in the tail, and the spill is gone.
        first = _rows(0, 100).upserts
        hits = service.query(NS, vector=first.vectors[7].tolist(), top_k=1).hits
        assert hits[0].id == "d7"
        assert {d["id"] for d in service.get_documents(NS, ["d0", "d150", "d399"])} == {"d0", "d150", "d399"}
    finally:
        service.close()
    assert not (tmp_path / "spill").exists() or not any((tmp_path / "spill").iterdir())


@pytest.mark.parametrize("where", ["file", pytest.param("s3", marks=[pytest.mark.s3, pytest.mark.integration])])
def test_writes_go_on_while_children_build(tmp_path, where, request):
    """Upserts, overwrites and deletes keep committing while child processes build and
    commit beside them (each build rebases over the writes that came meanwhile): every
    acknowledged write is there afterwards, and no deleted id is ever answered, also by a
    second worker that read the namespace before the builds and idled since. On a local
    directory, and on a real S3 server (SeaweedFS), whose settings the child gets on stdin."""
    store = {}
    if where == "s3":
        s3 = request.getfixturevalue("s3_settings")
        store = {k: getattr(s3, k) for k in ("store_uri", "s3_endpoint", "s3_access_key", "s3_secret_key",
                                             "s3_retries", "s3_backoff_s", "s3_timeout_s")}
    service = Service(_settings(tmp_path, **store))
    other = Service(_settings(tmp_path, auto_index=False, **store))  # another worker, on its own cache
    try:
        service.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        service.committer.commit_batches(NS, [_rows(0, 100)], DIMS)
        other.query(NS, vector=[0.0] * DIMS, top_k=5)  # holds the first version, then idles
        expected: dict[str, int] = {f"d{i}": i for i in range(100)}
        deleted: set[str] = set()
        for n in range(1, 30):
            batch = _rows(n * 100, 100)
            gone = [f"d{i}" for i in range((n - 1) * 100, (n - 1) * 100 + 10)]  # some of the last batch
            again = _rows(n * 1000 + 7, 5)  # overwrites of older rows, with new vectors
            again.upserts.ids[:] = [f"d{i}" for i in range(50 + n, 55 + n)]  # never among the deleted
            service.committer.commit_batches(NS, [batch, WriteBatch(again.upserts, gone)], DIMS)
            expected.update({i: n * 100 + k for k, i in enumerate(batch.upserts.ids)})
            for i in gone:
                expected.pop(i, None)
            deleted |= set(gone)
            expected.update({i: -1 for i in again.upserts.ids})
            time.sleep(0.05)  # a child takes ~0.5 s to build: writes land during its build
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = service.stats()["background_builds"]
            if stats["started"] == stats["built"] + stats["failed"] and service.indexer.lock(NS).acquire(blocking=False):
                service.indexer.lock(NS).release()
                break
            time.sleep(0.1)
        stats = service.stats()["background_builds"]
        assert stats["started"] >= 2 and stats["failed"] == 0
        for worker in (service, other):
            ids = sorted(expected)
            docs = [d for lo in range(0, len(ids), 1000) for d in worker.get_documents(NS, ids[lo : lo + 1000])]
            assert {d["id"] for d in docs} == set(expected)
            assert not {d["id"] for d in worker.get_documents(NS, sorted(deleted))}
            for probe in range(0, 3000, 250):
                hits = worker.query(NS, vector=_rows(probe, 1).upserts.vectors[0].tolist(), top_k=50).hits
                assert not {h.id for h in hits} & deleted
        # The ids the loop overwrote hold their new text (the overwrite's, not the first).
        overwritten = {d["id"]: d for d in service.get_documents(NS, [i for i, v in expected.items() if v == -1])}
        assert overwritten and all(not d["text"].endswith(f" {d['id'][1:]}") for d in overwritten.values())
    finally:
        other.close()
        service.close()


def test_a_thread_build_when_asked(tmp_path):
    service = Service(_settings(tmp_path, background_builds="thread"))
    try:
        service.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        service.committer.commit_batches(NS, [_rows(0, 400)], DIMS)
        _wait_indexed(service, 400)
        assert "background_builds" not in service.stats()
    finally:
        service.close()


def test_a_dropped_namespace_is_no_failure(tmp_path):
    settings = _settings(tmp_path, auto_index=False)
    service = Service(settings)
    try:
        service.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        service.committer.commit_batches(NS, [_rows(0, 400)], DIMS)
        service.drop_namespace(NS)
        children = ChildBuilds(settings)
        assert children.run(NS) == {"dropped": True}
        assert children.stats.built == 1 and children.stats.failed == 0
    finally:
        service.close()


def _unindexed_namespace(tmp_path) -> tuple[Settings, Service]:
    """200,000 unindexed rows: a build of them takes seconds (time to stop it midway)."""
    settings = _settings(tmp_path, auto_index=False, flat_max_rows=1000, rows_per_partition=200)
    service = Service(settings)
    service.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
    for start in range(0, 200_000, 50_000):
        service.committer.commit_batches(NS, [_rows(start, 50_000)], DIMS)
    return settings, service


def test_a_stopped_build_leaves_nothing_visible(tmp_path):
    """``close()`` while the child builds: it ends at once, its spill directory is removed,
    and the namespace is as it was."""
    settings, service = _unindexed_namespace(tmp_path)
    try:
        before = service.catalog.latest(NS)
        children = ChildBuilds(settings)
        result: list = []
        runner = threading.Thread(target=lambda: result.append(children.run(NS)))
        runner.start()
        deadline = time.monotonic() + 30
        while not (tmp_path / "spill").exists() or not any((tmp_path / "spill").iterdir()):
            assert time.monotonic() < deadline, "the build never started spilling"
            time.sleep(0.02)
        stopped_at = time.monotonic()
        children.close()
        runner.join(15)
        assert not runner.is_alive() and time.monotonic() - stopped_at < 10
        assert result == [None]  # stopped, not finished: 200,000 rows take seconds to build
        assert children.stats.stopped == 1 and children.stats.failed == 0
        assert service.catalog.latest(NS).version == before.version
        assert not any((tmp_path / "spill").iterdir())
        # Nothing lost: an index now holds every row.
        service.index(NS)
        assert sum(seg.live_rows for seg in service.catalog.latest(NS).segments) == 200_000
    finally:
        service.close()


def _background_child(tmp_path) -> tuple[Service, subprocess.Popen]:
    """A service whose commits of 200,000 rows started a background build in a child (it
    takes seconds), and that child."""
    settings = _settings(tmp_path, flat_max_rows=1000, rows_per_partition=200, index_threshold_rows=150_000)
    service = Service(settings)
    service.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
    for start in range(0, 200_000, 50_000):
        service.committer.commit_batches(NS, [_rows(start, 50_000)], DIMS)
    children = service.indexer.children
    deadline = time.monotonic() + 30
    while not children._children:
        assert time.monotonic() < deadline, f"no background build started: {service.stats()}"
        time.sleep(0.01)
    (child,) = children._children
    return service, child


def _index_within(service: Service, timeout_s: float, child: subprocess.Popen):
    results: list = []
    explicit = threading.Thread(target=lambda: results.append(service.index(NS)), daemon=True)
    explicit.start()
    explicit.join(timeout_s)
    if explicit.is_alive():  # waiting for a stopped child: let it go, so the test ends
        os.kill(child.pid, signal.SIGKILL)
        raise AssertionError(f"the explicit index waited over {timeout_s} s for the background build")
    return results[0]


def _all_indexed(service: Service, tmp_path) -> None:
    manifest = service.catalog.latest(NS)
    assert not manifest.wal and sum(seg.live_rows for seg in manifest.segments) == 200_000
    assert not any((tmp_path / "spill").iterdir())
    hits = service.query(NS, vector=_rows(150_000, 10).upserts.vectors[3].tolist(), top_k=1).hits
    assert hits[0].id == "d150003"


def test_an_explicit_index_stops_a_starved_background_build(tmp_path):
    """An idle-class child gets no CPU while the server is busy (stopped here with SIGSTOP,
    the extreme of it): an explicit index does not wait for it. It stops the child, builds
    every row itself, and the stopped child leaves nothing behind."""
    service, child = _background_child(tmp_path)
    try:
        os.kill(child.pid, signal.SIGSTOP)
        before = service.catalog.latest(NS).version
        result = _index_within(service, 60, child)
        child.wait(15)
        assert result.indexed_rows == 200_000 and result.version > before
        stats = service.stats()["background_builds"]
        assert stats["started"] == 1 and stats["preempted"] == 1 and stats["failed"] == 0 and stats["built"] == 0
        _all_indexed(service, tmp_path)
    finally:
        service.close()


def test_an_explicit_index_waits_for_a_background_build_that_runs(tmp_path, monkeypatch):
    """A child that gets CPU (here: any at all, so that a busy test machine cannot starve
    it) is waited for, not stopped: its work is not thrown away, and the explicit index
    finds nothing left to build."""
    monkeypatch.setattr(build_process, "STARVED_SHARE", 0.001)
    service, child = _background_child(tmp_path)
    try:
        result = _index_within(service, 120, child)
        assert result.indexed_rows == 0  # the child built it all
        stats = service.stats()["background_builds"]
        assert stats["started"] == 1 and stats["built"] == 1 and stats["preempted"] == 0
        _all_indexed(service, tmp_path)
    finally:
        service.close()


def test_only_a_child_that_neither_computes_nor_moves_bytes_counts_as_starved(tmp_path):
    """``stop_starved``: a child waiting on I/O (here writing ~5 MB/s with little CPU, as a
    build waiting on a slow upload) is not starved; one that does nothing is, and is stopped."""
    children = ChildBuilds(_settings(tmp_path))
    writer = subprocess.Popen([sys.executable, "-c", "import os, time\nfd = os.open(os.devnull, os.O_WRONLY)\n"
                               "while True:\n    os.write(fd, bytes(512 * 1024))\n    time.sleep(0.1)\n"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        children._children.update({writer: NS, idle: NS})
        time.sleep(0.5)  # both past their start-up
        children.stop_starved(NS)  # the first call only samples
        time.sleep(1.0)
        children.stop_starved(NS)
        assert idle.wait(10) is not None and idle in children._preempted
        assert writer.poll() is None and writer not in children._preempted
    finally:
        for child in (writer, idle):
            child.kill()
            child.wait()


def test_no_background_build_starts_beside_an_explicit_one(tmp_path):
    settings, service = _unindexed_namespace(tmp_path)
    try:
        children = ChildBuilds(settings)
        with children.explicit(NS):
            assert children.run(NS) is None  # not started: the explicit build covers it
        assert children.stats.started == 0
        assert children.run(NS)["indexed_rows"] == 200_000  # after it, as before
        assert children.stats.built == 1
    finally:
        service.close()


_PARENT = """
import sys, threading, time
from pathlib import Path
from ingest.build_process import ChildBuilds
from vectordb.settings import Settings

children = ChildBuilds(Settings.model_validate_json(sys.stdin.read()))
threading.Thread(target=children.run, args=(sys.argv[1],), daemon=True).start()
spill = Path(sys.argv[2])
while not any(spill.iterdir()):
    time.sleep(0.02)
print(next(iter(children._children)).pid, flush=True)
time.sleep(600)
"""


def test_a_build_ends_with_its_killed_parent(tmp_path):
    """An ingest worker killed (SIGKILL) mid-build takes its build process with it: no
    orphan goes on building, and its spill directory is removed."""
    settings, service = _unindexed_namespace(tmp_path)
    try:
        before = service.catalog.latest(NS).version
        parent = subprocess.Popen([sys.executable, "-c", _PARENT, NS, str(tmp_path / "spill")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            parent.stdin.write(settings.model_dump_json())
            parent.stdin.close()
            child = int(parent.stdout.readline())
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(10)
            deadline = time.monotonic() + 10
            while _alive(child):
                assert time.monotonic() < deadline, "the build process outlived its parent"
                time.sleep(0.05)
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()
        assert not any((tmp_path / "spill").iterdir())
        assert service.catalog.latest(NS).version == before
    finally:
        service.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (not a zombie: an orphan's parent is init, which reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(("nice", "idle"), [(0, False), (7, False), (0, True)])
def test_the_child_runs_at_the_background_priority(tmp_path, nice, idle):
    """The child lowers its whole process's priority by ``background_nice`` and, with
    ``background_idle``, takes the idle class."""
    settings = _settings(tmp_path, auto_index=False, background_nice=nice, background_idle=idle)
    service = Service(settings)
    try:
        service.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        service.committer.commit_batches(NS, [_rows(0, 50)], DIMS)
    finally:
        service.close()
    out = subprocess.run(
        [sys.executable, "-c",
         "import os, json, sys, runpy\n"
         "import ingest.indexer as s\n"
         "orig = s.Indexer.index\n"
         "def index(self, ns, compact=False):\n"
         "    print(json.dumps({'nice': os.getpriority(os.PRIO_PROCESS, 0), 'policy': os.sched_getscheduler(0)}),\n"
         "          file=sys.stderr)\n"
         "    return orig(self, ns, compact)\n"
         "s.Indexer.index = index\n"
         "from ingest import build_process\n"
         "sys.exit(build_process.main([sys.argv[1], str(os.getppid())]))\n", NS],
        input=settings.model_dump_json(), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads([line for line in out.stderr.splitlines() if line.startswith("{")][-1])
    assert seen["nice"] == min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
    assert seen["policy"] == (os.SCHED_IDLE if idle else os.sched_getscheduler(0))
    assert json.loads(out.stdout.strip().splitlines()[-1])["indexed_rows"] == 50
