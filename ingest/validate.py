"""Validating client documents and turning them into a RowBatch.

Everything a client can get wrong is caught here, before anything is written, with an
``InvalidArgument`` that names the offending document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from vectordb import embedders
from vectordb.errors import InvalidArgument, PayloadTooLarge
from vectordb.namespace import FLOAT16_MAX, NamespaceConfig
from vectordb.rows import RowBatch
from vectordb.settings import Settings
from vectordb.vectors import check_vector

MAX_ID_CHARS = 512
MAX_ATTRIBUTES_BYTES = 64 * 1024
# What chunk ids end with (see ingest.chunker.chunk_id). In a chunking namespace no document
# may take such an id: re-ingesting or deleting document "a" would replace or delete "a#1".
_CHUNK_SUFFIX = re.compile(r"#[0-9]+\Z")
# Unicode's control (Cc) and surrogate (Cs) characters, which no id may hold: one regex
# search, not a category lookup per character (a bulk load checks 100,000 ids a second).
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_id(doc_id: Any, where: str) -> str:
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidArgument(f"{where}: id must be a non-empty string")
    if len(doc_id) > MAX_ID_CHARS:
        raise InvalidArgument(f"{where}: id is longer than {MAX_ID_CHARS} characters")
    if _CONTROL_OR_SURROGATE.search(doc_id):
        raise InvalidArgument(f"{where}: id contains control characters")
    return doc_id


def check_new_id(doc_id: Any, where: str) -> str:
    """An id a write may create: ``check_id``, and not ``.`` or ``..``, which no URL can
    name (clients and proxies normalise ``/documents/..`` away), so the document could
    never be fetched by id."""
    check_id(doc_id, where)
    if doc_id in (".", ".."):
        raise InvalidArgument(f"{where}: id {doc_id!r} cannot be used: no URL can name it")
    return doc_id


def check_parent_id(doc_id: Any, where: str) -> None:
    """InvalidArgument if ``doc_id`` has the form of a chunk id (``<id>#<n>``), which a
    chunking namespace reserves for the chunks of document ``<id>``."""
    if isinstance(doc_id, str) and _CHUNK_SUFFIX.search(doc_id):
        raise InvalidArgument(
            f"{where}: id {doc_id!r} ends in '#<number>', which this namespace reserves for chunk ids "
            "(chunk n of document d is d#n); choose another id"
        )


def check_ids(ids: Any, settings: Settings) -> list[str]:
    if not isinstance(ids, list) or not ids:
        raise InvalidArgument("ids must be a non-empty list of strings")
    if len(ids) > settings.max_batch_docs:
        raise PayloadTooLarge(f"at most {settings.max_batch_docs} ids per request, got {len(ids)}")
    checked = [check_id(i, f"ids[{n}]") for n, i in enumerate(ids)]
    _reject_duplicates(checked, "ids")
    return checked


def reject_duplicate_ids(ids: list[str], where: str = "documents") -> None:
    """InvalidArgument if an id occurs twice (one write cannot upsert an id twice)."""
    _reject_duplicates(ids, where)


def _reject_duplicates(ids: list[str], where: str) -> None:
    seen: set[str] = set()
    for n, doc_id in enumerate(ids):
        if doc_id in seen:
            raise InvalidArgument(f"{where}[{n}]: duplicate id {doc_id!r} in one request")
        seen.add(doc_id)


def normalise(vectors: np.ndarray, metric: str, where: Callable[[int], str]) -> np.ndarray:
    """Cosine namespaces store unit vectors; a zero vector has no direction."""
    if metric != "cosine" or len(vectors) == 0:
        return vectors
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~(norms > 0))
    if len(bad):
        raise InvalidArgument(f"{where(int(bad[0]))}: a zero vector cannot be compared by cosine")
    return (vectors / norms[:, None]).astype(np.float32, copy=False)


def _stored_form(vectors: np.ndarray, config: NamespaceConfig, where: Callable[[int], str]) -> np.ndarray:
    """The vectors as the namespace stores them: unit length for cosine; and a float16
    namespace refuses values its segments could not hold (beyond ±65504)."""
    vectors = normalise(vectors, config.metric, where)
    if config.vector_dtype == "float16" and len(vectors):
        big = np.flatnonzero((np.abs(vectors) > FLOAT16_MAX).any(axis=1))
        if len(big):
            raise InvalidArgument(
                f"{where(int(big[0]))}: vector values beyond ±{FLOAT16_MAX:g} do not fit this namespace's float16 storage"
            )
    return vectors


def prepare_upserts(docs: Any, config: NamespaceConfig, settings: Settings) -> RowBatch:
    """Validate documents and embed those that bring text but no vector."""
    if not isinstance(docs, list) or not docs:
        raise InvalidArgument("documents must be a non-empty list")
    if len(docs) > settings.max_batch_docs:
        raise PayloadTooLarge(f"at most {settings.max_batch_docs} documents per request, got {len(docs)}")
    dims = config.dimensions
    ids, texts, attrs = [], [], []
    vectors = np.zeros((len(docs), dims), np.float32)
    to_embed: list[int] = []
    for n, doc in enumerate(docs):
        where = f"documents[{n}]"
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{where}: must be an object")
        unknown = set(doc) - {"id", "text", "vector", "attributes"}
        if unknown:
            raise InvalidArgument(f"{where}: unknown fields {sorted(unknown)}")
        ids.append(check_new_id(doc.get("id"), where))
        text = doc.get("text")
        if text is not None and not isinstance(text, str):
            raise InvalidArgument(f"{where}: text must be a string")
        if text is not None and len(text) > settings.max_text_chars:
            raise PayloadTooLarge(f"{where}: text is longer than {settings.max_text_chars} characters")
        texts.append(text)
        attrs.append(_attributes_json(doc.get("attributes"), where))
        if doc.get("vector") is not None:
            vectors[n] = check_vector(doc["vector"], dims, where)
        elif config.embedder == embedders.NONE:
            raise InvalidArgument(f"{where}: this namespace takes vectors (embedder 'none'); 'vector' is missing")
        elif not text or not text.strip():
            raise InvalidArgument(f"{where}: needs 'text' to embed or a 'vector'")
        else:
            to_embed.append(n)
    _reject_duplicates(ids, "documents")
    if to_embed:
        embedder = embedders.get(config.embedder, settings)
        vectors[to_embed] = embedder.embed_documents([texts[n] for n in to_embed])
    vectors = _stored_form(vectors, config, lambda n: f"documents[{n}]")
    return RowBatch(ids, vectors, texts, attrs)


def _attributes_json(attributes: Any, where: str) -> str | None:
    if attributes is None:
        return None
    if not isinstance(attributes, dict):
        raise InvalidArgument(f"{where}: attributes must be an object")
    try:
        text = json.dumps(attributes, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise InvalidArgument(f"{where}: attributes must be JSON without NaN or infinity") from exc
    if len(text.encode()) > MAX_ATTRIBUTES_BYTES:
        raise PayloadTooLarge(f"{where}: attributes exceed {MAX_ATTRIBUTES_BYTES} bytes as JSON")
    return text


def prepare_table(table, config: NamespaceConfig, settings: Settings) -> RowBatch:
    """Validate an Arrow table of documents (the bulk form of ``prepare_upserts``).

    Columns: ``id`` (string, required), ``vector`` (list of ``dimensions`` floats), ``text``
    (string) and ``attributes`` (JSON object text), all but ``id`` optional. Checks run
    column-wise in numpy, so a batch of 100,000 vectors costs milliseconds, not seconds.
    Texts are embedded when there is no vector column; they are stored whole (no chunking).
    """
    import pyarrow as pa

    unknown = set(table.column_names) - {"id", "vector", "text", "attributes"}
    if unknown:
        raise InvalidArgument(f"unknown columns {sorted(unknown)}; expected id, vector, text, attributes")
    n = table.num_rows
    if n == 0 or "id" not in table.column_names:
        raise InvalidArgument("the table needs rows and an 'id' column")
    if n > settings.max_batch_docs:
        raise PayloadTooLarge(f"at most {settings.max_batch_docs} documents per request, got {n}")
    ids = table.column("id").to_pylist()
    for row, doc_id in enumerate(ids):
        check_new_id(doc_id, f"row {row}")
        if config.chunk_tokens:
            check_parent_id(doc_id, f"row {row}")
    _reject_duplicates(ids, "id")
    texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * n
    if any(t is not None and not isinstance(t, str) for t in texts):
        raise InvalidArgument("the 'text' column must hold strings")
    attrs: list[str | None] = [None] * n
    if "attributes" in table.column_names:
        attrs = [_table_attributes(a, row) for row, a in enumerate(table.column("attributes").to_pylist())]
    dims = config.dimensions
    if "vector" in table.column_names:
        column = table.column("vector").combine_chunks()
        if not pa.types.is_list(column.type) and not pa.types.is_fixed_size_list(column.type):
            raise InvalidArgument("the 'vector' column must be a list of floats")
        if column.null_count:
            raise InvalidArgument("the 'vector' column has nulls")
        flat = column.flatten().to_numpy(zero_copy_only=False)
        if len(flat) != n * dims or (pa.types.is_list(column.type) and (np.diff(column.offsets.to_numpy()) != dims).any()):
            raise InvalidArgument(f"every vector must have {dims} values")
        if flat.dtype.kind not in "if":
            raise InvalidArgument("the 'vector' column must hold numbers")
        vectors = flat.astype(np.float32, copy=False).reshape(n, dims)
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):
            raise InvalidArgument(f"row {int(bad[0])}: vector contains NaN or infinite values (or overflows float32)")
    elif config.embedder == embedders.NONE:
        raise InvalidArgument("this namespace takes vectors (embedder 'none'); the 'vector' column is missing")
    else:
        missing = [row for row, t in enumerate(texts) if not t or not t.strip()]
        if missing:
            raise InvalidArgument(f"row {missing[0]}: needs 'text' to embed (no 'vector' column)")
        vectors = embedders.get(config.embedder, settings).embed_documents(texts)
    vectors = _stored_form(vectors, config, lambda row: f"row {row}")
    return RowBatch(ids, vectors, texts, attrs)


def _table_attributes(text: Any, row: int) -> str | None:
    """A table row's attributes (JSON object text) checked and made compact. orjson: a bulk
    load spends most of its validation here (about 10x json's speed); it refuses NaN and
    infinity while parsing, so what it writes back has none."""
    if text is None:
        return None
    import orjson

    try:
        value = orjson.loads(text)
    except (TypeError, orjson.JSONDecodeError) as exc:
        raise InvalidArgument(f"row {row}: attributes must be JSON object text (no NaN or infinity)") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"row {row}: attributes must be a JSON object")
    out = orjson.dumps(value)
    if len(out) > MAX_ATTRIBUTES_BYTES:
        raise PayloadTooLarge(f"row {row}: attributes exceed {MAX_ATTRIBUTES_BYTES} bytes as JSON")
    return out.decode()
