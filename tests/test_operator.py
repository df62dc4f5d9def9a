"""What a server operator meets: settings checked at start-up, the start-up and access log
lines, the command line's --store and the store it resolves, and what garbage collection
says it kept."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api import cli
from api.app import create_app
from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb.errors import InvalidArgument
from vectordb.settings import Settings, load


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("VECTORDB_ROLE", "writer", "'ingest', 'query' or 'all'"),
        ("VECTORDB_EMBED_RUNTIME", "tensorrt", "'auto', 'torch', 'numpy', 'onnx' or 'onnx-int8'"),
        ("VECTORDB_EMBED_DEVICE", "gpu", "'auto', 'cpu' or 'cuda'"),
        ("VECTORDB_EMBED_PRECISION", "fp8", "'auto', 'fp32' or 'bf16'"),
    ],
)
def test_an_enum_setting_fails_at_start_up_naming_the_allowed_values(monkeypatch, tmp_path, capsys,
                                                                     variable, value, allowed):
    # Before: role was checked only by create_app, the embedder settings at the first embed.
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidArgument) as exc:
        load()
    assert f"{variable}={value!r}" in exc.value.message and allowed in exc.value.message
    with pytest.raises(InvalidArgument):
        create_app()
    assert cli.main(["namespaces", "--store", f"file://{tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert variable in err and allowed in err


def test_secrets_are_not_echoed_by_the_settings_error(monkeypatch):
    monkeypatch.setenv("VECTORDB_ROLE", "writer")
    with pytest.raises(InvalidArgument) as exc:
        load(s3_secret_key=["not", "a", "string"])
    assert "(hidden)" in exc.value.message and "not" not in exc.value.message.replace("not a valid", "")


def test_store_is_accepted_after_the_command_and_the_resolved_store_printed(tmp_path, capsys, monkeypatch):
    # Before: `vectordb namespaces --store URI` was "unrecognized arguments" (only before the command).
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "data"
    assert cli.main(["namespaces", "--store", "file://data"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == [] and f"store: file://{store.resolve()}" in out.err
    assert cli.main(["--store", "file://data", "keys", "list"]) == 0
    assert cli.main(["keys", "list", "--store", "file://data"]) == 0
    assert f"store: file://{store.resolve()}" in capsys.readouterr().err


def test_the_start_up_line_names_store_role_model_and_address_without_credentials():
    settings = Settings(store_uri="s3://bucket/prefix", s3_endpoint="minio.internal:9000", s3_access_key="AKIDSECRET",
                        s3_secret_key="verysecret", s3_secure=True, llm_api_key="llmsecret")
    line = cli.startup_line(settings, "query", "0.0.0.0", 8080)
    assert "role query" in line and "http://0.0.0.0:8080" in line and "minilm" in line
    assert "s3://bucket/prefix at https://minio.internal:9000" in line
    assert not any(secret in line for secret in ("AKIDSECRET", "verysecret", "llmsecret"))


def test_every_request_gets_an_access_log_line_with_its_request_id(caplog):
    settings = unit_settings(store_uri="memory://access-log", preload_embedder="")
    with TestClient(create_app(settings, "all", Service(settings, store=MemoryStore()))) as client, \
            caplog.at_level(logging.INFO, logger="vectordb.access"):
        ok = client.get("/healthz")
        missing = client.get("/v1/namespaces/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "vectordb.access"]
    assert len(lines) == 2
    assert lines[0].startswith(ok.headers["x-request-id"]) and " GET /healthz 200 " in lines[0]
    assert lines[1].startswith(missing.headers["x-request-id"]) and " GET /v1/namespaces/nope 404 " in lines[1]


def test_gc_says_what_it_kept_and_why(tmp_path, capsys, monkeypatch):
    uri = f"file://{tmp_path / 'data'}"
    monkeypatch.setenv("VECTORDB_RETAIN_MANIFESTS", "1")
    monkeypatch.setenv("VECTORDB_GC_GRACE_S", "0")
    service = Service(load(store_uri=uri, group_commit_ms=1, auto_index=False, preload_embedder=""))
    service.create_namespace("g", "none", dimensions=2)
    for n in range(4):
        service.upsert("g", [{"id": f"d{n}", "vector": [1.0, float(n)]}])
    service.tag("g", "first", 1)  # its copy keeps version 1's WAL object after version 1 is pruned
    service.upsert("g", [{"id": "d0", "vector": [0.0, 1.0]}])
    service.index("g")  # the newest versions reference a segment, no longer the WAL objects
    service.close()
    assert cli.main(["gc", "g", "--store", uri]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["versions_kept"] == result["versions_kept_by_retention"] == 1
    assert result["versions_kept_by_grace"] == 0 and result["manifests_pruned"] >= 4
    assert result["objects_deleted"] >= 3  # the WAL objects of versions 2.. went with the index build
    assert result["objects_kept_for_tags"] >= 1 and result["objects_kept_for_versions"] >= 1, result
    assert result["objects_kept"] == (result["objects_kept_for_versions"] + result["objects_kept_for_tags"]
                                      + result["objects_kept_for_branches"] + result["objects_kept_by_fence"])
    assert "kept 1 readable versions (1 by retention" in out.err and "for tags" in out.err
    assert Path(tmp_path / "data").exists()
