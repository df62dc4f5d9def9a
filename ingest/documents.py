"""From what clients send to the rows we store: long texts and files become chunks.

A document whose text is longer than the namespace's ``chunk_tokens`` is split (see
:mod:`ingest.chunker`) into chunks with ids ``<id>#0``, ``<id>#1``, ...; a shorter one keeps
its id. In a chunking namespace every stored row carries reserved attributes, merged over
the client's own: ``doc_id`` (the parent document), ``chunk`` (index), and where known
``title``, ``source`` (file name), ``page`` and ``heading``. Re-ingesting a document
replaces all of its old chunks; deleting it deletes them (see ``api.service``).
"""

from __future__ import annotations

from typing import Any

from ingest.chunker import Chunk, ChunkingConfig, TokenCounter, chunk_document, chunk_id, chunk_text
from ingest.parsers import ParsedDocument
from ingest.validate import check_parent_id
from vectordb.errors import InvalidArgument
from vectordb.namespace import NamespaceConfig

RESERVED = ("doc_id", "chunk", "title", "source", "page", "heading")


def chunking_of(config: NamespaceConfig) -> ChunkingConfig | None:
    if config.chunk_tokens is None:
        return None
    return ChunkingConfig(config.chunk_tokens, config.overlap_tokens)


def expand(docs: Any, config: NamespaceConfig, counter: TokenCounter) -> list:
    """Split long texts of ``docs`` into chunk documents (others pass through, tagged).

    Malformed documents pass through untouched: validation reports them properly.
    """
    chunking = chunking_of(config)
    if chunking is None or not isinstance(docs, list):
        return docs
    out: list = []
    for n, doc in enumerate(docs):
        if isinstance(doc, dict):
            check_parent_id(doc.get("id"), f"documents[{n}]")
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("text"), str):
            out.append(doc)
            continue
        attributes = doc.get("attributes")
        if attributes is not None and not isinstance(attributes, dict):
            out.append(doc)
            continue
        attributes = dict(attributes or {})
        if doc.get("vector") is None and counter.count_tokens(doc["text"]) > chunking.chunk_tokens:
            chunks = chunk_text(doc["text"], chunking, counter)
            out += chunk_documents(doc["id"], chunks, attributes, title=attributes.get("title"))
        else:
            out.append({**doc, "attributes": {**attributes, "doc_id": doc["id"]}})
    return out


def chunk_documents(
    parent: str, chunks: list[Chunk], attributes: dict, title: str | None = None, source: str | None = None
) -> list[dict]:
    """One document per chunk, with the reserved attributes filled in."""
    out = []
    for chunk in chunks:
        attrs = {**attributes, "doc_id": parent, "chunk": chunk.index}
        for key, value in (("title", title), ("source", source), ("page", chunk.page), ("heading", chunk.heading)):
            if value is not None:
                attrs[key] = value
        out.append({"id": chunk_id(parent, chunk.index), "text": chunk.text, "attributes": attrs})
    return out


def file_documents(
    parent: str, parsed: ParsedDocument, config: NamespaceConfig, counter: TokenCounter, attributes: dict, source: str
) -> list[dict]:
    """The chunk documents of an uploaded (parsed) file."""
    chunking = chunking_of(config) or ChunkingConfig()
    chunks = chunk_document(parsed, chunking, counter)
    if not chunks:
        raise InvalidArgument(f"{source}: no text found in the file")
    return chunk_documents(parent, chunks, attributes, title=parsed.title, source=source)


def parents(docs: list) -> list[str]:
    """The distinct parent ids of expanded documents, in order."""
    seen: dict[str, None] = {}
    for doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("attributes"), dict) and "doc_id" in doc["attributes"]:
            seen.setdefault(doc["attributes"]["doc_id"])
    return list(seen)
