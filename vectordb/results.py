"""What the Python API returns: typed results, the same in process and over HTTP.

Each class is a frozen dataclass with ``to_json`` (what the HTTP API answers) and
``from_json`` (what the remote client reads back), so the embedded and the remote
implementation of :mod:`vectordb.interface` return equal objects for equal answers.
Light on purpose: the remote client imports this and nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


class _Json:
    def to_json(self) -> dict:
        # Field by field, not asdict's deep copy: a document may carry its vector, and the
        # server renders every page of a listing through here. (Page and QueryResult, the
        # ones holding other results, say how they render.)
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class NamespaceInfo(_Json):
    name: str
    version: int
    embedder: str
    dimensions: int
    metric: str
    chunk_tokens: int | None = None
    overlap_tokens: int = 0
    vector_dtype: str = "float32"
    cluster_by: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # {"indexed", "unindexed"}
    segments: list[dict] = field(default_factory=list)
    wal_objects: int = 0
    bytes: int = 0
    created: bool | None = None  # for create_namespace: whether this call created it
    origin: dict | None = None  # a branch's source {"namespace", "version"}


@dataclass(frozen=True)
class WriteResult(_Json):
    """An acknowledged write: durable at ``version``. ``upserted``/``deleted`` count rows
    (chunks); ``documents`` the documents they came from; ``restored`` the version a
    restore brought back."""

    version: int
    upserted: int = 0
    deleted: int = 0
    documents: int = 0
    restored: int | None = None  # restore: the version whose content the new one has


@dataclass(frozen=True)
class Hit(_Json):
    id: str
    score: float
    text: str | None = None
    attributes: dict[str, Any] | None = None
    vector: list[float] | None = None
    scores: dict[str, float | None] | None = None  # hybrid: per mode


@dataclass(frozen=True)
class QueryResult(_Json):
    hits: list[Hit]
    version: int

    def to_json(self) -> dict:
        # Each hit's fields as they are (not asdict's deep copy: a hit may carry its vector).
        return {"results": [{k: v for k, v in h.__dict__.items() if v is not None} for h in self.hits],
                "version": self.version}

    @classmethod
    def from_json(cls, data: dict) -> QueryResult:
        return cls([Hit.from_json(h) for h in data["results"]], data["version"])


@dataclass(frozen=True)
class Document(_Json):
    id: str
    text: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    vector: list[float] | None = None
    chunks: list[dict] | None = None  # a chunked document: its chunks in order


@dataclass(frozen=True)
class Page(_Json):
    """One page of a listing: ``cursor`` fetches the next (None: the end); every page of a
    listing reads the same ``version``."""

    documents: list[Document]
    cursor: str | None
    version: int

    def to_json(self) -> dict:
        return {"documents": [d.to_json() for d in self.documents], "cursor": self.cursor, "version": self.version}

    @classmethod
    def from_json(cls, data: dict) -> Page:
        return cls([Document.from_json(d) for d in data["documents"]], data.get("cursor"), data["version"])


@dataclass(frozen=True)
class RagResult(_Json):
    answer: str | None
    citations: list[dict]
    passages: list[dict]
    prompt: str
    context_tokens: int
    mode: str
    version: int


@dataclass(frozen=True)
class JobInfo(_Json):
    id: str
    namespace: str
    status: str  # queued, running, done, failed, cancelled
    chunks_total: int = 0
    chunks_done: int = 0
    documents: int = 0
    version: int | None = None
    error: dict | None = None  # {"code", "message", "status"}: a failed job
    description: str = ""
    created_at: float | None = None
    finished_at: float | None = None
    owner: str | None = None  # the id of the API key that started it
    heartbeat_at: float | None = None
    cancel_requested: bool = False

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @property
    def http_status(self) -> int:
        """What the synchronous call would have answered: 200, 409 (cancelled) or the
        failure's own status."""
        if self.status == "cancelled":
            return 409
        return self.error.get("status", 500) if self.error is not None else 200


@dataclass(frozen=True)
class IndexInfo(_Json):
    version: int
    indexed_rows: int
    segments: int
    compacted: bool
    seconds: float
    gc: dict | None = None


@dataclass(frozen=True)
class VersionEntry(_Json):
    version: int
    created_at: float | None
    change: dict | None
    readable: bool
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TagInfo(_Json):
    name: str
    version: int
    created_at: float
