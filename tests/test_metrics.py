"""``/metrics``: Prometheus text that a real parser reads, per-route counters and latency,
in-flight requests, cache counters and the cold-start marks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import install_metrics
from api.service import Service
from storage import CachedStore
from storage.memory import MemoryStore
from vectordb.coldstart import ColdStart, process_start_time
from vectordb.settings import Settings

DIMS = 8


def _settings(**extra) -> Settings:
    return Settings(
        store_uri="memory://metrics", group_commit_ms=1, auto_index=False, preload_embedder="",
        flat_max_rows=20, rows_per_partition=20, **extra,
    )


@pytest.fixture
def app_and_client():
    settings = _settings()
    service = Service(settings, store=CachedStore(MemoryStore(), 1 << 20))
    app = create_app(settings, "all", service, cold_start=ColdStart())  # not the process's: tests share one
    with TestClient(app) as client:
        yield app, client


def _samples(client) -> dict[tuple, float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _load(client, n: int = 60) -> np.ndarray:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(n, DIMS)).astype(np.float32)
    assert client.put("/v1/namespaces/m", json={"embedder": "none", "dimensions": DIMS}).status_code == 200
    docs = [{"id": f"d{i}", "vector": v.tolist()} for i, v in enumerate(vectors)]
    assert client.post("/v1/namespaces/m/documents", json={"documents": docs}).status_code == 200
    assert client.post("/v1/namespaces/m/index", json={}).status_code == 200
    return vectors


def test_request_counts_and_latency_per_route_template(app_and_client):
    _, client = app_and_client
    vectors = _load(client)
    for v in vectors[:3]:
        assert client.post("/v1/namespaces/m/query", json={"vector": v.tolist(), "top_k": 3}).status_code == 200
    assert client.post("/v1/namespaces/nope/query", json={"vector": [0.0] * DIMS}).status_code == 404
    assert client.get("/no/such/route").status_code == 404
    s = _samples(client)
    query = "/v1/namespaces/{ns}/query"
    assert s[("vectordb_http_requests_total", (("method", "POST"), ("route", query), ("status", "200")))] == 3
    assert s[("vectordb_http_requests_total", (("method", "POST"), ("route", query), ("status", "404")))] == 1
    assert s[("vectordb_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    # raw paths (namespace names) never become labels
    assert not any("nope" in str(labels) for _, labels in s)
    assert s[("vectordb_http_request_duration_seconds_count", (("method", "POST"), ("route", query)))] == 4
    assert s[("vectordb_http_request_duration_seconds_bucket", (("le", "+Inf"), ("method", "POST"), ("route", query)))] == 4
    assert s[("vectordb_http_requests_in_flight", ())] == 0
    # scrapes are not requests
    assert not any(labels and ("route", "/metrics") in labels for _, labels in s)


def test_cache_counters_follow_the_store(app_and_client):
    app, client = app_and_client
    vectors = _load(client)
    before = _samples(client)
    client.post("/v1/namespaces/m/query", json={"vector": vectors[0].tolist(), "top_k": 3})
    after = _samples(client)
    stats = app.state.service.store.stats()
    assert after[("vectordb_cache_requests_total", ())] == stats["requests"]
    assert after[("vectordb_cache_misses_total", ())] == stats["misses"]
    assert after[("vectordb_store_bytes_fetched_total", ())] == stats["bytes_fetched"]
    assert after[("vectordb_cache_hits_total", (("tier", "ram"),))] == stats["hits"]
    assert after[("vectordb_cache_hits_total", (("tier", "disk"),))] == 0
    assert after[("vectordb_cache_bytes", (("tier", "ram"),))] == stats["ram_bytes"] > 0
    assert after[("vectordb_cache_requests_total", ())] > before[("vectordb_cache_requests_total", ())]


def test_cold_start_marks_reach_the_first_answer(app_and_client):
    _, client = app_and_client
    s = _samples(client)
    assert ("vectordb_cold_start_seconds", ()) not in s  # nothing answered yet
    vectors = _load(client)
    client.post("/v1/namespaces/m/query", json={"vector": vectors[0].tolist()})
    s = _samples(client)
    total = s[("vectordb_cold_start_seconds", ())]
    stages = {dict(labels)["stage"]: v for (name, labels), v in s.items() if name == "vectordb_cold_start_stage_seconds"}
    assert {"process_start", "first_manifest", "centroids", "first_partitions", "first_request", "first_answer"} <= set(stages)
    assert stages["process_start"] == 0 and stages["first_answer"] == total
    assert stages["first_manifest"] <= stages["first_answer"]
    assert 0 < total < time.time() - process_start_time() + 1
    assert s[("process_start_time_seconds", ())] > 0


def test_in_flight_counts_a_running_request():
    settings = _settings()
    service = Service(settings, store=CachedStore(MemoryStore(), 1 << 20))
    app = create_app(settings, "all", service)
    metrics = install_metrics(app, service, ColdStart())
    release = threading.Event()
    entered = threading.Event()

    @app.get("/slow")
    def slow() -> dict:
        entered.set()
        release.wait(10)
        return {}

    with TestClient(app) as client:
        t = threading.Thread(target=client.get, args=("/slow",))
        t.start()
        assert entered.wait(10)
        assert _samples(client)[("vectordb_http_requests_in_flight", ())] == 1
        release.set()
        t.join(10)
        assert _samples(client)[("vectordb_http_requests_in_flight", ())] == 0
    assert metrics.requests.labels("GET", "/slow", "200")._value.get() == 1


def test_install_is_idempotent(app_and_client):
    app, client = app_and_client
    assert install_metrics(app, app.state.service) is app.state.metrics
    assert client.get("/metrics").status_code == 200


def test_the_process_clock_is_shared():
    from vectordb.coldstart import process_clock

    settings = _settings()
    service = Service(settings, store=CachedStore(MemoryStore(), 1 << 20))
    app = create_app(settings, "all", service)
    assert install_metrics(app, service).cold_start is process_clock()


def test_cold_start_records_each_stage_once():
    clock = ColdStart(started_at=100.0)
    assert clock.mark("imports", at=101.5)
    assert not clock.mark("imports", at=105.0)
    clock.mark("first_answer", at=102.0)
    assert clock.stages() == {"process_start": 0.0, "imports": 1.5, "first_answer": 2.0}
    assert clock.breakdown() == {"imports": 1.5, "first_answer": 0.5}
    assert clock.total == 2.0
