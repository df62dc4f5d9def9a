"""A minimal client for an OpenAI-compatible chat completions API (OpenAI, vLLM, llama.cpp
server, Ollama's ``/v1``, LiteLLM, ...), the generation step of RAG.

One request per answer: ``POST {base_url}/chat/completions`` with a system message, the
prompt as the user message and temperature 0, so the same context gives the same answer
wherever the server is deterministic. Everything that can go wrong on the way (refused
connection, timeout, a non-2xx status, a body that is not a chat completion) becomes
:class:`~vectordb.errors.UpstreamError` (HTTP 502, ``llm_unavailable``), whose message says
what happened without repeating the API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vectordb.errors import UpstreamError

if TYPE_CHECKING:
    import httpx

SYSTEM_PROMPT = (
    "You answer questions about a collection of documents. Use only the context you are given, "
    "cite it by passage number, and keep answers short and factual."
)
# How much of an upstream error body to quote back: enough to see what the LLM server said.
_QUOTE_CHARS = 300


class ChatClient:
    """Chat completions from ``base_url`` (up to and including the version, e.g.
    ``http://127.0.0.1:8000/v1``) with ``model``; ``api_key`` is sent as a bearer token when
    given. ``timeout_s`` bounds connecting and each read. Thread-safe: one client may serve
    every request of a worker. ``transport`` is for tests (an ``httpx.MockTransport``)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str = "",
        timeout_s: float = 60.0,
        system_prompt: str = SYSTEM_PROMPT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url:
            raise UpstreamError("no LLM is configured (set VECTORDB_LLM_URL)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.system_prompt = system_prompt
        import httpx  # with its CLI extras ~50 ms of imports: only where an LLM is configured

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport)

    @classmethod
    def from_settings(cls, settings) -> ChatClient | None:
        """The client the settings describe (``llm_url``, ``llm_api_key``, ``llm_model``,
        ``llm_timeout_s``), or None when ``llm_url`` is empty (no generation)."""
        if not settings.llm_url:
            return None
        return cls(settings.llm_url, settings.llm_api_key or None, settings.llm_model, settings.llm_timeout_s)

    def complete(self, prompt: str, max_tokens: int = 512) -> str:
        """The model's answer to ``prompt``. Raises UpstreamError if there is none."""
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        import httpx

        try:
            response = self._http.post("/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"the LLM at {self.base_url} did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach the LLM at {self.base_url}: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            quoted = response.text[:_QUOTE_CHARS].strip()
            raise UpstreamError(f"the LLM at {self.base_url} answered HTTP {response.status_code}: {quoted}")
        return _answer(response, self.base_url)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _answer(response: httpx.Response, base_url: str) -> str:
    """``choices[0].message.content`` of a chat completion, or UpstreamError."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UpstreamError(
            f"the LLM at {base_url} sent a body that is not a chat completion: {response.text[:_QUOTE_CHARS]!r}"
        ) from exc
    if not isinstance(content, str):
        raise UpstreamError(f"the LLM at {base_url} sent no text answer (content is {type(content).__name__})")
    return content
