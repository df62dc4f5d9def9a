"""LanceDB on the text-scale workload of ``text_scale.py``, run in the peers' venv.

    bench/.venv-peers/bin/python bench/lance_text.py build --corpus DIR --deleted FILE --uri DIR
    bench/.venv-peers/bin/python bench/lance_text.py serve --uri URI --plan FILE --kind KIND [--warm N]

``build`` reads the corpus's Parquet shards (id, vector, text, attributes as JSON) into one
table ``chunks`` (id, vector, text, year, tenant, tags), then builds what shared/BENCHMARKS.md
measured at 200k: IVF_PQ (one partition per 1,000 rows, 48 sub-vectors, cosine), the native
full-text index on ``text`` (``use_tantivy=False``), BTREE on ``id`` and ``year``, BITMAP on
``tenant``; then deletes the ids of ``--deleted`` (1 %: deletion files, the indexes stay in use).

``serve`` is a fresh process: it opens the table (``s3://...`` with ``--s3-endpoint``) and
answers the plan's first query of ``KIND`` (cold: open -> answer, imports excluded; the bytes
this process read(2), which on local disk counts file reads: the files are in the page
cache), then ``--warm`` more (p50 / p99), and reports its peak RSS. Query parameters: nprobes
8, refine 5 (BENCHMARKS.md). One JSON object on the last stdout line; progress on stderr.

Only numpy, pyarrow and lancedb are imported here, never our service's code.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# The index calls are those of shared/BENCHMARKS.md, deprecated since: keep stderr readable.
warnings.filterwarnings("ignore", category=DeprecationWarning)

TABLE = "chunks"
SUB_VECTORS = 48
NPROBES = 8
REFINE = 5
K = 10
DELETE_BATCH = 2_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def proc_status() -> dict:
    """Peak RSS (MB) and bytes read by read(2) so far, from /proc."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            out["rchar"] = int(line.split()[1])
    return out


def connect(args):
    import lancedb

    if args.uri.startswith("s3://"):
        return lancedb.connect(args.uri, storage_options={
            "aws_access_key_id": args.access_key, "aws_secret_access_key": args.secret_key,
            "aws_endpoint": f"http://{args.s3_endpoint}", "aws_region": "us-east-1", "allow_http": "true"})
    return lancedb.connect(args.uri)


# --------------------------------------------------------------------------- build


def _rows(corpus: Path):
    """The shards as record batches of the table's schema (attributes split into columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for shard in sorted(corpus.glob("*.parquet")):
        table = pq.read_table(shard)
        attributes = [json.loads(a) for a in table.column("attributes").to_pylist()]
        yield pa.record_batch({
            "id": table.column("id").combine_chunks(),
            "vector": table.column("vector").combine_chunks(),
            "text": table.column("text").combine_chunks(),
            "year": pa.array([a["year"] for a in attributes], pa.int32()),
            "tenant": pa.array([a["tenant"] for a in attributes]),
            "tags": pa.array([a["tags"] for a in attributes], pa.list_(pa.string())),
        })


def build(args) -> dict:
    import pyarrow as pa

    batches = _rows(Path(args.corpus))
    first = next(batches)
    out, started = {}, time.perf_counter()
    db = connect(args)
    reader = pa.RecordBatchReader.from_batches(first.schema, (b for bs in ([first], batches) for b in bs))
    table = db.create_table(TABLE, data=reader, mode="overwrite")
    rows = table.count_rows()
    out["write_s"] = round(time.perf_counter() - started, 1)
    log(f"lancedb: wrote {rows:,} rows in {out['write_s']} s")
    steps = [
        ("ivf_pq_s", lambda: table.create_index(metric="cosine", num_partitions=max(8, rows // 1000),
                                                num_sub_vectors=SUB_VECTORS, vector_column_name="vector",
                                                index_type="IVF_PQ")),
        ("fts_s", lambda: table.create_fts_index("text", use_tantivy=False)),
        ("btree_id_s", lambda: table.create_scalar_index("id", index_type="BTREE")),
        ("btree_year_s", lambda: table.create_scalar_index("year", index_type="BTREE")),
        ("bitmap_tenant_s", lambda: table.create_scalar_index("tenant", index_type="BITMAP")),
    ]
    for name, step in steps:
        started = time.perf_counter()
        step()
        out[name] = round(time.perf_counter() - started, 1)
        log(f"lancedb: {name[:-2]} in {out[name]} s")
    deleted = json.loads(Path(args.deleted).read_text())
    started = time.perf_counter()
    for lo in range(0, len(deleted), DELETE_BATCH):
        table.delete("id IN (" + ", ".join(f"'{d}'" for d in deleted[lo : lo + DELETE_BATCH]) + ")")
    out["delete_s"] = round(time.perf_counter() - started, 1)
    out["rows"] = rows
    out["live_rows"] = table.count_rows()
    out["params"] = (f"IVF_PQ {max(8, rows // 1000)}x{SUB_VECTORS} cosine, nprobes {NPROBES}, refine {REFINE}; "
                     "FTS use_tantivy=False; BTREE id, year; BITMAP tenant")
    out["build_peak_rss_mb"] = proc_status()["peak_rss_mb"]
    return out


# --------------------------------------------------------------------------- serve


def kinds(table, plan: dict) -> dict:
    """Query kind -> function(i) answering the plan's ``i``-th query of that kind (an Arrow table)."""
    vectors, texts, ids = [np.asarray(v, np.float32) for v in plan["vectors"]], plan["texts"], plan["ids"]

    def ann(i: int, where: str | None = None, columns=("id",)):
        q = (table.search(vectors[i], vector_column_name="vector").distance_type("cosine")
             .nprobes(NPROBES).refine_factor(REFINE).limit(K))
        if where:
            q = q.where(where, prefilter=True)
        return q.select(list(columns)).to_arrow()

    def hybrid(i: int):
        return (table.search(query_type="hybrid", vector_column_name="vector").vector(vectors[i]).text(texts[i])
                .distance_type("cosine").nprobes(NPROBES).refine_factor(REFINE).limit(K).select(["id"]).to_arrow())

    return {
        "vector": ann,
        "vector+year": lambda i: ann(i, "year >= 2013"),
        "vector+tenant+year": lambda i: ann(i, "tenant = 't7' AND year = 2020"),
        "bm25": lambda i: table.search(texts[i], query_type="fts").limit(K).select(["id"]).to_arrow(),
        "vector+text": lambda i: ann(i, columns=("id", "text")),
        "get": lambda i: (table.search().where(f"id = '{ids[i]}'").limit(1)
                          .select(["id", "text", "year", "tenant", "tags"]).to_arrow()),
        "hybrid": hybrid,
    }


def serve(args) -> dict:
    import lancedb  # noqa: F401  (imports are not part of a cold query)

    plan = json.loads(Path(args.plan).read_text())
    before = proc_status()
    started = time.perf_counter()
    table = connect(args).open_table(TABLE)
    run = kinds(table, plan)[args.kind]
    first = run(0)
    cold_ms = (time.perf_counter() - started) * 1000
    read = proc_status()["rchar"] - before["rchar"]
    times = []
    for i in range(1, args.warm + 1):
        started = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "cold_ms": round(cold_ms, 1),
        "cold_read_mb": round(read / 1e6, 3),
        "cold_rows": first.num_rows,
        "warm_p50_ms": round(statistics.median(times), 2) if times else None,
        "warm_p99_ms": round(times[int(0.99 * (len(times) - 1))], 2) if times else None,
        "peak_rss_mb": proc_status()["peak_rss_mb"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("build", "serve"))
    parser.add_argument("--uri", required=True, help="a local directory or s3://bucket/prefix")
    parser.add_argument("--corpus", help="build: the directory of Parquet shards")
    parser.add_argument("--deleted", help="build: a JSON list of the ids to delete")
    parser.add_argument("--plan", help="serve: the queries (JSON: vectors, texts, ids)")
    parser.add_argument("--kind", help="serve: which query kind")
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--s3-endpoint", default="127.0.0.1:8333")
    parser.add_argument("--access-key", default="benchkey")
    parser.add_argument("--secret-key", default="benchsecret")
    args = parser.parse_args()
    out = build(args) if args.phase == "build" else serve(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
