"""An uploaded file -> its chunk documents, ready to embed: what a parse process runs.

:func:`chunk_upload` parses (``ingest.parsers``) and chunks (``ingest.documents``) one
upload. It runs in a child process (``ingest.parse_pool``) under the job's time limit, so
it gets everything as one picklable :class:`Upload` and loads the tokenizer itself (once
per child process).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ingest import documents, parsers
from ingest.chunker import TokenizerCounter
from vectordb.errors import PayloadTooLarge
from vectordb.namespace import NamespaceConfig


@dataclass(frozen=True)
class Upload:
    """One uploaded file and the limits it is held to.

    ``parent`` is the document id of a single-document file (None for JSON Lines, whose
    lines carry their own ids); ``tokenizer_dir`` is where chunk sizes are counted from.
    """

    filename: str
    data: bytes
    content_type: str | None
    kind: str
    parent: str | None
    attributes: dict
    config: NamespaceConfig
    tokenizer_dir: str
    max_bytes: int
    max_docs: int
    max_chunks: int


@functools.cache
def _counter(tokenizer_dir: str) -> TokenizerCounter:
    return TokenizerCounter(tokenizer_dir)


def chunk_upload(upload: Upload) -> list[dict]:
    """The chunk documents of ``upload`` (``{"id", "text", "attributes"}`` each).

    Raises InvalidArgument for a file that cannot be read or has no text, PayloadTooLarge
    past ``max_bytes``, ``max_docs`` JSON Lines documents or ``max_chunks`` chunks.
    """
    counter = _counter(upload.tokenizer_dir)
    config = upload.config
    if upload.kind == "jsonl":
        docs = parsers.parse_jsonl(upload.data, upload.max_docs, max_bytes=upload.max_bytes)
        if upload.attributes:  # the form's attributes, under each line's own
            docs = [{**doc, "attributes": {**upload.attributes, **doc["attributes"]}} for doc in docs]
        if config.chunk_tokens:
            docs = documents.expand(docs, config, counter)
    else:
        parsed = parsers.parse_file(upload.filename, upload.data, upload.content_type, max_bytes=upload.max_bytes)
        docs = documents.file_documents(
            upload.parent or upload.filename, parsed, config, counter, upload.attributes, upload.filename
        )
    if len(docs) > upload.max_chunks:
        raise PayloadTooLarge(
            f"{upload.filename[:200]!r} makes {len(docs)} chunks, more than the limit of {upload.max_chunks} "
            "(max_chunks_per_file); split it into smaller files"
        )
    return docs
