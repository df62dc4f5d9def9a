"""Deterministic stand-ins for tests: an embedder that needs no model."""

from __future__ import annotations

import hashlib
import re
import time

import numpy as np

from vectordb import embedders
from vectordb.settings import Settings

FAKE_DIMS = 64
# The default allow-list of an open server plus the Host that FastAPI's TestClient sends.
TEST_HOSTS = "localhost,127.0.0.1,[::1],testserver"


class HashEmbedder:
    """Bag of hashed words: texts sharing words get similar vectors. No model, no torch."""

    name = "fake"
    dimensions = FAKE_DIMS

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), FAKE_DIMS), np.float32)
        for n, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[n, h % FAKE_DIMS] += 1.0 if (h >> 16) & 1 else -1.0
            norm = np.linalg.norm(out[n])
            out[n] = out[n] / norm if norm > 0 else np.eye(FAKE_DIMS, dtype=np.float32)[0]
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def register_fake_embedder() -> None:
    embedders.register("fake", FAKE_DIMS, lambda settings: HashEmbedder())


def unit_settings(store_uri: str = "memory://unit", **overrides) -> Settings:
    """Settings for the unit tier: the fake embedder registered, commits without waiting,
    tiny partitions (so a few hundred rows make several), no background indexing, and
    garbage collection that keeps only the newest manifest at once."""
    register_fake_embedder()
    fields = dict(
        store_uri=store_uri,
        group_commit_ms=1,
        flat_max_rows=50,
        rows_per_partition=40,
        auto_index=False,
        gc_grace_s=0,
        retain_manifests=1,
        allowed_hosts=TEST_HOSTS,
    )
    return Settings(**{**fields, **overrides})


class Processes:
    """Services with their own caches (as separate worker processes have) over one store:
    ``process()`` starts another; ``close()`` closes them all."""

    def __init__(self, store=None, clock=time.time, **settings) -> None:
        from storage.memory import MemoryStore

        self.store = store if store is not None else MemoryStore()
        self.clock = clock
        self.settings = unit_settings(**settings)
        self.procs: list = []

    def process(self):
        from api.service import Service
        from storage import CachedStore

        proc = Service(self.settings, store=CachedStore(self.store, 1 << 26), clock=self.clock)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.close()


def scan_blocks(blocks, q, k: int, metric: str, order=None):
    """``vectordb.ivf.BlockScan`` of ``blocks`` (added in ``order``: default, as listed)."""
    from vectordb import ivf

    scan = ivf.BlockScan(q, k, metric)
    for i in range(len(blocks)) if order is None else order:
        scan.add(int(i), blocks[i])
    return scan.result()
