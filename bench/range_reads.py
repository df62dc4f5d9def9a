"""What a cold query's reads cost on the benchmark's S3 server, by shape: many ranged GETs
of one big object (how a query reads probed partitions of ``vectors.bin``) beside the same
bytes as separate objects and as one GET, and small GETs (what a rerank by row would send).

Issue 13 asks a cold query at 10M vectors to answer in <= 80 ms. At 10M x 384 (int8,
nlist 10,000, nprobe 100) the query reads ~100 partitions, ~65-90 MB, in one round of
ranged GETs; this measures the floor of such a round on this machine, without any of the
query's own work, so the note can say what a format must change to get there.

    .venv/bin/python bench/range_reads.py [--object-mb 512] [--rounds 5] [--endpoint host:port]

Through ``storage.s3.S3Store`` (the minio SDK, as a query worker reads), ``fetch_threads``
(16) requests at once. Every shape is timed ``--rounds`` times at fresh random offsets;
prints the median and min per shape, and each median over the median of one GET of the
same total bytes (the baseline, in the same run). Writes
``bench/results/<time>-range-reads.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import s3 as s3_mod  # noqa: E402

from storage.s3 import S3Store  # noqa: E402
from vectordb.settings import Settings  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--object-mb", type=int, default=512, help="size of the big object")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--endpoint", default=None, help="S3 host:port (default: a SeaweedFS of its own)")
    args = parser.parse_args()
    size = args.object_mb * 2**20
    settings = Settings()
    threads = settings.fetch_threads
    # (name, request count, bytes each, separate objects?)
    shapes = [
        ("100 ranges of 700 KB, one object", 100, 700_000, False),
        ("100 objects of 700 KB", 100, 700_000, True),
        ("one range of 70 MB", 1, 70_000_000, False),
        ("8 ranges of 8.75 MB, one object", 8, 8_750_000, False),
        ("100 ranges of 90 KB, one object", 100, 90_000, False),
        ("one range of 9 MB", 1, 9_000_000, False),
        ("100 ranges of 400 B, one object", 100, 400, False),
        ("300 ranges of 400 B, one object", 300, 400, False),
    ]
    baselines = {70_000_000: "one range of 70 MB", 9_000_000: "one range of 9 MB"}
    workdir = Path(tempfile.mkdtemp(prefix="range-reads-"))
    prefix = f"range-reads-{int(time.time())}"
    result: dict = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(), "object_bytes": size, "fetch_threads": threads, "rounds": args.rounds}
    with s3_mod.endpoint(args.endpoint, workdir, log) as endpoint:
        try:
            store = S3Store.from_uri(f"s3://{s3_mod.BUCKET}/{prefix}", settings.model_copy(update={
                "s3_endpoint": endpoint, "s3_access_key": s3_mod.ACCESS_KEY, "s3_secret_key": s3_mod.SECRET_KEY}))
            data = os.urandom(size)
            path = workdir / "big.bin"
            path.write_bytes(data)
            store.put_file("big.bin", path)
            path.unlink()
            for i in range(100):
                store.put(f"small/{i}", data[i * 700_000 : (i + 1) * 700_000])
            del data
            rng = random.Random(42)
            pool = ThreadPoolExecutor(threads)
            times: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, count, each, separate in shapes:
                    if separate:
                        def read(i: int) -> bytes:
                            return store.get(f"small/{i}")
                        work = list(range(count))
                    else:
                        def read(offset: int, each: int = each) -> bytes:
                            return store.get_range("big.bin", offset, each)
                        work = [rng.randrange(0, size - each) for _ in range(count)]
                    started = time.perf_counter()
                    got = sum(len(b) for b in pool.map(read, work))
                    times.setdefault(name, []).append((time.perf_counter() - started) * 1000)
                    assert got == count * each, (name, got)
            pool.shutdown()
        finally:
            s3_mod.remove_prefixes(endpoint, [prefix], log)
    rows = []
    for name, count, each, _ in shapes:
        median = statistics.median(times[name])
        base = baselines.get(count * each)
        ratio = round(median / statistics.median(times[base]), 2) if base and base != name else None
        rows.append({"shape": name, "requests": count, "bytes": count * each, "median_ms": round(median, 1),
                     "min_ms": round(min(times[name]), 1), "over_one_get": ratio,
                     "ms_per_request": round(median / count, 2)})
    result["shapes"] = rows
    print(f"\n{os.cpu_count()} cores, SeaweedFS on loopback, {threads} requests at once; "
          f"median of {args.rounds} rounds")
    print("| shape | requests | MB | median ms | min ms | ms / request | / one GET of the same bytes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['shape']} | {r['requests']} | {r['bytes'] / 1e6:.2f} | {r['median_ms']} | {r['min_ms']} | "
              f"{r['ms_per_request']} | {r['over_one_get'] if r['over_one_get'] is not None else ''} |")
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-range-reads.json"
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
