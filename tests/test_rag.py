"""RAG: building a cited context from hits (pure), and the chat client against a real HTTP server."""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunker import ChunkingConfig, WhitespaceTokenCounter, chunk_id, chunk_text, default_token_counter
from query.engine import Hit
from query.llm import SYSTEM_PROMPT, ChatClient
from query.rag import INSTRUCTION, MIN_CUT_TOKENS, build_context, join_overlapping
from vectordb.errors import InvalidArgument, UpstreamError
from vectordb.testing import bind_free, free_port

WORDS = WhitespaceTokenCounter()

_VOCABULARY = (
    "soy protein intake lowers cholesterol in adults with diabetes while fibre from oats and beans "
    "changes the gut flora trial results suggest that vitamin levels matter for bone health"
).split()


def prose(n_paragraphs: int, seed: int = 0) -> str:
    """Paragraphs of sentences; every word carries a serial number, so no two words are equal
    and an overlap between chunks can only be the real one."""
    rng = random.Random(seed)
    serial = iter(range(1_000_000))
    paragraphs = []
    for _ in range(n_paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 6)):
            words = [f"{rng.choice(_VOCABULARY)}{next(serial)}" for _ in range(rng.randint(4, 20))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def chunk_hits(parent: str, chunks, scores=None, **attributes) -> list[Hit]:
    """The hits a query would return for these chunks of document ``parent``."""
    scores = scores or [1.0] * len(chunks)
    return [
        Hit(chunk_id(parent, c.index), score, c.text, {"doc_id": parent, "chunk": c.index, **attributes})
        for c, score in zip(chunks, scores, strict=True)
    ]


def doc(doc_id: str, text: str, score: float, **attributes) -> Hit:
    return Hit(doc_id, score, text, attributes)


# ---------------------------------------------------------------------------- merging chunks


def test_joining_consecutive_chunks_gives_back_the_text_they_span():
    text = prose(12, seed=1)
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=40, overlap_tokens=8), WORDS)
    assert len(chunks) > 5
    for a, b in pairwise(chunks):
        assert b.start_char < a.end_char  # they do overlap
        assert join_overlapping(a.text, b.text) == text[a.start_char : b.end_char]


def test_a_run_of_chunks_becomes_one_passage_equal_to_the_original_span():
    text = prose(12, seed=2)
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=40, overlap_tokens=8), WORDS)
    run = chunks[2:6]
    hits = chunk_hits("paper", run, [0.5, 0.9, 0.7, 0.6], title="A paper")
    random.Random(0).shuffle(hits)  # the order hits arrive in does not matter
    context = build_context("what?", hits, 10_000, WORDS)
    [passage] = context.passages
    assert passage.text == text[run[0].start_char : run[-1].end_char]
    assert passage.chunks == (2, 5) and passage.score == 0.9 and not passage.truncated
    assert passage.citation == {"n": 1, "doc_id": "paper", "title": "A paper", "chunks": [2, 5]}


def test_merging_with_the_real_tokenizer():
    minilm = default_token_counter()
    text = prose(20, seed=3)
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=64, overlap_tokens=16), minilm)
    overlapping = [(a, b) for a, b in pairwise(chunks) if b.start_char < a.end_char]
    assert len(overlapping) > len(chunks) / 2
    for a, b in overlapping:
        assert join_overlapping(a.text, b.text) == text[a.start_char : b.end_char]
    context = build_context("q", chunk_hits("d", chunks), 100_000, minilm)
    # Where the chunker dropped the overlap (to keep a long sentence whole) the two are joined
    # with a space, so only the words are compared.
    [passage] = context.passages
    assert passage.text.split() == text.split()
    assert context.tokens <= minilm.count_tokens(text) + 10  # the overlaps are not counted twice


@settings(max_examples=150, deadline=None)
@given(
    paragraphs=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    chunk_tokens=st.integers(8, 60),
    overlap_share=st.floats(0, 0.5),
    data=st.data(),
)
def test_any_run_of_chunks_merges_to_its_span(paragraphs, seed, chunk_tokens, overlap_share, data):
    text = prose(paragraphs, seed)
    config = ChunkingConfig(chunk_tokens=chunk_tokens, overlap_tokens=int(chunk_tokens * overlap_share))
    chunks = chunk_text(text, config, WORDS)
    first = data.draw(st.integers(0, len(chunks) - 1))
    last = data.draw(st.integers(first, len(chunks) - 1))
    [passage] = build_context("q", chunk_hits("d", chunks[first : last + 1]), 10**6, WORDS).passages
    span = text[chunks[first].start_char : chunks[last].end_char]
    if all(b.start_char < a.end_char for a, b in pairwise(chunks[first : last + 1])):
        assert passage.text == span
    else:  # chunks that do not overlap are joined with a space: the words are the same
        assert passage.text.split() == span.split()


def test_join_without_overlap_and_with_full_containment():
    assert join_overlapping("one two.", "Three four.") == "one two. Three four."
    assert join_overlapping("one two three", "two three") == "one two three"
    assert join_overlapping("a b", "a b c") == "a b c"


def test_gaps_and_section_changes_make_separate_passages():
    text = prose(12, seed=4)
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=30, overlap_tokens=6), WORDS)
    hits = chunk_hits("d", [chunks[0], chunks[1], chunks[3]], [0.2, 0.3, 0.8])
    passages = build_context("q", hits, 10**6, WORDS).passages
    assert [(p.chunks, p.score) for p in passages] == [((3, 3), 0.8), ((0, 1), 0.3)]

    # Chunk 1 starts page 2: consecutive indexes, but another section.
    pages = [Hit("r#0", 0.9, "first page text.", {"doc_id": "r", "chunk": 0, "page": 1, "source": "r.pdf"}),
             Hit("r#1", 0.5, "second page text.", {"doc_id": "r", "chunk": 1, "page": 2, "source": "r.pdf"})]
    context = build_context("q", pages, 10**6, WORDS)
    assert context.citations == [{"n": 1, "doc_id": "r", "source": "r.pdf", "chunks": [0, 0], "page": 1},
                                 {"n": 2, "doc_id": "r", "source": "r.pdf", "chunks": [1, 1], "page": 2}]
    assert "[1] r (r.pdf; page 1)\nfirst page text." in context.prompt


# ---------------------------------------------------------------------------- dedupe, order, citations


def test_repeated_hits_and_repeated_texts_count_once():
    hits = [doc("a", "alpha text.", 0.4), doc("a", "alpha text.", 0.7), doc("b", "beta text.", 0.5),
            doc("c", "beta   text.", 0.2), Hit("d", 0.99, None, {}), doc("e", "   ", 0.98)]
    passages = build_context("q", hits, 1000, WORDS).passages
    assert [(p.n, p.doc_id, p.score) for p in passages] == [(1, "a", 0.7), (2, "b", 0.5)]


def test_passages_are_ordered_by_best_score_and_numbered():
    hits = [doc("low", "low text.", 0.1, title="Low"), doc("high", "high text.", 0.9, title="High"),
            doc("mid", "mid text.", 0.5)]
    context = build_context("  Which is best?  ", hits, 1000, WORDS)
    assert [(p.n, p.doc_id) for p in context.passages] == [(1, "high"), (2, "mid"), (3, "low")]
    prompt = context.prompt
    assert prompt.startswith(INSTRUCTION)
    assert prompt.index("[1] High\nhigh text.") < prompt.index("[2] mid\nmid text.") < prompt.index("[3] Low\nlow text.")
    assert prompt.endswith("Question: Which is best?\nAnswer:")
    assert context.tokens == WORDS.count_tokens("[1] High\nhigh text. [2] mid\nmid text. [3] Low\nlow text.")


def test_citations_carry_what_ingest_recorded_and_omit_the_rest():
    hits = [Hit("manual.pdf#4", 0.8, "Press the red button.", {
        "doc_id": "manual.pdf", "chunk": 4, "title": "Manual", "source": "manual.pdf", "page": 7,
        "heading": "Safety", "owner": "ops"}),
        doc("plain", "No attributes at all.", 0.1)]
    context = build_context("q", hits, 1000, WORDS)
    assert context.citations == [
        {"n": 1, "doc_id": "manual.pdf", "title": "Manual", "source": "manual.pdf", "chunks": [4, 4], "page": 7,
         "heading": "Safety"},
        {"n": 2, "doc_id": "plain"},
    ]
    assert "[1] Manual (manual.pdf; page 7; Safety)\nPress the red button." in context.prompt


def test_no_usable_hits_still_gives_a_prompt():
    context = build_context("q?", [], 100, WORDS)
    assert context.passages == [] and context.tokens == 0
    assert "(no passages were found)" in context.prompt and context.prompt.endswith("Question: q?\nAnswer:")


@pytest.mark.parametrize("question, max_tokens", [("", 100), ("   ", 100), ("q", 0), ("q", -5)])
def test_bad_arguments(question, max_tokens):
    with pytest.raises(InvalidArgument):
        build_context(question, [doc("a", "text", 1.0)], max_tokens, WORDS)


# ---------------------------------------------------------------------------- budget


def test_the_passage_that_does_not_fit_is_cut_at_a_sentence_end():
    first = doc("a", " ".join(["word"] * 20) + ".", 0.9)  # 2 header + 20 tokens
    second = doc("b", "One two three four five six seven eight nine ten. Eleven twelve thirteen fourteen fifteen "
                      "sixteen seventeen eighteen nineteen twenty. Twenty-one twenty-two twenty-three.", 0.5)
    # Room for the header of b and 21 of its words: the cut goes back to the end of sentence 2.
    context = build_context("q", [first, second, doc("c", "never reached.", 0.1)], 22 + 2 + 21, WORDS)
    assert [p.doc_id for p in context.passages] == ["a", "b"]
    cut = context.passages[1]
    assert cut.truncated and cut.text.endswith("twenty.") and cut.tokens == 22
    assert context.tokens == 44


def test_a_cut_without_a_sentence_end_stops_at_a_word():
    text = " ".join(f"w{i}" for i in range(100))
    [passage] = build_context("q", [doc("a", text, 1.0)], 12, WORDS).passages
    assert passage.text == "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9" and passage.truncated


def test_a_tiny_remainder_is_not_worth_a_passage():
    hits = [doc("a", " ".join(["x"] * 30), 0.9), doc("b", " ".join(["y"] * 100), 0.5)]
    context = build_context("q", hits, 32 + MIN_CUT_TOKENS, WORDS)  # only MIN_CUT_TOKENS - 2 words of b fit
    assert [p.doc_id for p in context.passages] == ["a"]
    assert [p.doc_id for p in build_context("q", hits, 34 + MIN_CUT_TOKENS, WORDS).passages] == ["a", "b"]


class CharCounter:
    """A counter whose counts do not add up over joined text (the separators count)."""

    def count_tokens(self, text: str) -> int:
        return (len(text) + 3) // 4


_texts = st.lists(st.sampled_from(_VOCABULARY + ["end.", "stop!", "Why?"]), min_size=0, max_size=80).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.tuples(_texts, st.floats(0, 1), st.integers(0, 4), st.integers(0, 6)), max_size=12),
    max_tokens=st.integers(1, 400),
    counter=st.sampled_from([WORDS, CharCounter()]),
)
def test_the_budget_is_never_exceeded(items, max_tokens, counter):
    hits = [Hit(f"d{doc_n}#{chunk}", score, text, {"doc_id": f"d{doc_n}", "chunk": chunk, "title": f"T{doc_n}"})
            for text, score, doc_n, chunk in items]
    context = build_context("what?", hits, max_tokens, counter)
    blocks = "\n\n".join(f"[{p.n}] T{p.doc_id[1:]}\n{p.text}" for p in context.passages)
    assert context.tokens == counter.count_tokens(blocks) <= max_tokens
    assert [p.n for p in context.passages] == list(range(1, len(context.passages) + 1))
    assert not any(p.truncated for p in context.passages[:-1])  # only the last one is ever cut
    scores = [p.score for p in context.passages]
    assert scores == sorted(scores, reverse=True)
    assert all(p.text.strip() for p in context.passages)
    if not context.passages:
        return
    # Whatever made it in is the start of what the hits said, word for word.
    full = build_context("what?", hits, 10**6, counter).passages
    for p in context.passages:
        whole = next(q for q in full if (q.doc_id, q.chunks) == (p.doc_id, p.chunks))
        assert whole.text.startswith(p.text)


# ---------------------------------------------------------------------------- chat client


class FakeLLM(ThreadingHTTPServer):
    """An OpenAI-compatible chat server on 127.0.0.1 that records requests and answers as told."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _FakeLLMHandler)
        self.requests: list[dict] = []
        self.reply: tuple[int, bytes] = (200, b"{}")
        self.delay_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out has hung up: writing its answer fails, as it should

    def answer_with(self, content) -> None:
        body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}]}
        self.reply = (200, json.dumps(body).encode())


class _FakeLLMHandler(BaseHTTPRequestHandler):
    server: FakeLLM

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)})
        time.sleep(self.server.delay_s)
        status, body = self.server.reply
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture
def llm():
    server = bind_free(FakeLLM)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_complete_sends_a_chat_completion_and_returns_the_answer(llm):
    llm.answer_with("Soy lowers LDL [1].")
    with ChatClient(llm.url + "/", api_key="sk-test", model="tiny-model", timeout_s=5) as client:
        assert client.complete("the prompt", max_tokens=64) == "Soy lowers LDL [1]."
    [request] = llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"] == {
        "model": "tiny-model",
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "the prompt"}],
        "temperature": 0,
        "max_tokens": 64,
    }


def test_no_api_key_sends_no_authorization(llm):
    llm.answer_with("ok")
    with ChatClient(llm.url, model="m", timeout_s=5) as client:
        client.complete("p")
    assert "Authorization" not in llm.requests[0]["headers"]


def _upstream_error(call) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        call()
    assert info.value.status == 502 and info.value.code == "llm_unavailable"
    return info.value


def test_a_server_error_is_a_502(llm):
    llm.reply = (500, b'{"error": {"message": "model overloaded"}}')
    with ChatClient(llm.url, api_key="sk-secret", model="m", timeout_s=5) as client:
        error = _upstream_error(lambda: client.complete("p"))
    assert "HTTP 500" in error.message and "model overloaded" in error.message
    assert "sk-secret" not in error.message


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"choices": []}', b'{"choices": [{"message": {}}]}',
                                  b'{"choices": [{"message": {"content": null}}]}', b"[1, 2]"])
def test_a_body_that_is_not_a_chat_completion_is_a_502(llm, body):
    llm.reply = (200, body)
    with ChatClient(llm.url, model="m", timeout_s=5) as client:
        _upstream_error(lambda: client.complete("p"))


def test_a_refused_connection_is_a_502():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with ChatClient(url, model="m", timeout_s=5) as client:
        error = _upstream_error(lambda: client.complete("p"))
    assert "cannot reach" in error.message


def test_a_slow_server_is_a_502(llm):
    llm.answer_with("late")
    llm.delay_s = 1.0
    with ChatClient(llm.url, model="m", timeout_s=0.2) as client:
        error = _upstream_error(lambda: client.complete("p"))
    assert "in time" in error.message


def test_from_settings():
    class Configured:
        llm_url, llm_api_key, llm_model, llm_timeout_s = "http://127.0.0.1:9/v1", "", "m", 3.0

    class Unconfigured(Configured):
        llm_url = ""

    assert ChatClient.from_settings(Unconfigured()) is None
    client = ChatClient.from_settings(Configured())
    assert client is not None and client.model == "m" and client.base_url == "http://127.0.0.1:9/v1"
    client.close()


# ---------------------------------------------------------------------------- the /rag route


def test_rag_route_gives_cited_context_and_the_llm_answer(llm):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.service import Service
    from storage.memory import MemoryStore
    from tests.fakes import register_fake_embedder
    from vectordb.settings import Settings

    register_fake_embedder()
    llm.answer_with("Clean the filter every week [1].")
    settings = Settings(store_uri="memory://rag", group_commit_ms=1, preload_embedder="", llm_url=llm.url,
                        llm_model="tiny", llm_timeout_s=5)
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))
    with TestClient(app) as c:
        c.put("/v1/namespaces/kb", json={"embedder": "fake", "chunking": {"chunk_tokens": 24, "overlap_tokens": 4}})
        manual = "\n\n".join(f"Step {i}: check valve {i} and clean the filter weekly." for i in range(12))
        c.post("/v1/namespaces/kb/documents", json={"documents": [
            {"id": "manual", "text": manual, "attributes": {"title": "Pump manual", "team": "ops"}},
            {"id": "memo", "text": "Lunch is at noon.", "attributes": {"team": "hr"}},
        ]})
        r = c.post("/v1/namespaces/kb/rag", json={"question": "how often to clean the filter", "top_k": 6,
                                                   "max_context_tokens": 120, "filter": {"team": "ops"}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["answer"] == "Clean the filter every week [1]."
        assert body["citations"] and all(cit["doc_id"] == "manual" for cit in body["citations"])
        assert body["citations"][0]["title"] == "Pump manual"
        assert body["passages"][0]["text"] in manual  # merged chunks give back the original span
        assert body["context_tokens"] <= 120
        [request] = llm.requests
        assert request["body"]["messages"][-1]["content"] == body["prompt"]
        assert "how often to clean the filter" in body["prompt"]
        only_context = c.post("/v1/namespaces/kb/rag", json={"question": "lunch", "generate": False}).json()
        assert only_context["answer"] is None and only_context["prompt"]
        assert c.post("/v1/namespaces/kb/rag", json={"question": " "}).status_code == 400
        llm.reply = (500, b"boom")
        failed = c.post("/v1/namespaces/kb/rag", json={"question": "filter"})
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "llm_unavailable"
