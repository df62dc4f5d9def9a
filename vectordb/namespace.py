"""Namespace names and the per-namespace configuration recorded in every manifest."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from vectordb.errors import InvalidArgument

# ASCII only: unicode look-alikes ("ｎs", Cyrillic "а") and path tricks ("..", "/") never
# reach a storage key. The name becomes one key segment.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

METRICS = ("cosine", "dot", "l2")
# How indexed segments store vectors. float16 halves what a cold query reads from object
# storage (and the read cache holds twice the rows) for a rounding error of ~1e-3 per
# component; int8 (8-bit codes per component over each partition's range) quarters it for
# an error of up to half a step (range/510). The write-ahead log always keeps float32.
VECTOR_DTYPES = ("float32", "float16", "int8")
FLOAT16_MAX = 65504.0


def check_namespace_name(name: str) -> str:
    """Return ``name`` if it is a valid namespace name, else raise InvalidArgument."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):  # fullmatch: "$" takes a trailing newline
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}..."
        raise InvalidArgument(
            f"invalid namespace name {shown!r}: use 1-63 ASCII letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class NamespaceConfig:
    """What a namespace is: how its vectors are made and compared. Fixed at creation."""

    embedder: str  # "none" = the client supplies vectors
    dimensions: int
    metric: str = "cosine"
    # Texts longer than this many tokens are split into chunks (None: never split).
    chunk_tokens: int | None = None
    overlap_tokens: int = 0
    vector_dtype: str = "float32"
    # Attribute keys each segment's clusters.bin groups its vectors by (vectordb.clusters):
    # a selective filter on them reads a few ranges. Empty: no copy.
    cluster_by: tuple[str, ...] = ()

    def to_json(self) -> dict:
        data = asdict(self)
        data["cluster_by"] = list(self.cluster_by)
        if not self.cluster_by:  # manifests of namespaces without it stay as they were
            del data["cluster_by"]
        return data

    @classmethod
    def from_json(cls, data: dict) -> NamespaceConfig:
        return cls(
            embedder=data["embedder"],
            dimensions=int(data["dimensions"]),
            metric=data["metric"],
            chunk_tokens=data.get("chunk_tokens"),
            overlap_tokens=int(data.get("overlap_tokens", 0)),
            vector_dtype=data.get("vector_dtype", "float32"),
            cluster_by=tuple(data.get("cluster_by", ())),
        )

    def validate(self) -> NamespaceConfig:
        if self.metric not in METRICS:
            raise InvalidArgument(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.vector_dtype not in VECTOR_DTYPES:
            raise InvalidArgument(f"vector_dtype must be one of {', '.join(VECTOR_DTYPES)}, not {self.vector_dtype!r}")
        if not 1 <= self.dimensions <= 4096:
            raise InvalidArgument(f"dimensions must be between 1 and 4096, not {self.dimensions}")
        from vectordb.clusters import check_names

        check_names(self.cluster_by)
        return self
