"""Issue 13: index builds in bounded memory, tiered compaction, crash safety of a build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from api.service import Service
from ingest import compaction
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import bm25_blocks, bm25_spill, segment
from vectordb.manifest import SegmentRef
from vectordb.rows import RowBatch

ROOT = Path(__file__).resolve().parent.parent


def _rows(n: int, dims: int = 16, seed: int = 0) -> RowBatch:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dims)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = [f"d{i}#{i % 3}" for i in range(n)]
    texts = [None if i % 7 == 0 else f"apple banana {i % 11} cherry {i}" for i in range(n)]
    attrs = [json.dumps({"doc_id": f"d{i}", "year": i % 30, "k": ["a", 1][i % 2]}) if i % 5 else None for i in range(n)]
    return RowBatch(ids, v, texts, attrs)


@pytest.mark.parametrize("docs", ["by_range", "whole"])
def test_a_small_memory_bound_builds_the_same_bytes(docs):
    """Many runs and partition groups (a small bound) or one of each (a large one): the
    same files, byte for byte -- the in-memory build's order and centroids."""
    rows = _rows(9000)
    small = segment.build(rows, "cosine", 100, 50, "int8", docs=docs, memory_bytes=12 * 1024**2)
    large = segment.build(rows, "cosine", 100, 50, "int8", docs=docs, memory_bytes=4 * 1024**3)
    try:
        assert small.nlist == large.nlist == 90
        assert sorted(small.files) == sorted(large.files)
        for name in small.files:
            assert small.read(name) == large.read(name), name
    finally:
        small.close()
        large.close()
    assert small.workdir is None and not any(p.exists() for p in small.files.values())


def test_a_text_segment_spills_its_bm25_postings_and_writes_the_same_file(monkeypatch):
    """A segment of hashed BM25 (20,000 rows or more) whose postings pass an eighth of
    the bound spills them in runs (vectordb.bm25_spill) and writes the bm25.bin the
    unbounded build writes."""
    spills = []
    real = bm25_spill.PostingsWriter._spill
    monkeypatch.setattr(bm25_spill.PostingsWriter, "_spill", lambda self: spills.append(1) or real(self))
    rows = _rows(24_000)
    rows = RowBatch(rows.ids, rows.vectors, [f"{t} durian {i % 97} elder {i % 13}" if t else t
                                             for i, t in enumerate(rows.texts)], rows.attributes)
    small = segment.build(rows, "cosine", 100, 50_000, "int8", memory_bytes=8 * 1024**2)  # one flat partition
    spilled = len(spills)
    large = segment.build(rows, "cosine", 100, 50_000, "int8", memory_bytes=4 * 1024**3)
    try:
        assert spilled >= 2 and len(spills) == spilled  # the unbounded build spilled nothing
        assert small.read("bm25.bin") == large.read("bm25.bin")
        assert bm25_blocks.Head.from_bytes(small.read("bm25.bin")[: bm25_blocks.HEAD_BYTES]).slots
    finally:
        small.close()
        large.close()


_MEMORY_CHILD = textwrap.dedent("""
    import resource, sys, json
    import numpy as np
    sys.path.insert(0, {root!r})
    from vectordb import segment, ivf, bm25_blocks, attr_columns  # noqa: F401  (imports out of the measure)
    import faiss, pyarrow.parquet  # noqa: F401
    from vectordb.rows import RowBatch

    class Generated:
        # Rows made chunk by chunk, never all at once: the input is not held either.
        dims = 96
        def chunks(self, rows):
            n = {rows}
            for lo in range(0, n, rows):
                rng = np.random.default_rng(lo)
                k = min(rows, n - lo)
                v = rng.standard_normal((k, self.dims)).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                ids = [f"row-{{i}}" for i in range(lo, lo + k)]
                attrs = [json.dumps({{"year": i % 40}}) for i in range(lo, lo + k)]
                yield RowBatch(ids, v, [None] * k, attrs)

    faiss.omp_set_num_threads(1)
    ivf.train_centroids(np.random.default_rng(0).standard_normal((5000, 96)).astype(np.float32), 20, "cosine")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    built = segment.build(Generated(), "cosine", 1000, 2048, "float32", memory_bytes={bound})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({{"before": before, "peak": peak, "rows": built.rows, "bytes": built.bytes}}))
    built.close()
""")


def test_build_peak_memory_stays_near_the_bound(tmp_path):
    """A segment of 300,000 × 96 float32 rows (115 MB of vectors alone, ~140 MB of files)
    built with a 48 MB bound: the process's peak RSS grows by less than the bound plus a
    margin for allocator slack (an in-memory build needs several times the input)."""
    bound = 48 * 1024**2
    script = tmp_path / "child.py"
    script.write_text(_MEMORY_CHILD.format(root=str(ROOT), rows=300_000, bound=bound))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["rows"] == 300_000 and measured["bytes"] > 115_000_000
    grown = measured["peak"] - measured["before"]
    assert grown < bound + 40 * 1024**2, f"peak grew {grown / 2**20:.0f} MiB over a {bound / 2**20:.0f} MiB bound"


# --- the compaction policy -----------------------------------------------------------------------


def _seg(i: int, rows: int, tombstones: int = 0) -> SegmentRef:
    return SegmentRef(f"s{i:03d}", rows, 1, 0, "t" if tombstones else None, tombstones)


def test_tiered_policy_merges_one_tier_of_fan_in_segments():
    small = tuple(_seg(i, 20_000) for i in range(8))
    assert len(compaction.plan(small, False, 20_000, 8, 5_000_000)) == 8
    assert compaction.plan(small[:7], False, 20_000, 8, 5_000_000) == []
    mixed = small[:7] + tuple(_seg(100 + i, 160_000) for i in range(8))
    picked = compaction.plan(mixed, False, 20_000, 8, 5_000_000)
    assert {s.rows for s in picked} == {160_000} and len(picked) == 8


def test_no_merge_passes_the_maximum_segment_size():
    big = tuple(_seg(i, 3_000_000) for i in range(8))
    assert compaction.plan(big, False, 20_000, 8, 5_000_000) == []
    picked = compaction.plan(big + (_seg(50, 10_000), _seg(51, 10_000)), True, 20_000, 8, 5_000_000)
    assert sum(s.live_rows for s in picked) <= 5_000_000
    assert {s.id for s in picked} == {"s050", "s051", "s000"}


def test_explicit_compaction_of_a_large_namespace_keeps_several_segments():
    settings = unit_settings().model_copy(update={"segment_max_rows": 300, "auto_index": False})
    svc = Service(settings, store=MemoryStore())
    svc.create_namespace("ns", "none", 8, "dot")
    rng = np.random.default_rng(1)
    for b in range(6):
        svc.upsert("ns", [{"id": f"r{b}-{i}", "vector": rng.standard_normal(8).tolist()} for i in range(100)])
        svc.index("ns")
    svc.index("ns", compact=True)
    manifest = svc.catalog.latest("ns")
    assert len(manifest.segments) >= 2
    assert all(s.live_rows <= 300 for s in manifest.segments)
    assert sum(s.live_rows for s in manifest.segments) == 600


# --- the indexer streams; answers are those of the whole rows --------------------------------------


def _service(store=None, **update) -> Service:
    settings = unit_settings().model_copy(update={"auto_index": False, "build_memory_bytes": 16 * 1024**2, **update})
    return Service(settings, store=store or MemoryStore())


def test_compaction_through_the_streamed_builder_keeps_every_answer():
    svc = _service(flat_max_rows=50, rows_per_partition=40)
    svc.create_namespace("ns", "none", 16, "cosine")
    rows = _rows(1200)
    for lo in range(0, 1200, 200):
        docs = [{"id": rows.ids[i], "vector": rows.vectors[i].tolist(), "text": rows.texts[i],
                 "attributes": json.loads(rows.attributes[i]) if rows.attributes[i] else {}} for i in range(lo, lo + 200)]
        svc.upsert("ns", docs)
        svc.index("ns")
    svc.delete("ns", ids=rows.ids[:100])
    queries = _rows(20, seed=9).vectors
    nprobe = 1000  # every partition: exact, so the answers depend on the rows only
    before = [[h.id for h in svc.query("ns", vector=q.tolist(), top_k=10, nprobe=nprobe).hits] for q in queries]
    svc.index("ns", compact=True)
    assert len(svc.catalog.latest("ns").segments) == 1
    after = [[h.id for h in svc.query("ns", vector=q.tolist(), top_k=10, nprobe=nprobe).hits] for q in queries]
    assert before == after
    live = rows.vectors[100:]
    truth = [[rows.ids[100 + i] for i in np.argsort(-(live @ q))[:10]] for q in queries]
    assert after == truth
    hit = svc.query("ns", vector=rows.vectors[501].tolist(), top_k=1, include=["text", "attributes"]).hits[0]
    assert (hit.id, hit.text, hit.attributes) == (rows.ids[501], rows.texts[501], json.loads(rows.attributes[501]))


# --- crash safety -----------------------------------------------------------------------------------


class _FailingStore(MemoryStore):
    """Fails the ``fail_after``-th segment file upload."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_after: int | None = None
        self.uploads = 0

    def put_file(self, key, path) -> None:
        self.uploads += 1
        if self.fail_after is not None and self.uploads >= self.fail_after:
            raise OSError("injected: the build dies here")
        super().put_file(key, path)


def test_a_build_that_dies_mid_upload_changes_nothing_and_gc_removes_its_objects():
    store = _FailingStore()
    svc = _service(store, gc_grace_s=0, retain_manifests=1)
    svc.create_namespace("ns", "none", 16, "cosine")
    rows = _rows(600)
    svc.upsert("ns", [{"id": i, "vector": v.tolist()} for i, v in zip(rows.ids[:300], rows.vectors)])
    svc.index("ns")
    svc.upsert("ns", [{"id": i, "vector": v.tolist()} for i, v in zip(rows.ids[300:], rows.vectors[300:])])
    before = svc.catalog.latest("ns")
    segment_objects = {k.key for k in store.list("ns/segments/")}
    store.fail_after = store.uploads + 4
    with pytest.raises(OSError, match="injected"):
        svc.index("ns", compact=True)
    assert svc.catalog.latest("ns").version == before.version  # no visible change
    partial = {k.key for k in store.list("ns/segments/")} - segment_objects
    assert partial  # some files of the new segment were uploaded
    fresh = _service(store)
    assert fresh.query("ns", vector=rows.vectors[450].tolist(), top_k=1).hits[0].id == rows.ids[450]
    assert fresh.query("ns", vector=rows.vectors[10].tolist(), top_k=1).hits[0].id == rows.ids[10]
    svc.collect_garbage("ns")
    assert not partial & {k.key for k in store.list("ns/segments/")}


_KILLED_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from api.service import Service
    from storage.local import LocalStore
    from tests.fakes import unit_settings

    class Slow(LocalStore):
        def put_file(self, key, path):
            super().put_file(key, path)
            print("uploaded", key, flush=True)
            time.sleep(30)  # killed here, after the first file of the segment

    settings = unit_settings("file://{root_store}").model_copy(
        update={{"auto_index": False, "build_temp_dir": {build_dir!r}}})
    svc = Service(settings, store=Slow({root_store!r}))
    svc.index("ns", compact=True)
""")


def test_a_killed_build_changes_nothing_and_gc_removes_its_objects(tmp_path):
    root, build_dir = tmp_path / "store", tmp_path / "builds"
    build_dir.mkdir()
    settings = unit_settings(f"file://{root}").model_copy(update={"auto_index": False, "gc_grace_s": 0,
                                                                   "retain_manifests": 1,
                                                                   "build_temp_dir": str(build_dir)})
    svc = Service(settings)
    svc.create_namespace("ns", "none", 16, "cosine")
    rows = _rows(400)
    svc.upsert("ns", [{"id": i, "vector": v.tolist()} for i, v in zip(rows.ids[:200], rows.vectors)])
    svc.index("ns")
    svc.upsert("ns", [{"id": i, "vector": v.tolist()} for i, v in zip(rows.ids[200:], rows.vectors[200:])])
    before = svc.catalog.latest("ns").version
    objects = {o.key for o in svc.store.list("ns/segments/")}
    script = tmp_path / "child.py"
    script.write_text(_KILLED_CHILD.format(root=str(ROOT), root_store=str(root), build_dir=str(build_dir)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.startswith("uploaded"), line
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    time.sleep(0.1)
    fresh = Service(settings)
    assert fresh.catalog.latest("ns").version == before
    partial = {o.key for o in fresh.store.list("ns/segments/")} - objects
    assert partial
    assert fresh.query("ns", vector=rows.vectors[300].tolist(), top_k=1).hits[0].id == rows.ids[300]
    fresh.collect_garbage("ns")
    assert not partial & {o.key for o in fresh.store.list("ns/segments/")}
    left = list(build_dir.iterdir())
    assert [p.name for p in left] and all(str(child.pid) in p.name for p in left)  # its spill, killed with it
    fresh.index("ns", compact=True)  # and a later build goes through, removing what the killed one left
    assert fresh.query("ns", vector=rows.vectors[300].tolist(), top_k=1).hits[0].id == rows.ids[300]
    assert list(build_dir.iterdir()) == []


def test_a_build_leaves_the_working_directories_of_live_processes_and_other_hosts(tmp_path):
    from vectordb import segment_writer

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = segment_writer._host()
    mine = tmp_path / f"vectordb-build-{host}-{os.getpid()}-abc"
    live = tmp_path / f"vectordb-build-{host}-1-abc"  # pid 1 is alive
    other_host = tmp_path / f"vectordb-build-{host}x-{dead.pid}-abc"
    killed = tmp_path / f"vectordb-build-{host}-{dead.pid}-abc"
    unrelated = tmp_path / "vectordb-build-abc"
    for d in (mine, live, other_host, killed, unrelated):
        (d / "sub").mkdir(parents=True)
    segment_writer._sweep_killed_builds(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(d.name for d in (mine, live, other_host, unrelated))


# --- one probe budget across segments -----------------------------------------------------------


class _CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.partition_reads = 0

    def get_range(self, key, start, length):
        if key.endswith("/vectors.bin"):
            self.partition_reads += 1
        return super().get_range(key, start, length)


def test_many_segments_share_one_probe_budget_and_keep_recall():
    """Six segments of 40-row partitions: a query reads the namespace's best
    ``default_nprobe(150)`` = 8 partitions and tops each segment up to 2 of its own, not 8
    in each segment, and recall@10 against brute force stays high."""
    store = _CountingStore()
    svc = _service(store)
    svc.create_namespace("ns", "none", 16, "cosine")
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((60, 16)).astype(np.float32)
    vectors = centres[rng.integers(0, 60, 6000)] + 0.3 * rng.standard_normal((6000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for lo in range(0, 6000, 1000):
        svc.upsert("ns", [{"id": f"v{i}", "vector": vectors[i].tolist()} for i in range(lo, lo + 1000)])
        svc.index("ns")
    manifest = svc.catalog.latest("ns")
    assert len(manifest.segments) == 6 and sum(s.nlist for s in manifest.segments) == 150
    queries = vectors[rng.integers(0, 6000, 30)] + 0.1 * rng.standard_normal((30, 16)).astype(np.float32)
    found = 0
    for q in queries:
        truth = {f"v{i}" for i in np.argsort(-(vectors @ q))[:10]}
        before = store.partition_reads
        hits = _service(store).query("ns", vector=q.tolist(), top_k=10).hits  # cold: every partition read counts
        assert store.partition_reads - before <= 8 + 2 * 6  # the budget, and at most 2 more per segment
        found += len(truth & {h.id for h in hits})
    assert found / 300 >= 0.9


def test_a_build_past_the_two_level_threshold_assigns_rows_to_their_nearest_centroids():
    """With ivf.TWO_LEVEL_MIN_CENTROIDS centroids or more, a build assigns rows in two
    levels: nearly every row still sits in the partition of its nearest centroid, and the
    same bytes come out whatever the memory bound."""
    from vectordb import ivf

    rows = _rows(2 * ivf.TWO_LEVEL_MIN_CENTROIDS + 500, dims=8, seed=3)
    small = segment.build(rows, "cosine", 2, 50, "float32", memory_bytes=16 * 1024**2)
    large = segment.build(rows, "cosine", 2, 50, "float32", memory_bytes=4 * 1024**3)
    try:
        assert small.nlist >= ivf.TWO_LEVEL_MIN_CENTROIDS
        for name in small.files:
            assert small.read(name) == large.read(name), name
        layout = segment.Layout.from_bytes(small.read("ivf.bin"))
        data = small.read("vectors.bin")
        parts = []
        for p in range(layout.nlist):
            start, length = layout.byte_range(p)
            parts.append(segment.decode_partition(data[start : start + length], layout.rows_in(p), layout.dims).vectors)
        labels = np.repeat(np.arange(layout.nlist), np.diff(layout.part_rows))
        exact = ivf.assign(np.concatenate(parts), layout.centroids, "cosine")
        # Uniform random rows, two a partition: the hardest case for the grouping (98.6%
        # here); MiniLM-like rows at 10,000 partitions: all of them (bench/assign.py).
        assert np.mean(labels == exact) >= 0.97
    finally:
        small.close()
        large.close()
