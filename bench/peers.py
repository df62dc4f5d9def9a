"""The systems we compare with, one function per system and phase, run in the peers' venv.

    bench/.venv-peers/bin/python bench/peers.py --system lancedb-s3 --phase build --rows 100000 ...

``build`` loads the cached vectors and ingests + indexes them, then exits; ``serve`` is a
fresh process that opens what ``build`` left, answers the first query (its cold start:
``first_result_at`` is a CLOCK_MONOTONIC time the parent subtracts its spawn time from),
then runs every query once to warm up and once more measured, and reports its RSS. Each
phase prints one JSON object on its last stdout line; progress goes to stderr.

Every system reports the same metric names (see ``run.py``):
``ingest_s``, ``build_s``, ``connect_first_ms``, ``first_result_at``, ``warm_p50_ms``,
``warm_p99_ms``, ``recall_at_10``, ``rss_mb``, ``params``.

Only numpy, pyarrow and the peer libraries are imported here: never our service's code.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataset as ds_mod  # noqa: E402  (numpy-only at import)

SYSTEMS = ("faiss", "lancedb-local", "lancedb-s3", "chroma")
LANCE_SUB_VECTORS = 48
LANCE_NPROBES = 16
LANCE_REFINE = 5
CHROMA_M = 16
CHROMA_EF_CONSTRUCTION = 100
CHROMA_EF_SEARCH = 800
INGEST_BLOCK = 100_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mb() -> dict:
    """Resident set size now and at its peak, from /proc (MB)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out["rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    return out


def lance_partitions(rows: int) -> int:
    """1024 at 1M rows (BENCHMARKS.md), scaled with the row count below that."""
    return max(8, min(1024, round(rows * 1024 / 1_000_000)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


def measure_queries(search, queries: np.ndarray, gt: np.ndarray) -> dict:
    """One warm-up pass over every query, then a measured pass: latency and recall@10."""
    for q in queries:
        search(q)
    latencies, found = [], []
    for q in queries:
        started = time.perf_counter()
        ids = search(q)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(ids)
    return {
        "warm_p50_ms": round(percentile(latencies, 0.50), 3),
        "warm_p99_ms": round(percentile(latencies, 0.99), 3),
        "warm_mean_ms": round(sum(latencies) / len(latencies), 3),
        "recall_at_10": round(ds_mod.recall_at_k(found, gt), 4),
    }


def row_ids(ids) -> list[int]:
    return [int(str(i)[1:]) for i in ids]


# --------------------------------------------------------------------------- FAISS


# Rows added to a FAISS index at a time: the base stays memory mapped, never copied whole.
ADD_ROWS = 200_000


def faiss_build(args, data: ds_mod.Dataset) -> dict:
    import faiss

    started = time.perf_counter()  # FAISS has no ingest: build counts from here
    quantizer = faiss.IndexFlatIP(ds_mod.DIMS)
    if args.faiss_index == "ivfsq8":  # 1 byte per dimension: what fits beside the rest at 10M
        index = faiss.IndexIVFScalarQuantizer(quantizer, ds_mod.DIMS, args.nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, ds_mod.DIMS, args.nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(1234)
    rows = len(data.base)
    sample = np.arange(rows) if rows <= args.nlist * 128 else np.sort(rng.choice(rows, args.nlist * 128, False))
    index.train(np.ascontiguousarray(data.base[sample], np.float32))
    for lo in range(0, rows, ADD_ROWS):
        index.add(np.ascontiguousarray(data.base[lo : lo + ADD_ROWS], np.float32))
    faiss.write_index(index, str(Path(args.workdir) / "faiss.index"))
    return {"ingest_s": None, "build_s": time.perf_counter() - started}


def faiss_serve(args, queries: np.ndarray, gt: np.ndarray) -> dict:
    import faiss  # imports count in process start -> first result, not in connect -> first result

    started = time.perf_counter()

    index = faiss.read_index(str(Path(args.workdir) / "faiss.index"))
    index.nprobe = args.nprobe

    def search(q):
        return index.search(q.reshape(1, -1), ds_mod.K)[1][0]

    search(queries[0])
    return _served(started, search, queries, gt)


# --------------------------------------------------------------------------- LanceDB


def _lance_connect(args):
    import lancedb

    if args.system == "lancedb-s3":
        options = {
            "aws_access_key_id": args.access_key,
            "aws_secret_access_key": args.secret_key,
            "aws_endpoint": f"http://{args.s3_endpoint}",
            "aws_region": "us-east-1",
            "allow_http": "true",
        }
        return lancedb.connect(f"s3://{args.bucket}/{args.prefix}/lancedb", storage_options=options)
    return lancedb.connect(str(Path(args.workdir) / "lancedb"))


def lance_build(args, data: ds_mod.Dataset) -> dict:
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), ds_mod.DIMS))])

    def batches():
        for lo in range(0, data.rows, INGEST_BLOCK):
            block = np.ascontiguousarray(data.base[lo : lo + INGEST_BLOCK], np.float32)
            ids = pa.array([ds_mod.doc_id(r) for r in range(lo, lo + len(block))])
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), ds_mod.DIMS)
            yield pa.record_batch([ids, vectors], schema=schema)

    started = time.perf_counter()
    db = _lance_connect(args)
    table = db.create_table("vectors", data=pa.RecordBatchReader.from_batches(schema, batches()), mode="overwrite")
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    table.create_index(
        metric="cosine",
        num_partitions=lance_partitions(data.rows),
        num_sub_vectors=LANCE_SUB_VECTORS,
        vector_column_name="vector",
        index_type="IVF_PQ",
    )
    return {"ingest_s": ingest_s, "build_s": time.perf_counter() - started}


def lance_serve(args, queries: np.ndarray, gt: np.ndarray) -> dict:
    import lancedb  # noqa: F401  (see faiss_serve)

    started = time.perf_counter()
    table = _lance_connect(args).open_table("vectors")

    def search(q):
        result = (
            table.search(q, vector_column_name="vector")
            .distance_type("cosine")
            .nprobes(LANCE_NPROBES)
            .refine_factor(LANCE_REFINE)
            .limit(ds_mod.K)
            .select(["id"])
            .to_arrow()
        )
        return row_ids(result.column("id").to_pylist())

    search(queries[0])
    return _served(started, search, queries, gt)


# --------------------------------------------------------------------------- Chroma


def _chroma_client(args):
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(Path(args.workdir) / "chroma"),
                                     settings=Settings(anonymized_telemetry=False))


def chroma_build(args, data: ds_mod.Dataset) -> dict:
    client = _chroma_client(args)
    collection = client.create_collection(
        "vectors",
        configuration={"hnsw": {"space": "ip", "max_neighbors": CHROMA_M, "ef_construction": CHROMA_EF_CONSTRUCTION,
                                "ef_search": CHROMA_EF_SEARCH}},
        embedding_function=None,
    )
    step = min(5000, client.get_max_batch_size())
    started = time.perf_counter()
    for lo in range(0, data.rows, step):
        block = np.ascontiguousarray(data.base[lo : lo + step], np.float32)
        collection.add(ids=[ds_mod.doc_id(r) for r in range(lo, lo + len(block))], embeddings=block)
        if lo // step % 20 == 0:
            log(f"chroma: added {lo + len(block):,}/{data.rows:,}")
    # Chroma builds its HNSW graph as rows are added: ingest and build are one number.
    return {"ingest_s": time.perf_counter() - started, "build_s": None}


def chroma_serve(args, queries: np.ndarray, gt: np.ndarray) -> dict:
    import chromadb  # noqa: F401  (see faiss_serve)

    started = time.perf_counter()
    collection = _chroma_client(args).get_collection("vectors", embedding_function=None)

    def search(q):
        return row_ids(collection.query(query_embeddings=q.reshape(1, -1), n_results=ds_mod.K, include=[])["ids"][0])

    search(queries[0])
    return _served(started, search, queries, gt)


# --------------------------------------------------------------------------- driver


def _served(started: float, search, queries: np.ndarray, gt: np.ndarray) -> dict:
    out = {"first_result_at": time.monotonic(), "connect_first_ms": round((time.perf_counter() - started) * 1000, 1)}
    out.update(measure_queries(search, queries, gt))
    out.update(rss_mb())
    return out


def params_of(args) -> str:
    if args.system == "faiss":
        kind = "IndexIVFScalarQuantizer 8-bit" if args.faiss_index == "ivfsq8" else "IndexIVFFlat"
        return f"{kind} nlist {args.nlist}, nprobe {args.nprobe}"
    if args.system.startswith("lancedb"):
        return (f"IVF_PQ {lance_partitions(args.rows)}x{LANCE_SUB_VECTORS}, nprobes {LANCE_NPROBES}, "
                f"refine {LANCE_REFINE}")
    return f"HNSW M {CHROMA_M}, efC {CHROMA_EF_CONSTRUCTION}, ef {CHROMA_EF_SEARCH}"


BUILD = {"faiss": faiss_build, "lancedb-local": lance_build, "lancedb-s3": lance_build, "chroma": chroma_build}
SERVE = {"faiss": faiss_serve, "lancedb-local": lance_serve, "lancedb-s3": lance_serve, "chroma": chroma_serve}


def version_of(system: str) -> str:
    import importlib.metadata as md

    names = {"faiss": ["faiss-cpu"], "chroma": ["chromadb"]}.get(system, ["lancedb", "pylance"])
    return ", ".join(f"{n} {md.version(n)}" for n in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=SYSTEMS, required=True)
    parser.add_argument("--phase", choices=("build", "serve"), required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--queries", type=int, default=ds_mod.N_QUERIES)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", required=True, help="local directory for on-disk systems")
    parser.add_argument("--nlist", type=int, default=1000, help="FAISS: partitions (same as our segment)")
    parser.add_argument("--nprobe", type=int, default=8, help="FAISS: partitions probed (same as ours)")
    parser.add_argument("--faiss-index", choices=("ivfflat", "ivfsq8"), default="ivfflat",
                        help="FAISS: float32 vectors, or 8-bit scalar-quantized (same nlist/nprobe)")
    parser.add_argument("--s3-endpoint", default="127.0.0.1:8333")
    parser.add_argument("--bucket", default="vdbbench")
    parser.add_argument("--prefix", default="peers")
    parser.add_argument("--access-key", default="benchkey")
    parser.add_argument("--secret-key", default="benchsecret")
    args = parser.parse_args()

    if args.phase == "build":
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        if args.system == "chroma":
            shutil.rmtree(Path(args.workdir) / "chroma", ignore_errors=True)
        data = ds_mod.load(args.rows, args.seed, args.queries)
        out = BUILD[args.system](args, data)
        out.update({"params": params_of(args), "version": version_of(args.system), "rows": args.rows,
                    "build_peak_rss_mb": rss_mb()["peak_rss_mb"]})
    else:
        directory = ds_mod.set_dir(args.seed)
        queries = np.ascontiguousarray(np.load(directory / "queries.npy", mmap_mode="r")[: args.queries])
        gt = np.load(directory / f"gt-{args.rows}.npy")[: args.queries]
        out = SERVE[args.system](args, queries, gt)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
