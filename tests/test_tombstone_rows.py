"""Tombstone lists carry their ids' rows, so a query's live mask after deletes reads no id
lookups: with 1 % of a large segment deleted, the BM25, hybrid and filtered paths once
fetched an ``ids.bin`` bucket per dead id (thousands of GETs at 1M rows). Lists written
before rows were (ids only) are still read, and the next index build adds the rows."""

from __future__ import annotations

import json

from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import segment

N = 400


class _Reads(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def get(self, key: str) -> bytes:
        self.keys.append(key)
        return super().get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.keys.append(key)
        return super().get_range(key, start, length)


def _docs(n: int) -> list[dict]:
    return [{"id": f"d{i}", "vector": [1.0, float(i % 7), float(i % 3), 0.5],
             "text": f"note {i} about {'vitamin' if i % 2 else 'statin'}", "attributes": {"k": i % 5}}
            for i in range(n)]


def _answers(svc: Service) -> tuple:
    lexical = svc.query("kb", text="vitamin", mode="bm25", top_k=N)
    hybrid = svc.query("kb", text="vitamin", vector=[1.0, 3.0, 1.0, 0.5], mode="hybrid", top_k=20)
    filtered = svc.query("kb", vector=[1.0, 3.0, 1.0, 0.5], top_k=N, filter={"k": 2})
    return tuple(sorted(h.id for h in r.hits) for r in (lexical, hybrid, filtered))


def _build(store: MemoryStore) -> Service:
    svc = Service(unit_settings(), store=store)
    svc.create_namespace("kb", "none", 4, "l2")
    svc.upsert("kb", _docs(N))
    svc.index("kb")
    svc.delete("kb", [f"d{i}" for i in range(0, N, 9)])
    svc.upsert("kb", [{"id": "d1", "vector": [0.0, 0.0, 0.0, 1.0], "text": "replaced"}])
    svc.index("kb")
    return svc


def test_a_fresh_reader_masks_dead_rows_without_looking_their_ids_up():
    store = _Reads()
    writer = _build(store)
    [old] = [s for s in writer.catalog.latest("kb").segments if s.tombstones_key]
    tombstones = json.loads(store.get(old.tombstones_key))
    assert set(tombstones) == {"ids", "rows"} and len(tombstones["rows"]) == len(tombstones["ids"]) == N // 9 + 1 + 1
    store.keys.clear()
    reader = Service(unit_settings(), store=store)
    got = _answers(reader)
    assert not [k for k in store.keys if k.endswith("/ids.bin")], "a dead id was looked up"
    dead = {f"d{i}" for i in range(0, N, 9)}
    assert not dead & {i for ids in got for i in ids}
    assert got == _answers(writer)


def test_a_list_without_rows_is_read_and_the_next_build_adds_them():
    store = MemoryStore()
    svc = _build(store)
    [seg] = [s for s in svc.catalog.latest("kb").segments if s.tombstones_key]
    ids = json.loads(store.get(seg.tombstones_key))["ids"]
    store.put(seg.tombstones_key, segment.encode_tombstones(set(ids)))  # as an older writer wrote it
    before = _answers(Service(unit_settings(), store=store))
    assert before == _answers(svc)
    svc.delete("kb", ["d2"])
    svc.index("kb")
    [seg] = [s for s in svc.catalog.latest("kb").segments if s.tombstones_key and s.id == seg.id]
    assert len(json.loads(store.get(seg.tombstones_key))["rows"]) == len(ids) + 1
    fresh = _answers(Service(unit_settings(), store=store))
    assert "d2" not in {i for ids in fresh for i in ids}
