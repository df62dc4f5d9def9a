"""The hostile upload of issue 11 (``&amp;`` x 1,000,000, a 5 MB ``.html``), before and after
the upload limits, in one run (absolute numbers drift on a shared 2-core machine; the
ratios are what to compare).

before  what the upload route did until then, in this process: parse, then chunk with the
        chunker's search-only cut of over-long words (``_searched_span`` for every span),
        all before the 202.
after   through the HTTP app (in process, memory store, a hash embedder so that the model
        does not dominate): time to the 202, time until the job has ended, its status and
        chunks; and the chunking alone with the guided cut, beside the search-only one.

    python bench/upload_limits.py [--repeat 1000000] [--chunk-tokens 32,256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.chunker import ChunkingConfig, TokenizerCounter, _SectionPacker  # noqa: E402
from ingest.parsers import parse_file  # noqa: E402

DIMS = 32


class SearchOnlyPacker(_SectionPacker):
    """The chunker as it was: every span of an over-long word found by probes and bisection."""

    def _guessed_spans(self, start, end, starts, block_end, most):
        return []


class HashEmbedder:
    name, dimensions = "bench-hash", DIMS

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        out = rng.normal(size=(len(texts), DIMS)).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def chunk(data: bytes, config: ChunkingConfig, counter, packer=_SectionPacker) -> tuple[float, int]:
    """Seconds to parse and chunk ``data``, and the number of chunks."""
    started = time.perf_counter()
    doc = parse_file("amp.html", data, "text/html")
    chunks = sum(len(packer(section.text, config, counter).pack()) for section in doc.sections)
    return time.perf_counter() - started, chunks


def through_the_api(data: bytes, chunk_tokens: int) -> dict:
    """Upload ``data`` to a fresh in-process app; time the 202 and the job's end."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.service import Service
    from storage.memory import MemoryStore
    from vectordb import embedders
    from vectordb.settings import Settings

    embedders.register("bench-hash", DIMS, lambda settings: HashEmbedder())
    settings = Settings(store_uri="memory://bench-upload", group_commit_ms=1, preload_embedder="", auto_index=False,
                        allowed_hosts="testserver")
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))
    with TestClient(app, headers={"X-Requested-With": "bench"}) as client:
        client.put("/v1/namespaces/amp", json={"embedder": "bench-hash",
                                              "chunking": {"chunk_tokens": chunk_tokens, "overlap_tokens": 4}})
        started = time.perf_counter()
        answer = client.post("/v1/namespaces/amp/files", files={"file": ("amp.html", data, "text/html")})
        accepted = time.perf_counter() - started
        job = answer.json()["job"]
        while job["status"] in ("queued", "running"):
            time.sleep(0.02)
            job = client.get(f"/v1/jobs/{job['id']}").json()["job"]
        ended = time.perf_counter() - started
    return {"status": answer.status_code, "to_202_s": accepted, "to_end_s": ended, "job": job}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1_000_000, help="times '&amp;' is repeated")
    parser.add_argument("--chunk-tokens", default="32,256", help="namespace chunk sizes to try")
    args = parser.parse_args(argv)
    data = b"&amp;" * args.repeat
    counter = TokenizerCounter()
    print(f"upload: {len(data):,} bytes of '&amp;' x {args.repeat:,}")
    for chunk_tokens in (int(t) for t in args.chunk_tokens.split(",")):
        config = ChunkingConfig(chunk_tokens, 4)
        before_s, before_chunks = chunk(data, config, counter, SearchOnlyPacker)
        guided_s, guided_chunks = chunk(data, config, counter)
        api = through_the_api(data, chunk_tokens)
        job = api["job"]
        error = f" ({job['error']['code']}: {job['error']['message'][:90]})" if job["error"] else ""
        print(f"\nchunk_tokens={chunk_tokens}")
        print(f"  before: 202 after parse + chunk     {before_s:7.2f} s   chunks {before_chunks:,}")
        print(f"  after:  parse + chunk (guided cut)  {guided_s:7.2f} s   chunks {guided_chunks:,}   "
              f"x{before_s / guided_s:.1f} faster")
        print(f"  after:  HTTP {api['status']} after                 {api['to_202_s']:7.3f} s   "
              f"x{before_s / api['to_202_s']:.0f} sooner than before")
        print(f"  after:  job ended after             {api['to_end_s']:7.2f} s   status {job['status']}, "
              f"chunks {job['chunks_done']:,}/{job['chunks_total']:,}{error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
