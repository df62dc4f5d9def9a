"""The pieces a broad filter's scan and a warm query lean on: rows scored where they are
(no copy), live masks sliced from one mask per tombstone list, hits' ids read one by one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import ivf, segment

ivf._faiss()  # loaded, as on a warm worker; the numpy fallback is tested on its own


@settings(max_examples=60, deadline=None)
@given(st.data())
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_picked_rows_are_the_scan_of_the_kept_rows(metric: str, data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    vectors = rng.normal(size=(data.draw(st.integers(1, 80)), 8)).astype(np.float32)
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, len(vectors) - 1), min_size=1))), np.int64)
    q = rng.normal(size=8).astype(np.float32)
    k = data.draw(st.integers(1, 30))
    picked = ivf.scan_rows(vectors, rows, q, k, metric)
    scores, at = ivf.scan(vectors[rows], q, k, metric)
    assert sorted(picked.tolist()) == sorted(rows[at].tolist())


def test_picked_rows_before_faiss_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ivf, "_faiss_if_loaded", lambda: None)
    rng = np.random.default_rng(3)
    vectors, q = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    rows = np.arange(0, 50, 3)
    picked = ivf.scan_rows(vectors, rows, q, 4, "cosine")
    assert picked.tolist() == rows[ivf.scan(vectors[rows], q, 4, "cosine")[1]].tolist()


def _service(n: int = 400) -> Service:
    svc = Service(unit_settings(), store=MemoryStore())
    svc.create_namespace("kb", "none", 4, "l2")
    svc.upsert("kb", [{"id": f"d{i}", "vector": [1.0, float(i % 7), float(i % 3), 0.5], "text": f"note {i}"}
                      for i in range(n)])
    svc.index("kb")
    svc.delete("kb", [f"d{i}" for i in range(0, n, 9)])
    svc.index("kb")  # the deletes become the segment's tombstone list, with their rows
    return svc


def test_live_masks_without_a_tail_are_slices_of_one_mask() -> None:
    svc = _service()
    reader, manifest = svc.engine.reader, svc.catalog.latest("kb")
    [seg] = manifest.segments
    layout = reader.layout("kb", seg)
    dead, tail = reader.tombstones("kb", seg), reader.tail(manifest)
    assert reader.dead_rows("kb", seg) is not None and not tail.touched
    whole = reader.live_mask("kb", seg, tail)
    for p in range(layout.nlist):
        part = reader.partition("kb", seg, layout, p)
        live = reader.partition_live("kb", seg, p, part, tail)
        assert live.tolist() == [i not in dead for i in part.ids]
        lo = int(layout.part_rows[p])
        assert live.tolist() == whole[lo : lo + len(part.ids)].tolist()
    # A tail that overrides ids of the segment clears their rows too.
    svc.upsert("kb", [{"id": "d1", "vector": [0.0, 0.0, 0.0, 1.0], "text": "replaced"}])
    manifest = svc.catalog.latest("kb")
    tail = reader.tail(manifest)
    p = next(p for p in range(layout.nlist) if "d1" in list(reader.partition("kb", seg, layout, p).ids))
    part = reader.partition("kb", seg, layout, p)
    live = reader.partition_live("kb", seg, p, part, tail)
    assert live.tolist() == [i not in dead and i != "d1" for i in part.ids]


def test_tombstone_rows_are_decoded_ascending() -> None:
    decoded = segment.decode_tombstones(b'{"ids": ["a", "b", "c"], "rows": [9, 2, 5]}')
    assert decoded.rows.tolist() == [2, 5, 9]


def test_hits_ids_are_the_same_one_by_one_or_taken_per_partition() -> None:
    svc = _service()
    reader, [seg] = svc.engine.reader, svc.catalog.latest("kb").segments
    assert reader.by_range("kb", seg) is not None
    everything = reader.ids("kb", seg)
    few = np.array([3, 50, 51, 399])  # a scalar each
    many = np.arange(0, 400, 2)  # a take per partition
    assert reader.row_ids("kb", seg, few) == [everything[r] for r in few]
    assert reader.row_ids("kb", seg, many) == [everything[r] for r in many]
