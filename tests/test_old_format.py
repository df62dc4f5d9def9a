"""A namespace written by the segment format before by-range reads (commit 9b6d589:
``docs.parquet`` and a whole ``bm25.bin`` per segment, see ``fixtures/format-9b6d589``)
is read as it is, and compaction rewrites it in today's format with the same answers."""

from __future__ import annotations

import shutil

import pytest

from api.service import Service
from tests.fakes import unit_settings
from vectordb.errors import DocumentNotFound

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "format-9b6d589"
LIVE = [f"d{i}" for i in range(120) if i not in (3, 4)] + ["tail1"]


@pytest.fixture
def service(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "store", ignore=shutil.ignore_patterns("*.py"))
    svc = Service(unit_settings(f"file://{tmp_path / 'store'}"))
    yield svc
    svc.close()


def _answers(svc: Service) -> dict:
    vector = svc.query("kb", vector=[1.0, 5.0, 0.0, 0.5], top_k=5, include=["text", "attributes"])
    filtered = svc.query("kb", vector=[1.0, 0.0, 0.0, 0.5], top_k=200, filter={"year": {"$gte": 2015}})
    tenant = svc.query("kb", vector=[1.0, 0.0, 0.0, 0.5], top_k=200, filter={"tenant": "t2", "tags": {"$contains": "g1"}})
    lexical = svc.query("kb", text="vitamin", mode="bm25", top_k=200)
    return {
        "vector": [(h.id, h.text, h.attributes) for h in vector.hits],
        "filtered": sorted(h.id for h in filtered.hits),
        "tenant": sorted(h.id for h in tenant.hits),
        "bm25": sorted(h.id for h in lexical.hits),
        "get": [svc.get_document("kb", i) for i in ("d5", "d7", "tail1")],
        "listed": sorted(d["id"] for d in svc.list_documents("kb", limit=1000)["documents"]),
    }


def test_old_segments_answer_every_kind_of_read(service):
    manifest = service.catalog.latest("kb")
    assert [service.reader.by_range("kb", seg) for seg in manifest.segments] == [None, None]  # the old layout
    got = _answers(service)
    assert got["vector"][0] == ("d5", "note 5 rewritten", {"year": 1999})
    assert got["filtered"] == sorted(f"d{i}" for i in range(120) if i % 20 >= 15 and i not in (3, 4)) + ["tail1"]
    assert got["tenant"] == sorted(f"d{i}" for i in range(120) if i % 5 == 2 and i % 3 == 1)
    assert got["bm25"] == sorted(f"d{i}" for i in range(1, 120, 2) if i not in (3, 5))
    assert got["get"][0]["text"] == "note 5 rewritten" and got["get"][2]["attributes"] == {"year": 2030}
    assert got["listed"] == sorted(LIVE)
    with pytest.raises(DocumentNotFound):
        service.get_document("kb", "d3")


def test_compaction_rewrites_them_in_the_new_format_with_the_same_answers(service):
    before = _answers(service)
    service.index("kb", compact=True)
    manifest = service.catalog.latest("kb")
    assert manifest.segments and all(service.reader.by_range("kb", seg) is not None for seg in manifest.segments)
    assert _answers(service) == before
