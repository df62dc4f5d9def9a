"""``GET /metrics``: what an autoscaler and an operator need, in Prometheus text format.

    vectordb_http_requests_total{method,route,status}      counter
    vectordb_http_request_duration_seconds{method,route}   histogram
    vectordb_http_requests_in_flight                       gauge (what Knative's KPA scales on)
    vectordb_cold_start_seconds                            gauge: process start -> first query answered
    vectordb_cold_start_stage_seconds{stage}               gauge: process start -> each stage
    vectordb_cache_requests_total, _hits_total{tier}, _misses_total, _coalesced_total,
    _evictions_total, vectordb_store_bytes_fetched_total   counters of the read cache
    vectordb_cache_bytes{tier}, vectordb_cache_entries     gauges of the read cache
    process_*                                              CPU, memory, start time

``route`` is the route's template (``/v1/namespaces/{ns}/query``), never the raw path, so
the number of series stays bounded; requests no route matched are ``route="unmatched"``.
Every app gets its own registry: several apps in one process (tests) never collide.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vectordb.coldstart import ColdStart, process_clock

METRICS_PATH = "/metrics"
# From a cached warm query (~1 ms) to a cold start that loads a model (seconds).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_QUERY_SUFFIX = "/query"


class Metrics:
    """The registry of one app and the instruments the middleware updates."""

    def __init__(self, service: Any, cold_start: ColdStart) -> None:
        self.registry = CollectorRegistry()
        self.cold_start = cold_start
        self.requests = Counter(
            "vectordb_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "vectordb_http_request_duration_seconds",
            "Time from request to the end of the response.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "vectordb_http_requests_in_flight", "Requests being served now (scrapes excluded).", registry=self.registry
        )
        self.registry.register(_ServiceCollector(service, cold_start))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServiceCollector:
    """Read at scrape time: the store's cache counters and the cold-start marks."""

    def __init__(self, service: Any, cold_start: ColdStart) -> None:
        self._service = service
        self._cold_start = cold_start

    def collect(self):
        stats_of = getattr(getattr(self._service, "store", None), "stats", None)
        if callable(stats_of):
            yield from _cache_metrics(stats_of())
        total = self._cold_start.total
        if total is not None:
            yield GaugeMetricFamily(
                "vectordb_cold_start_seconds", "Process start to the first answered query.", value=total
            )
        stages = GaugeMetricFamily(
            "vectordb_cold_start_stage_seconds", "Process start to each cold-start stage reached.", labels=["stage"]
        )
        for stage, at in self._cold_start.stages().items():
            stages.add_metric([stage], at)
        yield stages


def _cache_metrics(s: dict[str, int]):
    def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, value=value)

    yield counter("vectordb_cache_requests", "Cached reads asked for.", s.get("requests", 0))
    hits = CounterMetricFamily("vectordb_cache_hits", "Cached reads answered without the store.", labels=["tier"])
    hits.add_metric(["ram"], s.get("hits", 0))
    hits.add_metric(["disk"], s.get("disk_hits", 0))
    yield hits
    yield counter("vectordb_cache_misses", "Reads sent to the object store.", s.get("misses", 0))
    yield counter("vectordb_cache_coalesced", "Reads that waited for another thread's fetch.", s.get("coalesced", 0))
    yield counter("vectordb_cache_evictions", "Entries evicted from the RAM cache.", s.get("evictions", 0))
    yield counter("vectordb_store_bytes_fetched", "Bytes read from the object store.", s.get("bytes_fetched", 0))
    size = GaugeMetricFamily("vectordb_cache_bytes", "Bytes held by the read cache.", labels=["tier"])
    size.add_metric(["ram"], s.get("ram_bytes", 0))
    size.add_metric(["disk"], s.get("disk_bytes", 0))
    yield size
    yield GaugeMetricFamily("vectordb_cache_entries", "Entries in the RAM cache.", value=s.get("ram_entries", 0))


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would buffer and add latency to every call)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        m = self.metrics
        status = 500  # unless the app starts a response
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            m.requests.labels(method, template, str(status)).inc()
            m.latency.labels(method, template).observe(time.perf_counter() - started)
            if template.endswith(_QUERY_SUFFIX):
                m.cold_start.mark("first_request", time.time() - (time.perf_counter() - started))
                if status < 400:
                    m.cold_start.mark("first_answer")


def install_metrics(app: FastAPI, service: Any, cold_start: ColdStart | None = None) -> Metrics:
    """Add the metrics middleware and ``GET /metrics`` to ``app`` (idempotent).

    ``cold_start`` defaults to the process's (:func:`vectordb.coldstart.process_clock`);
    it is attached to ``service``. Call before the app serves its first request
    (Starlette freezes the middleware stack then).
    """
    existing = getattr(app.state, "metrics", None)
    if existing is not None:
        return existing
    cold_start = cold_start or process_clock()
    cold_start.watch(service.catalog, service.reader)
    metrics = Metrics(service, cold_start)
    app.state.metrics = metrics
    app.state.cold_start = cold_start

    @app.get(METRICS_PATH, include_in_schema=False)
    def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
