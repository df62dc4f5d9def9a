"""Warm strong queries with and without speculative reads, on text-heavy chunks.

A strong query must ask the store whether a version newer than the one its worker knows
exists. With ``speculative_reads`` (the default) the worker searches the version it knows
while that probe is in flight and answers when the probe finds none; without, it searches
after the probe. This measures what that saves on a warmed worker, per query kind.

The namespace is ``text_scale``'s: ``--chunks`` chunks of 80-160 words (NFCorpus word
frequencies), attributes ``{year, tenant, tags, doc_id}``, 384-d vectors stored int8, 1 %
deleted (a tombstone list), one segment, on a SeaweedFS of its own (``--endpoint`` names
another). Then, per ``--latency-ms`` value (milliseconds added to every read the worker
sends: 0 is loopback SeaweedFS, where a probe costs ~1.3 ms of which ~0.8 ms is this
process's own CPU; 10 stands in for a cloud object store's first byte), ``--rounds``
rounds of two fresh workers, speculation off and on in alternating order, each warmed by
the warm hint (``query.warm``, budget = its cache) and then sent ``--warm`` queries of each
kind. Prints p50 / p99 per kind and setting (median over rounds) and on / off; the
answers of both settings must be equal. Writes
``bench/results/<time>-speculative-reads-<chunks>.json``.

    .venv/bin/python bench/speculative_reads.py [--chunks 100000] [--warm 100] [--rounds 3] [--latency-ms 0 10]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import docs_on_demand as corpus  # noqa: E402
import s3  # noqa: E402
import text_scale  # noqa: E402

from storage import open_raw_store  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

log = text_scale.log


def measure(store, n: int, warm: int, texts: list[str], latency_s: float, speculative: bool, over: dict) -> tuple[dict, dict]:
    """One warmed worker: per kind p50 / p99 (ms) of ``warm`` queries, and its answers."""
    runs = text_scale.our_kinds(n, texts)
    read_store = corpus.Delayed(store, latency_s) if latency_s else store
    out, answers, _ = corpus.warmed_then_queried(read_store, text_scale.NS, runs, warm,
                                                 speculative_reads=speculative, **over)
    gc.collect()
    return {key: (m["warmed_p50_ms"], m["warmed_p99_ms"]) for key, m in out.items()}, answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--endpoint", help="an S3 endpoint host:port (default: a SeaweedFS of its own)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = datetime.datetime.now()
    texts = text_scale.query_texts(args.warm)
    result: dict = {"started": started.isoformat(timespec="seconds"), "chunks": args.chunks, "warm": args.warm,
                    "rounds": args.rounds, "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]},
                    "latency": {}}
    prefix = f"speculative-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="speculative-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        endpoint = args.endpoint or stack.enter_context(s3.seaweedfs(tmp / "seaweedfs", s3.weed_binary(), log))
        stack.callback(s3.remove_prefixes, endpoint, [prefix], log)
        over = text_scale.s3_settings(endpoint, prefix)
        store = open_raw_store(Settings(**over))
        result["build"] = text_scale.build_ours(store, args.chunks, args.seed, tmp / "shards")
        for latency_ms in args.latency_ms:
            p50s: dict = {}
            p99s: dict = {}
            equal = True
            for r in range(args.rounds):
                order = (False, True) if r % 2 == 0 else (True, False)
                answers = {}
                for speculative in order:
                    times, answers[speculative] = measure(store, args.chunks, args.warm, texts, latency_ms / 1000,
                                                          speculative, over)
                    for key, (p50, p99) in times.items():
                        p50s.setdefault(key, {True: [], False: []})[speculative].append(p50)
                        p99s.setdefault(key, {True: [], False: []})[speculative].append(p99)
                equal = equal and answers[True] == answers[False]
                log(f"latency {latency_ms} ms, round {r + 1}/{args.rounds}: "
                    f"{ {k: (v[False][-1], v[True][-1]) for k, v in p50s.items()} } (off, on)")
            result["latency"][str(latency_ms)] = {
                "answers_equal": equal,
                "kinds": {key: {"p50_ms_off": statistics.median(p50s[key][False]),
                                "p50_ms_on": statistics.median(p50s[key][True]),
                                "p99_ms_off": statistics.median(p99s[key][False]),
                                "p99_ms_on": statistics.median(p99s[key][True]),
                                "on_over_off": round(statistics.median(p50s[key][True])
                                                     / statistics.median(p50s[key][False]), 3)}
                          for key in text_scale.KINDS}}
    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    lines = ["| added latency | query | p50 off ms | p50 on ms | on / off | p99 off ms | p99 on ms |",
             "| --- " * 7 + "|"]
    for latency_ms, block in result["latency"].items():
        for key, name in text_scale.KINDS.items():
            k = block["kinds"][key]
            lines.append(f"| {latency_ms} ms | {name} | {k['p50_ms_off']} | {k['p50_ms_on']} | {k['on_over_off']} | "
                         f"{k['p99_ms_off']} | {k['p99_ms_on']} |")
        lines.append(f"| {latency_ms} ms | answers equal off / on | {block['answers_equal']} | | | | |")
    print("\n".join(lines))
    out = args.out or ROOT / "bench" / "results" / f"{started:%Y%m%d-%H%M%S}-speculative-reads-{args.chunks}.json"
    out.write_text(json.dumps({**result, "table": lines}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
