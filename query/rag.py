"""Retrieval-augmented generation, the pure part: query hits in, a cited context and a prompt out.

:func:`build_context` takes the hits of a query (with ``text`` and ``attributes``) and

1. drops hits without text and repeats of one id (keeping the best score);
2. groups the rest by parent document (``attributes["doc_id"]``, else the hit's id) and joins
   runs of consecutive chunks (``attributes["chunk"]`` = i, i+1, ...) of one section into one
   passage, dropping the words the next chunk repeats from the end of the one before (the
   chunker overlaps them by ~32 tokens), so a merged passage reads as the original text;
3. orders passages by their best score and numbers them [1], [2], ...;
4. fills the token budget in that order, cutting the passage that does not fit at a sentence
   end (else a word end) and stopping there.

Budget: ``max_tokens`` bounds the *context block* (every passage with its header line) as the
given counter counts it; the instruction and the question around it are not counted. The
counter is the embedder's tokenizer, not the LLM's, so leave the LLM some slack.

No I/O here: the HTTP route fetches hits, calls this, and hands ``prompt`` to :mod:`query.llm`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from query.engine import Hit
from vectordb.errors import InvalidArgument

INSTRUCTION = (
    "Answer the question using only the numbered context passages below. "
    "Cite each passage you use by its number in square brackets, like [1] or [2][3]. "
    "If the passages do not contain the answer, say that you do not know."
)
# A passage cut to fit the budget is kept only if at least this much of it survives (a few
# words torn out of a passage help the model less than they cost); the first passage is
# always kept, however short, so a small budget still gives some context.
MIN_CUT_TOKENS = 16

_WORD = re.compile(r"\S+")
# The end of a sentence: terminal punctuation, maybe closing quotes or brackets, then a space
# or the end of the text.
_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’»)\]]*(?=\s|$)")


class CountsTokens(Protocol):
    """Anything with ``count_tokens`` (``ingest.chunker.TokenizerCounter``, ``WhitespaceTokenCounter``)."""

    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class Passage:
    """One contiguous excerpt of one document, shown in the context as ``[n]``.

    ``chunks`` is ``(first, last)`` chunk index when the hits carried one, else None;
    ``score`` the best score among the hits joined into it; ``tokens`` the count of its
    rendered block (header line and text); ``truncated`` whether the budget cut its end off.
    """

    n: int
    doc_id: str
    text: str
    score: float
    tokens: int
    title: str | None = None
    source: str | None = None
    page: int | None = None
    heading: str | None = None
    chunks: tuple[int, int] | None = None
    truncated: bool = False

    @property
    def citation(self) -> dict:
        """``{"n", "doc_id", "title", "source", "chunks", "page", "heading"}`` without the None ones."""
        chunks = list(self.chunks) if self.chunks is not None else None
        fields = {"n": self.n, "doc_id": self.doc_id, "title": self.title, "source": self.source,
                  "chunks": chunks, "page": self.page, "heading": self.heading}
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True)
class RagContext:
    """What :func:`build_context` made: the passages in prompt order, the prompt, and the
    token count of the context block (never more than the ``max_tokens`` asked for)."""

    passages: list[Passage]
    prompt: str
    tokens: int

    @property
    def citations(self) -> list[dict]:
        return [p.citation for p in self.passages]


@dataclass
class _Run:
    """Consecutive chunks of one document section, joined."""

    doc_id: str
    text: str
    score: float
    first: int | None
    last: int | None
    attributes: dict


def build_context(question: str, hits: Sequence[Hit], max_tokens: int, counter: CountsTokens) -> RagContext:
    """Cited passages from ``hits`` within ``max_tokens``, and a prompt that asks ``question`` of them.

    Hits without text are skipped. Raises InvalidArgument if the question is empty or
    ``max_tokens`` is below 1.
    """
    if not isinstance(question, str) or not question.strip():
        raise InvalidArgument("question must be a non-empty string")
    if max_tokens < 1:
        raise InvalidArgument(f"max_tokens must be at least 1, not {max_tokens}")
    runs = sorted(_runs(hits), key=lambda r: (-r.score, r.doc_id, r.first if r.first is not None else -1))
    passages = _fill(_distinct(runs), max_tokens, counter)
    context = "\n\n".join(_block(p.n, p.text, p.title, p.doc_id, p.source, p.page, p.heading) for p in passages)
    tokens = counter.count_tokens(context)
    if tokens > max_tokens:
        # Only a counter whose counts do not add up over whitespace-joined text gets here:
        # shrink the last passage until the whole block fits.
        passages, context, tokens = _shrink(passages, max_tokens, counter)
    return RagContext(passages, render_prompt(question, context), tokens)


def render_prompt(question: str, context: str) -> str:
    """The instruction, the numbered passages and the question, as one user message."""
    body = context if context else "(no passages were found)"
    return f"{INSTRUCTION}\n\nContext:\n\n{body}\n\nQuestion: {question.strip()}\nAnswer:"


# ---------------------------------------------------------------------------- grouping


def _runs(hits: Sequence[Hit]) -> list[_Run]:
    best: dict[str, Hit] = {}
    for hit in hits:
        if not hit.text or not hit.text.strip():
            continue
        kept = best.get(hit.id)
        if kept is None or hit.score > kept.score:
            best[hit.id] = hit
    by_doc: dict[str, list[Hit]] = {}
    for hit in best.values():
        by_doc.setdefault(_doc_id(hit), []).append(hit)

    runs: list[_Run] = []
    for doc_id, doc_hits in by_doc.items():
        indexed = [(index, h) for h in doc_hits if (index := _index(h)) is not None]
        indexed.sort(key=lambda pair: (pair[0], -pair[1].score))
        runs += [_Run(doc_id, h.text or "", h.score, None, None, h.attributes or {})
                 for h in doc_hits if _index(h) is None]
        current: _Run | None = None
        last = -2
        for index, hit in indexed:
            attrs, text = hit.attributes or {}, hit.text or ""
            if current is not None and index == last:
                continue  # two ids claim the same chunk: the better one came first
            if current is not None and index == last + 1 and _section(attrs) == _section(current.attributes):
                current.text = join_overlapping(current.text, text)
                current.score = max(current.score, hit.score)
                current.last = index
            else:
                current = _Run(doc_id, text, hit.score, index, index, attrs)
                runs.append(current)
            last = index
    return runs


def _doc_id(hit: Hit) -> str:
    value = (hit.attributes or {}).get("doc_id")
    return str(value) if value is not None else hit.id


def _index(hit: Hit) -> int | None:
    value = (hit.attributes or {}).get("chunk")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _section(attrs: dict) -> tuple:
    # The chunker never lets a chunk cross a section; a change of page or heading between
    # consecutive chunks means a new section, which gets its own passage (and citation).
    return attrs.get("page"), attrs.get("heading")


def _distinct(runs: list[_Run]) -> list[_Run]:
    """Drop passages whose text repeats a better-scored one (duplicate documents in a corpus)."""
    seen: set[str] = set()
    out = []
    for run in runs:
        key = " ".join(_WORD.findall(run.text))
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out


def join_overlapping(before: str, after: str) -> str:
    """``before`` then ``after`` without the words ``after`` repeats from the end of ``before``.

    The overlap is the longest run of words that ends ``before`` and starts ``after``; what
    follows it in ``after`` is appended with its own whitespace, so joining two overlapping
    slices of one text gives back the text they span. Without any overlap the two are
    joined with a space (the whitespace the chunker cut at is not known).
    """
    tail_words = _WORD.findall(before)
    head = list(_WORD.finditer(after))
    shared = _longest_border([m.group() for m in head], tail_words)
    if shared == 0:
        return f"{before.rstrip()} {after.lstrip()}"
    return before + after[head[shared - 1].end() :]


def _longest_border(prefix_of: list[str], suffix_of: list[str]) -> int:
    """The largest k with ``prefix_of[:k] == suffix_of[-k:]`` (the KMP failure function, linear)."""
    if not prefix_of or not suffix_of:
        return 0
    # The overlap cannot be longer than either side; trimming keeps the scan short.
    suffix_of = suffix_of[-len(prefix_of) :]
    seq: list[str | None] = [*prefix_of, None, *suffix_of]  # None matches no word
    border = [0] * len(seq)
    for i in range(1, len(seq)):
        k = border[i - 1]
        while k and seq[i] != seq[k]:
            k = border[k - 1]
        if seq[i] == seq[k]:
            k += 1
        border[i] = k
    return border[-1]


# ---------------------------------------------------------------------------- budget


def _block(n: int, text: str, title, doc_id: str, source, page, heading) -> str:
    details = [str(d) for d in (source, f"page {page}" if page is not None else None, heading) if d]
    label = str(title) if title else doc_id
    if details:
        label += f" ({'; '.join(details)})"
    return f"[{n}] {label}\n{text}"


def _fill(runs: list[_Run], max_tokens: int, counter: CountsTokens) -> list[Passage]:
    passages: list[Passage] = []
    used = 0
    for run in runs:
        n = len(passages) + 1
        attrs = run.attributes
        meta = {"title": _str(attrs.get("title")), "source": _str(attrs.get("source")),
                "page": attrs.get("page") if isinstance(attrs.get("page"), int) else None,
                "heading": _str(attrs.get("heading"))}
        header = _block(n, "", meta["title"], run.doc_id, meta["source"], meta["page"], meta["heading"])
        tokens = counter.count_tokens(header + run.text)
        text, truncated = run.text, False
        if used + tokens > max_tokens:
            cut = _cut(run.text, header, max_tokens - used, counter)
            if cut is None:
                break
            text, truncated = cut
            tokens = counter.count_tokens(header + text)
            if passages and tokens - counter.count_tokens(header) < MIN_CUT_TOKENS:
                break
        chunks = (run.first, run.last) if run.first is not None else None
        passages.append(Passage(n, run.doc_id, text, run.score, tokens, chunks=chunks, truncated=truncated, **meta))
        used += tokens
        if truncated:
            break
    return passages


def _str(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _cut(text: str, header: str, room: int, counter: CountsTokens) -> tuple[str, bool] | None:
    """The longest start of ``text`` that fits ``room`` tokens after ``header``, ending at a
    sentence end when that keeps at least half of it, else at a word end; None if no word fits."""
    words = [m.end() for m in _WORD.finditer(text)]

    def fits(end: int) -> bool:
        return counter.count_tokens(header + text[:end]) <= room

    # Counts only grow as words are added, so bisect on the number of words kept.
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(words[mid - 1]):
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return None
    end = words[lo - 1]
    sentence_ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, end)]
    if sentence_ends and sentence_ends[-1] * 2 >= end and fits(sentence_ends[-1]):
        end = sentence_ends[-1]
    return text[:end], end < len(text.rstrip())


def _shrink(passages: list[Passage], max_tokens: int, counter: CountsTokens) -> tuple[list[Passage], str, int]:
    while True:
        context = "\n\n".join(_block(p.n, p.text, p.title, p.doc_id, p.source, p.page, p.heading) for p in passages)
        tokens = counter.count_tokens(context)
        if tokens <= max_tokens or not passages:
            return passages, context, tokens
        last = passages[-1]
        words = _WORD.findall(last.text)
        keep = max(0, len(words) - max(1, tokens - max_tokens))
        if keep == 0:
            passages = passages[:-1]
            continue
        text = last.text[: list(_WORD.finditer(last.text))[keep - 1].end()]
        header = _block(last.n, "", last.title, last.doc_id, last.source, last.page, last.heading)
        shorter = replace(last, text=text, tokens=counter.count_tokens(header + text), truncated=True)
        passages = [*passages[:-1], shorter]
