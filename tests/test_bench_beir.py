"""``bench/beir.py`` end to end on a tiny BEIR dataset, against a real uvicorn server in a thread
(memory store, deterministic fake embedder: no model)."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import register_fake_embedder
from vectordb.settings import Settings
from vectordb.testing import listener

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_beir", ROOT / "bench" / "beir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


beir = _load_bench()


@pytest.fixture
def server_url():
    register_fake_embedder()
    settings = Settings(store_uri="memory://beir", group_commit_ms=1, auto_index=False, preload_embedder="")
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))
    sock = listener()  # bound here and handed to uvicorn: no other process can take the port
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def dataset(tmp_path) -> Path:
    data = tmp_path / "tiny"
    (data / "qrels").mkdir(parents=True)
    # "long" is chunked by the service (> 256 tokens): its hits come back as long#0, long#1, ...
    long_text = " ".join(f"filler{i}" for i in range(600)) + " glacier moraine erosion"
    corpus = [
        {"_id": "d1", "title": "Volcano", "text": "magma lava eruption crater"},
        {"_id": "d2", "title": "Ocean", "text": "tide current salt reef"},
        {"_id": "d3", "title": "Desert", "text": "dune sand cactus drought"},
        {"_id": "long", "title": "Glacier", "text": long_text},
    ]
    (data / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = [{"_id": "q1", "text": "lava eruption crater"}, {"_id": "q2", "text": "glacier moraine erosion"},
               {"_id": "q3", "text": "not judged, so not asked"}]
    (data / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tlong\t2\n")
    return data


def test_the_command_ingests_queries_every_mode_and_writes_json(server_url, dataset, tmp_path, capsys):
    output = tmp_path / "out.json"
    code = beir.main([str(dataset), "--url", server_url, "--embedder", "fake", "--batch", "2", "--top-k", "3",
                      "--output", str(output)])
    assert code == 0
    result = json.loads(output.read_text())
    assert result["dataset"] == "tiny" and result["queries"] == 2
    assert result["ingest"]["documents"] == 4 and result["ingest"]["rows"] > 4  # "long" became chunks
    assert set(result["modes"]) == {"vector", "bm25", "hybrid"}
    for mode, scores in result["modes"].items():
        assert scores["ndcg@10"] == 1.0 and scores["recall@100"] == 1.0, mode
    table = capsys.readouterr().out
    assert "bm25" in table and "ingest: 4 documents" in table


def test_reuse_skips_ingestion_and_a_failing_mode_is_reported(server_url, dataset, tmp_path):
    output = tmp_path / "out.json"
    args = [str(dataset), "--url", server_url, "--embedder", "fake", "--output", str(output)]
    assert beir.main([*args, "--modes", "bm25"]) == 0
    assert beir.main([*args, "--modes", "bm25", "--reuse", "--top-k", "100000"]) == 1  # over max_top_k: a 400
    result = json.loads(output.read_text())
    assert "ingest" not in result and "invalid_argument" in result["modes"]["bm25"]["error"]


def test_parents_keep_the_first_occurrence_of_each_document():
    hits = [{"id": "a#2", "attributes": {"doc_id": "a", "chunk": 2}}, {"id": "b"},
            {"id": "a#0", "attributes": {"doc_id": "a", "chunk": 0}}, {"id": "c", "attributes": {}}]
    assert beir.parents(hits) == ["a", "b", "c"]


def test_bad_arguments(dataset):
    with pytest.raises(SystemExit):
        beir.main([str(dataset), "--modes", "vector,colbert"])
    with pytest.raises(SystemExit):
        beir.main([str(dataset.parent), "--modes", "vector"])  # no corpus.jsonl there


def test_vectordb_eval_writes_nothing_into_the_checkout(server_url, dataset, capsys):
    # Before: `vectordb eval beir DIR` overwrote bench/results/beir-<dataset>.json, a tracked file.
    from api import cli

    data = dataset.rename(dataset.parent / f"evalcheck-{dataset.parent.name}")
    written = ROOT / "bench" / "results" / f"beir-{data.name}.json"
    try:
        code = cli.main(["eval", "beir", str(data), "--url", server_url, "--embedder", "fake", "--batch", "2",
                         "--top-k", "3", "--modes", "bm25"])
        assert code == 0
        assert not written.exists()
        assert "--output" in capsys.readouterr().out
    finally:
        written.unlink(missing_ok=True)
