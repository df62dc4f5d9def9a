"""Bulk import and export (ingest/bulk.py, ingest/bulk_sources.py, ``vectordb import|export``)
on a real embedded store in a temporary directory, one round through the remote client
against a real uvicorn server, and the commands run as subprocesses."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vectordb
from api.app import create_app
from ingest import bulk
from tests.fakes import unit_settings
from tests.servers import InProcessServer
from tests.test_python_api import OVERRIDES
from vectordb.errors import InvalidArgument, NamespaceNotFound

ROOT = Path(__file__).resolve().parent.parent
DIMS = 8


def _rows(n: int, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(start)
    vectors = rng.standard_normal((n, DIMS)).astype(np.float32)
    return [
        {"id": f"d{i}", "text": f"note {i}", "vector": vectors[i - start].tolist(), "attributes": {"k": i % 3}}
        for i in range(start, start + n)
    ]


def _write(path: Path, rows: list[dict]) -> Path:
    """``rows`` as JSON Lines, Parquet (``attributes`` as JSON text) or CSV (``k`` a column)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        table = pa.table(
            {
                "id": [r["id"] for r in rows],
                "text": [r["text"] for r in rows],
                "vector": pa.array([r["vector"] for r in rows], pa.list_(pa.float32())),
                "attributes": [json.dumps(r["attributes"]) for r in rows],
            }
        )
        pq.write_table(table, path, row_group_size=70)
    else:
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["id", "text", "vector", "k"])
            out.writerows([r["id"], r["text"], json.dumps(r["vector"]), r["attributes"]["k"]] for r in rows)
    return path


@pytest.fixture
def db(tmp_path):
    unit_settings()  # the fake embedder
    with vectordb.connect(f"file://{tmp_path}/store", **OVERRIDES) as database:
        yield database


def _live(ns) -> dict[str, object]:
    docs = list(ns.scan(page_size=97, include_vectors=True))
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids)), "duplicate ids"
    return {d.id: d for d in docs}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_import_file_formats(db, tmp_path, suffix):
    rows = _rows(230)
    path = _write(tmp_path / f"data{suffix}", rows)
    ns = db.create_namespace("ns", embedder="none", dimensions=DIMS)
    seen: list[int] = []
    checkpoint = bulk.Checkpoint(bulk.Checkpoint.beside(path, "ns"), path, "ns")
    result = bulk.import_file(ns, path, checkpoint, batch_size=50, progress=seen.append)
    assert (result.rows, result.batches, result.skipped, sum(seen)) == (230, 5, 0, 230)
    assert not checkpoint.path.exists()  # done: nothing to resume
    live = _live(ns)
    assert sorted(live) == sorted(r["id"] for r in rows)
    want = rows[117]
    got = live[want["id"]]
    assert got.text == want["text"]
    assert got.attributes == ({"k": str(want["attributes"]["k"])} if suffix == ".csv" else want["attributes"])
    v = np.asarray(want["vector"], np.float32)
    np.testing.assert_allclose(got.vector, v / np.linalg.norm(v), atol=1e-6)  # cosine: stored unit length


def test_rows_without_vectors_are_embedded_and_chunked(db, tmp_path):
    ns = db.create_namespace("docs", embedder="fake", chunking={"chunk_tokens": 8, "overlap_tokens": 0})
    long = " ".join(f"word{i}" for i in range(40))
    path = tmp_path / "texts.jsonl"
    path.write_text(
        json.dumps({"id": "long", "text": long}) + "\n\n" + json.dumps({"id": "short", "text": "hi"}) + "\n"
    )
    assert bulk.import_file(ns, path, None, batch_size=10).rows == 2
    ids = set(_live(ns))
    assert "short" in ids and {i for i in ids if i.startswith("long#")} and len(ids) > 2


class _FailingAfter:
    """A namespace whose ``upsert`` fails once ``calls`` upserts went through; counts rows."""

    def __init__(self, ns, calls: int | None) -> None:
        self.ns, self.calls, self.sent = ns, calls, []

    def __getattr__(self, name):
        return getattr(self.ns, name)

    def upsert(self, documents):
        if self.calls is not None and len(self.sent) >= self.calls:
            raise KeyboardInterrupt("killed")  # what a ^C does mid-import
        self.sent.append(documents.num_rows)
        return self.ns.upsert(documents)


@pytest.mark.parametrize("workers", [1, 3])
def test_interrupted_import_resumes_without_duplicates_or_loss(db, tmp_path, workers):
    rows = _rows(1000)
    path = _write(tmp_path / "data.parquet", rows)
    ns = db.create_namespace("ns", embedder="none", dimensions=DIMS)
    checkpoint = lambda: bulk.Checkpoint(tmp_path / "resume.json", path, "ns")  # noqa: E731
    killed = _FailingAfter(ns, calls=4)
    with pytest.raises(KeyboardInterrupt):
        bulk.import_file(killed, path, checkpoint(), batch_size=100, workers=workers)
    acknowledged = json.loads((tmp_path / "resume.json").read_text())["state"]["rows"]
    # Only whole batches that were acknowledged in order count; at most ``workers`` are lost.
    assert acknowledged % 100 == 0 and 400 - 100 * workers <= acknowledged <= 400
    assert len(_live(ns)) >= acknowledged

    rerun = _FailingAfter(ns, calls=None)
    result = bulk.import_file(rerun, path, checkpoint(), batch_size=100, workers=workers)
    assert result.skipped == acknowledged and sum(rerun.sent) == 1000 - acknowledged == result.rows
    assert sorted(_live(ns)) == sorted(r["id"] for r in rows)
    assert not (tmp_path / "resume.json").exists()


def test_checkpoint_of_another_input_or_namespace_is_ignored(db, tmp_path):
    path = _write(tmp_path / "data.jsonl", _rows(50))
    saved = bulk.Checkpoint(tmp_path / "c.json", path, "ns")
    saved.save(rows=40)
    assert bulk.Checkpoint(tmp_path / "c.json", path, "other").load() == {}
    assert bulk.Checkpoint(tmp_path / "c.json", path, "ns").load() == {"rows": 40}
    _write(path, _rows(51))  # the file changed: start over
    assert bulk.Checkpoint(tmp_path / "c.json", path, "ns").load() == {}


def test_directory_import_resumes_by_file(db, tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Vitamins\n\nVitamin D is made in the skin.\n")
    (docs / "sub" / "b.txt").write_text("Iron is carried by haemoglobin.\n")
    (docs / "c.bin").write_bytes(b"\x00\x01")
    (docs / ".hidden.txt").write_text("not me")
    ns = db.create_namespace("kb", embedder="fake")

    class Killed(Exception):
        pass

    class FailSecond:
        def __init__(self) -> None:
            self.uploaded: list[str] = []

        def __getattr__(self, name):
            return getattr(ns, name)

        def upload(self, path, **options):
            if len(self.uploaded) == 1:
                raise Killed
            self.uploaded.append(options["document_id"])
            return ns.upload(path, **options)

    first = FailSecond()
    with pytest.raises(Killed):
        bulk.import_directory(first, docs, bulk.Checkpoint(bulk.Checkpoint.beside(docs, "kb"), docs, "kb"))
    assert first.uploaded == ["a.md"]
    result = bulk.import_directory(ns, docs, bulk.Checkpoint(bulk.Checkpoint.beside(docs, "kb"), docs, "kb"))
    assert (result.rows, result.skipped, result.skipped_files) == (1, 1, ["c.bin"])
    parents = {d.attributes.get("doc_id") for d in _live(ns).values()}
    assert parents == {"a.md", "sub/b.txt"}


def test_clear_errors(db, tmp_path):
    ns = db.create_namespace("ns", embedder="none", dimensions=DIMS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rows(1)[0]) + "\n{not json\n")
    with pytest.raises(InvalidArgument, match="bad.jsonl line 2: invalid JSON"):
        bulk.import_file(ns, bad, None)
    short = _rows(3)
    short[2]["vector"] = [1.0, 2.0]
    with pytest.raises(InvalidArgument, match="row 3: the vector has 2 values; the namespace takes 8"):
        bulk.import_file(ns, _write(tmp_path / "short.parquet", short), None)
    with pytest.raises(InvalidArgument, match="line 3: the vector has 2 values"):
        bulk.import_file(ns, _write(tmp_path / "short.jsonl", short), None)
    nameless = tmp_path / "nameless.jsonl"
    nameless.write_text(json.dumps({"vector": [1.0] * DIMS}) + "\n")
    with pytest.raises(InvalidArgument, match="line 1: no 'id'"):
        bulk.import_file(ns, nameless, None)
    bulk.import_file(ns, nameless, None, generate_ids=True)
    assert "nameless.jsonl:1" in _live(ns)
    (tmp_path / "data.xlsx").write_bytes(b"")
    with pytest.raises(InvalidArgument, match="cannot import a .xlsx file"):
        bulk.import_file(ns, tmp_path / "data.xlsx", None)
    with pytest.raises(InvalidArgument, match="export writes"):
        bulk.export(ns, tmp_path / "out.csv")


def _assert_same_answers(copy, source, queries) -> None:
    """The same top 10 ids in the same order, and the same scores but for the last bits (a
    copy's vectors are normalised again)."""
    for q in queries:
        got, want = copy.query(vector=q, top_k=10).hits, source.query(vector=q, top_k=10).hits
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_export_then_import_gives_the_same_answers(db, tmp_path, suffix):
    source = db.create_namespace("src", embedder="none", dimensions=DIMS)
    source.upsert(_rows(300))
    source.index()  # segments and a tail both exported
    source.upsert(_rows(50, start=280))  # overwrites some indexed rows
    source.delete(ids=["d3", "d4"])
    result = bulk.export(source, tmp_path / f"out{suffix}", page_size=64)
    assert result.rows == 328 and result.version == source.describe().version
    copy = db.create_namespace("copy", embedder="none", dimensions=DIMS)
    bulk.import_file(copy, tmp_path / f"out{suffix}", None, batch_size=100)
    queries = np.random.default_rng(9).standard_normal((5, DIMS)).tolist()
    _assert_same_answers(copy, source, queries)
    assert {k: (d.text, d.attributes) for k, d in _live(copy).items()} == {
        k: (d.text, d.attributes) for k, d in _live(source).items()
    }


def test_export_as_of_an_older_version(db, tmp_path):
    ns = db.create_namespace("ns", embedder="none", dimensions=DIMS)
    old = ns.upsert(_rows(20)).version
    ns.upsert(_rows(5, start=20))
    result = bulk.export(ns, tmp_path / "old.parquet", as_of=old)
    assert (result.rows, result.version) == (20, old)
    assert json.loads(pq.ParquetFile(tmp_path / "old.parquet").schema_arrow.metadata[b"vectordb"])["version"] == old


def test_import_and_export_through_a_running_service(tmp_path):
    store = f"file://{tmp_path}/store"
    path = _write(tmp_path / "data.parquet", _rows(400))
    with InProcessServer(create_app(unit_settings(store, **OVERRIDES), "all")) as url, vectordb.connect(url) as remote:
        ns = remote.create_namespace("ns", embedder="none", dimensions=DIMS)
        assert bulk.import_file(ns, path, None, batch_size=150).rows == 400
        assert bulk.export(ns, tmp_path / "out.parquet", page_size=128).rows == 400
        with pytest.raises(NamespaceNotFound):
            remote.namespace("absent")
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 400


def _cli(*args: str, store: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VECTORDB_STORE_URI": store, "VECTORDB_PRELOAD_EMBEDDER": "", "VECTORDB_AUTO_INDEX": "false"}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_import_export_round_trip(tmp_path):
    store = f"file://{tmp_path}/store"
    rows = _rows(600)
    path = _write(tmp_path / "data.parquet", rows)

    missing = _cli("import", "ns", str(path), store=store)
    assert missing.returncode == 2 and "namespace 'ns' does not exist" in missing.stderr

    done = _cli("import", "ns", str(path), "--create", "--batch-size", "200", store=store)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 600 and "imported 600 rows into ns" in done.stderr

    exported = _cli("export", "ns", str(tmp_path / "ns.parquet"), store=store)
    assert exported.returncode == 0, exported.stderr
    assert "exporting ns as of version" in exported.stderr and json.loads(exported.stdout)["rows"] == 600

    copied = _cli("import", "copy", str(tmp_path / "ns.parquet"), "--create", "--quiet", store=store)
    assert copied.returncode == 0, copied.stderr

    bad = tmp_path / "notes.docx"
    bad.write_bytes(b"x")
    refused = _cli("import", "ns", str(bad), store=store)
    assert refused.returncode == 2 and "cannot import a .docx file" in refused.stderr

    with vectordb.connect(store, **OVERRIDES) as db:
        source, copy = db.namespace("ns"), db.namespace("copy")
        assert copy.describe().dimensions == DIMS and copy.describe().embedder == "none"
        queries = np.random.default_rng(3).standard_normal((4, DIMS)).tolist()
        _assert_same_answers(copy, source, queries)


def test_an_export_carries_cluster_by_to_the_namespace_an_import_creates(tmp_path):
    store = f"file://{tmp_path}/store"
    with vectordb.connect(store, **OVERRIDES) as db:
        source = db.create_namespace("src", "none", DIMS, cluster_by=["k"])
        source.upsert(_rows(50))
        bulk.export(source, tmp_path / "src.parquet")
    copied = _cli("import", "copy", str(tmp_path / "src.parquet"), "--create", "--quiet", store=store)
    assert copied.returncode == 0, copied.stderr
    with vectordb.connect(store, **OVERRIDES) as db:
        assert db.namespace("copy").describe().cluster_by == ["k"]
