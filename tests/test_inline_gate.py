"""Where the query route runs a search (api.app.InlineGate): inline on the event loop's
thread when a query is alone and one of its kind has answered before, in the thread pool
otherwise, and the same answers either way."""

from __future__ import annotations

import asyncio
import functools
import threading

import httpx
import pytest

from api.app import InlineGate, create_app
from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import FAKE_DIMS, unit_settings


def _where(loop_thread: threading.Thread, seen: list[str], release: threading.Event | None = None):
    def search(kind: str, value: int = 0) -> tuple[str, int]:
        seen.append("loop" if threading.current_thread() is loop_thread else "pool")
        if release is not None:
            assert release.wait(10)
        return kind, value

    return search


def test_a_lone_query_of_a_kind_that_answered_runs_inline():
    async def scenario():
        gate, seen = InlineGate(), []
        search = _where(threading.current_thread(), seen)
        assert await gate.run("a", functools.partial(search, "a", 1)) == ("a", 1)  # first of its kind: pool
        assert await gate.run("a", functools.partial(search, "a", 2)) == ("a", 2)  # answered before, alone: inline
        assert await gate.run("b", functools.partial(search, "b")) == ("b", 0)  # another kind: the pool again
        assert await gate.run("b", functools.partial(search, "b")) == ("b", 0)
        assert seen == ["pool", "loop", "pool", "loop"]
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_overlapping_queries_run_in_the_pool():
    async def scenario():
        gate, seen, release = InlineGate(), [], threading.Event()
        loop_thread = threading.current_thread()
        gate.answered.add("a")
        slow = asyncio.create_task(gate.run("b", functools.partial(_where(loop_thread, seen, release), "b")))
        while not seen:
            await asyncio.sleep(0.001)
        # "a" has answered before, but another query is in flight: the pool, so that
        # both run at once (the slow one waits for this one to be done).
        second = asyncio.create_task(gate.run("a", functools.partial(_where(loop_thread, seen), "a")))
        assert await second == ("a", 0)
        release.set()
        assert await slow == ("b", 0)
        assert seen == ["pool", "pool"]
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_queries_that_arrive_together_all_run_in_the_pool():
    """Requests read in one turn of the loop (as after a busy spell) are not alone: none
    may hold the loop while the others wait, or a replica under load would serve one
    query at a time."""

    async def scenario():
        gate, seen = InlineGate(), []
        search = _where(threading.current_thread(), seen)
        gate.answered.add("a")
        answers = await asyncio.gather(*(gate.run("a", functools.partial(search, "a", n)) for n in range(3)))
        assert answers == [("a", 0), ("a", 1), ("a", 2)]
        assert seen == ["pool"] * 3
        # Right after an overlap a lone query still takes the pool; once it is quiet, inline.
        await gate.run("a", functools.partial(search, "a"))
        assert seen[-1] == "pool"
        await asyncio.sleep(gate.QUIET_S)
        await gate.run("a", functools.partial(search, "a"))
        assert seen[-1] == "loop"

    asyncio.run(scenario())


def test_disabled_every_query_runs_in_the_pool():
    async def scenario():
        gate, seen = InlineGate(enabled=False), []
        search = _where(threading.current_thread(), seen)
        for _ in range(3):
            await gate.run("a", functools.partial(search, "a"))
        assert seen == ["pool"] * 3

    asyncio.run(scenario())


def test_a_failed_query_does_not_count_as_answered():
    async def scenario():
        gate = InlineGate()

        def fail():
            raise LookupError("missing")

        for _ in range(2):
            with pytest.raises(LookupError):
                await gate.run("missing", fail)
        assert gate.in_flight == 0 and "missing" not in gate.answered

    asyncio.run(scenario())


def test_inline_and_pooled_queries_answer_the_same_through_the_app():
    settings = unit_settings("memory://gate", preload_embedder="")
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.put("/v1/namespaces/g", json={"embedder": "fake"})).status_code == 200
            docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(60)]
            assert (await client.post("/v1/namespaces/g/documents", json={"documents": docs})).status_code == 200
            body = {"text": "topic 3", "top_k": 5, "include": ["text"]}
            first = await client.post("/v1/namespaces/g/query", json=body)  # the pool
            alone = await client.post("/v1/namespaces/g/query", json=body)  # inline
            together = await asyncio.gather(*(client.post("/v1/namespaces/g/query", json=body) for _ in range(4)))
            answers = [r.json() for r in (first, alone, *together)]
            assert all(r.status_code == 200 for r in (first, alone, *together))
            assert all(a == answers[0] for a in answers) and len(answers[0]["results"]) == 5
            missing = await client.post("/v1/namespaces/nope/query", json=body)
            assert missing.status_code == 404

    asyncio.run(scenario())


def test_a_text_query_after_vector_queries_does_not_load_the_model_on_the_loop():
    """A namespace that has answered vector queries has not loaded its model: the first
    text query is of another kind, so it goes to the pool, where loading may take long."""
    settings = unit_settings("memory://gate2", preload_embedder="")
    service = Service(settings, store=MemoryStore())
    app = create_app(settings, "all", service)
    loop_thread, seen = None, []
    original = service.query

    def recording(*args, **kwargs):
        seen.append(("loop" if threading.current_thread() is loop_thread else "pool", kwargs.get("text") is not None))
        return original(*args, **kwargs)

    service.query = recording

    async def scenario():
        nonlocal loop_thread
        loop_thread = threading.current_thread()
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            await client.put("/v1/namespaces/g", json={"embedder": "fake"})
            await client.post("/v1/namespaces/g/documents", json={"documents": [{"id": "a", "text": "alpha"}]})
            vector = [0.1] * FAKE_DIMS
            for _ in range(2):
                assert (await client.post("/v1/namespaces/g/query", json={"vector": vector})).status_code == 200
            for _ in range(2):
                assert (await client.post("/v1/namespaces/g/query", json={"text": "alpha"})).status_code == 200

    asyncio.run(scenario())
    assert seen == [("pool", False), ("loop", False), ("pool", True), ("loop", True)]
