"""Cold start of a query worker through Ray Serve, from zero replicas, stage by stage.

Needs a namespace of BEIR NFCorpus (3.6k documents, embedder minilm) in S3; ingests it
once into ``--prefix`` (torch, ~3-4 min on 2 cores) and reuses it afterwards. Then, on a
one-machine Ray (2 CPUs), with the query role scaled to zero after ``--idle-s``:

* cold:       a text query while there is no replica (p50 of ``--runs``), and where the
              time went: request -> process start -> replica constructor -> imports ->
              app -> model -> manifest -> centroids -> partitions -> answer -> client;
              the replica lands in a spare, preloaded Ray worker (``deploy.worker_pool``;
              ``process_start`` before the request); ``cold_no_spare``: the same with
              ``spare_workers=0``, a fresh process per replica;
* warm:       the same replica, p50 of ``--warm-queries`` text queries and as many vector
              queries, beside the same queries as direct in-process calls
              (``Service.query``) in this process;
* warm hint:  cold again, with ``POST /v1/namespaces/{ns}/warm`` sent first, and with
              the deployment's ``--warm`` (the replica prefetches before taking traffic);
* disk cache: cold again with ``VECTORDB_DISK_CACHE_DIR`` filled by an earlier replica;
* torch:      one cold query with the sentence-transformers runtime, for comparison;
* baseline:   cold (p50 of ``--runs``) and warm again on a Ray of its own whose requests
              go through ``--baseline-ingress`` (Serve's Python proxy), while the rest
              use ``--ingress`` (HAProxy by default, ``deploy.ray_serve.ingress_env``).

    python bench/coldstart.py [--endpoint 127.0.0.1:8333] [--prefix coldstart-nfcorpus]
                              [--ingress haproxy] [--baseline-ingress proxy|none]

The result is printed and written to ``--out`` (``bench/results/<time>-coldstart.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from deploy.ray_serve import DEFAULT_INGRESS, INGRESSES  # noqa: E402
from vectordb.settings import Settings  # noqa: E402
from vectordb.testing import ACCESS_KEY, DATA, SECRET_KEY, TEST_BUCKET, free_port, nfcorpus_docs  # noqa: E402

NS = "nfcorpus"


def log(*args, end: str = "\n") -> None:
    print(*args, file=sys.stderr, flush=True, end=end)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def test_queries(limit: int) -> list[str]:
    wanted = set()
    with open(DATA / "nfcorpus" / "qrels" / "test.tsv") as f:
        next(f)
        wanted = {line.split("\t", 1)[0] for line in f}
    out = []
    with open(DATA / "nfcorpus" / "queries.jsonl") as f:
        for line in f:
            q = json.loads(line)
            if q["_id"] in wanted:
                out.append(q["text"])
    return out[:limit]


def ensure_namespace(settings: Settings, limit: int | None) -> dict:
    """Ingest NFCorpus into ``settings.store_uri`` unless a complete copy is there."""
    from api.service import Service
    from vectordb.errors import DocumentNotFound, NamespaceNotFound

    docs = nfcorpus_docs(limit)
    service = Service(settings.model_copy(update={"preload_embedder": "", "auto_index": False}))
    try:
        try:
            info = service.describe(NS)
            # Batches are written in order: the last document there means all are.
            service.get_document(NS, docs[-1]["id"])
            if info["rows"]["unindexed"] == 0:
                return info
            service.index(NS)
            return service.describe(NS)
        except DocumentNotFound:
            service.drop_namespace(NS)  # an interrupted ingest: start again
        except NamespaceNotFound:
            pass
        service.create_namespace(NS, "minilm", chunking=False)  # one row per document, as BEIR scores it
        started = time.perf_counter()
        for lo in range(0, len(docs), 128):
            service.upsert(NS, docs[lo : lo + 128])
            log(f"\ringested {min(lo + 128, len(docs))}/{len(docs)}", end="")
        log(f"\ningest {time.perf_counter() - started:.0f} s")
        service.index(NS)
        return service.describe(NS)
    finally:
        service.close()


def boot_clock_error() -> float:
    """Seconds to add to a process start time computed from ``/proc/stat`` ``btime`` (as
    ``process_start_time_seconds`` is): btime is truncated to whole seconds, which shifts
    every process start by up to 1 s against the wall clock; 0 where ``/proc`` is missing."""
    try:
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return 0.0
    return (time.time() - uptime) - btime


def scrape(client: httpx.Client) -> dict:
    out = {"stages": {}}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == "vectordb_cold_start_stage_seconds":
                out["stages"][s.labels["stage"]] = s.value
            elif s.name in ("process_start_time_seconds", "vectordb_store_bytes_fetched_total",
                            "vectordb_cache_misses_total"):
                out[s.name] = s.value
            elif s.name == "vectordb_cache_hits_total":
                out[f"hits_{s.labels['tier']}"] = s.value
    return out


def wait_for_zero(ray_serve, app: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while ray_serve.replica_states(app):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{app} did not scale to zero in {timeout}s")
        time.sleep(0.2)


def cold_run(ray_serve, client: httpx.Client, text: str, hint: bool = False) -> dict:
    """One query from zero replicas; the replica's stage marks relative to the request."""
    wait_for_zero(ray_serve, ray_serve.QUERY_APP)
    sent = time.time()
    started = time.perf_counter()
    hint_s = None
    if hint:
        client.post(f"/v1/namespaces/{NS}/warm", json={}).raise_for_status()
        hint_s = time.perf_counter() - started
    r = client.post(f"/v1/namespaces/{NS}/query", json={"text": text, "top_k": 10})
    total = time.perf_counter() - started
    r.raise_for_status()
    m = scrape(client)
    # Stages on one clock: seconds after the request was sent. prometheus_client's
    # process_start_time_seconds counts from the boot time in /proc/stat, whole seconds;
    # the stage marks count from the exact start (vectordb.coldstart.process_start_time),
    # so the start needs the correction, and the marks with it.
    start = m["process_start_time_seconds"] + boot_clock_error()
    timeline = {"process_start": start - sent}
    for stage, at in sorted(m["stages"].items(), key=lambda kv: kv[1]):
        if stage != "process_start":
            timeline[stage] = start + at - sent
    timeline["client_received"] = total
    steps, previous = {}, 0.0
    for stage, at in timeline.items():
        steps[stage] = ms(at - previous)
        previous = at
    return {"total_ms": ms(total), "hint_ms": None if hint_s is None else ms(hint_s), "steps_ms": steps,
            "from_spare": timeline["process_start"] < 0,
            "bytes_fetched": m.get("vectordb_store_bytes_fetched_total"), "disk_hits": m.get("hits_disk"),
            "ids": [h["id"] for h in r.json()["results"]]}


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def fine_p50(seconds: list[float]) -> float:
    """p50 in ms to 0.01 ms, for figures of about a millisecond."""
    return round(statistics.median(seconds) * 1000, 2)


def median_steps(runs: list[dict]) -> dict:
    keys = list(runs[0]["steps_ms"])
    return {k: p50([r["steps_ms"].get(k, 0.0) for r in runs]) for k in keys}


def cold_series(ray_serve, settings, port, queries, runs, idle_s, label, hint=False, warm=(), runtime="numpy",
                spares=1, settle_s=5.0) -> dict:
    from deploy.ray_serve import Scaling

    ray_serve.deploy(settings, query=Scaling(max_replicas=1, idle_s=idle_s, num_cpus=1, spare_workers=spares),
                     ingest=None, host="127.0.0.1", port=port, embed_runtime=runtime, warm=warm)
    # Let the spare worker that deploy() prestarts finish its imports: a cold start comes
    # after idle time, not in the seconds after a deployment.
    time.sleep(settle_s if spares else 0.0)
    results = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        for i in range(runs):
            res = cold_run(ray_serve, client, queries[i % len(queries)], hint=hint)
            log(f"{label} run {i}: {res['total_ms']} ms {res['steps_ms']}")
            results.append(res)
    return {
        "cold_p50_ms": p50([r["total_ms"] for r in results]),
        "cold_ms": [r["total_ms"] for r in results],
        "hint_p50_ms": p50([r["hint_ms"] for r in results]) if hint else None,
        "steps_p50_ms": median_steps(results),
        "bytes_fetched_p50": p50([r["bytes_fetched"] or 0 for r in results]),
        "disk_hits_p50": p50([r["disk_hits"] or 0 for r in results]),
        "first_ids": results[0]["ids"],
        "from_spare": f"{sum(r['from_spare'] for r in results)}/{len(results)}",
    }


def warm_comparison(port: int, settings: Settings, queries: list[str], n: int, replica_threads: int = 1) -> dict:
    """Warm p50 through Serve vs the same queries as in-process calls, interleaved: text
    queries, then vector queries (the same texts embedded once here).

    Two HTTP clients for text, each on its own keep-alive connection: httpx with its
    standard-library JSON, and ``http.client`` with orjson, which shows what Serve and the
    service add without most of the client's own cost (httpx's own was 1.7-2.3 ms more per
    request here); vector queries from ``http.client`` only.

    Two in-process baselines: this process's BLAS threads (all cores), and as many as a
    replica has (Ray sets ``OMP_NUM_THREADS`` to an actor's ``num_cpus``, 1 by default).
    Alone, a query embedding took ~13 ms on one BLAS thread and ~9 ms on two here, so the
    second baseline keeps a difference of compute budget out of the serving path's cost."""
    import http.client

    import orjson
    from threadpoolctl import threadpool_limits

    from api.service import Service
    from vectordb.bert_numpy import use_for_minilm

    use_for_minilm()
    direct = Service(settings.model_copy(update={"preload_embedder": ""}))
    lean = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    path = f"/v1/namespaces/{NS}/query"

    def lean_query(text: str | None = None, vector: list[float] | None = None) -> list[str]:
        query = {"text": text} if vector is None else {"vector": vector}
        lean.request("POST", path, body=orjson.dumps({**query, "top_k": 10}),
                     headers={"content-type": "application/json"})
        response = lean.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"query failed: {response.status} {body[:300]!r}")
        return [h["id"] for h in orjson.loads(body)["results"]]

    via_serve, via_lean, in_process, in_process_alike, ids_equal = [], [], [], [], 0
    vector_lean, vector_in_process, vector_ids_equal = [], [], 0
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for text in queries[:5]:  # warm both sides up
                direct.query(NS, text=text, top_k=10)
                client.post(path, json={"text": text, "top_k": 10}).raise_for_status()
                lean_query(text)
            for i in range(n):
                text = queries[i % len(queries)]
                t = time.perf_counter()
                a = [h.id for h in direct.query(NS, text=text, top_k=10).hits]
                in_process.append(time.perf_counter() - t)
                with threadpool_limits(replica_threads):
                    t = time.perf_counter()
                    direct.query(NS, text=text, top_k=10)
                    in_process_alike.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = client.post(path, json={"text": text, "top_k": 10})
                via_serve.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = lean_query(text)
                via_lean.append(time.perf_counter() - t)
                ids_equal += a == [h["id"] for h in r.json()["results"]] == b
            # Vector queries (the same texts, embedded here once): the serving path's cost
            # without the ~13 ms of query embedding on either side.
            from vectordb import embedders

            embedder = embedders.get("minilm", settings)
            vectors = [embedder.embed_query(queries[i % len(queries)]).tolist() for i in range(n)]
            for v in vectors[:5]:
                direct.query(NS, vector=v, top_k=10)
                lean_query(vector=v)
            for v in vectors:
                with threadpool_limits(replica_threads):
                    t = time.perf_counter()
                    a = [h.id for h in direct.query(NS, vector=v, top_k=10).hits]
                    vector_in_process.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = lean_query(vector=v)
                vector_lean.append(time.perf_counter() - t)
                vector_ids_equal += a == b
    finally:
        lean.close()
        direct.close()
    in_p50 = p50([ms(x) for x in in_process])
    alike_p50 = p50([ms(x) for x in in_process_alike])
    serve_p50, lean_p50 = p50([ms(x) for x in via_serve]), p50([ms(x) for x in via_lean])
    return {"warm_serve_p50_ms": serve_p50,
            "warm_serve_lean_client_p50_ms": lean_p50,
            "warm_in_process_p50_ms": in_p50,
            "replica_threads": replica_threads,
            "warm_in_process_replica_threads_p50_ms": alike_p50,
            "warm_overhead_p50_ms": round(serve_p50 - in_p50, 1),
            "warm_overhead_lean_client_p50_ms": round(lean_p50 - in_p50, 1),
            "warm_overhead_replica_threads_p50_ms": round(serve_p50 - alike_p50, 1),
            "warm_overhead_replica_threads_lean_client_p50_ms": round(lean_p50 - alike_p50, 1),
            "same_ids": f"{ids_equal}/{n}",
            "vector_lean_client_p50_ms": fine_p50(vector_lean),
            "vector_in_process_replica_threads_p50_ms": fine_p50(vector_in_process),
            "vector_overhead_lean_client_p50_ms": round(fine_p50(vector_lean) - fine_p50(vector_in_process), 2),
            "vector_same_ids": f"{vector_ids_equal}/{n}"}


def baseline_run(ray_serve, settings, queries, args) -> dict:
    """Cold (p50 of ``args.runs``) and warm through ``args.baseline_ingress`` on a Ray of
    its own (the ingress is fixed when Ray starts)."""
    temp_dir = tempfile.mkdtemp(prefix="vdbray-", dir="/tmp")
    port = free_port()
    try:
        ray_serve.start_local(num_cpus=2, temp_dir=temp_dir, ingress=args.baseline_ingress)
        cold = cold_series(ray_serve, settings, port, queries, args.runs, args.idle_s, f"{args.baseline_ingress}-cold")
        warm = warm_comparison(port, settings, queries, args.warm_queries)
    finally:
        ray_serve.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {"ingress": args.baseline_ingress, "cold": cold, "warm": warm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="127.0.0.1:8333", help="S3 endpoint host:port")
    parser.add_argument("--prefix", default="coldstart-nfcorpus", help="key prefix in the test bucket (reused)")
    parser.add_argument("--limit", type=int, help="ingest only the first N documents")
    parser.add_argument("--runs", type=int, default=5, help="cold queries per configuration")
    parser.add_argument("--warm-queries", type=int, default=100)
    parser.add_argument("--idle-s", type=float, default=2.0, help="query replicas stop after this idle time")
    parser.add_argument("--skip-torch", action="store_true", help="skip the sentence-transformers cold run")
    parser.add_argument("--ingest-only", action="store_true", help="make sure the namespace is there, then stop")
    parser.add_argument("--ingress", choices=INGRESSES, default=DEFAULT_INGRESS,
                        help="how requests reach the replicas (deploy.ray_serve.ingress_env)")
    parser.add_argument("--baseline-ingress", choices=[*INGRESSES, "none"], default="proxy",
                        help="cold and warm again through this ingress, on a Ray of its own ('none': skip)")
    parser.add_argument("--out", help="result JSON (default bench/results/<time>-coldstart.json)")
    args = parser.parse_args()

    settings = Settings(store_uri=f"s3://{TEST_BUCKET}/{args.prefix}", s3_endpoint=args.endpoint,
                        s3_access_key=ACCESS_KEY, s3_secret_key=SECRET_KEY)
    info = ensure_namespace(settings, args.limit)
    queries = test_queries(200)
    out: dict = {"namespace_rows": info["rows"], "segments": len(info["segments"]),
                 "partitions": sum(s["partitions"] for s in info["segments"]), "cpus": os.cpu_count()}
    log(json.dumps(out))
    if args.ingest_only:
        return 0

    from deploy import ray_serve

    out["load_average_start"] = os.getloadavg()
    if args.baseline_ingress != "none":
        out["baseline"] = baseline_run(ray_serve, settings, queries, args)
    out["ingress"] = args.ingress
    temp_dir = tempfile.mkdtemp(prefix="vdbray-", dir="/tmp")
    disk_dir = tempfile.mkdtemp(prefix="vdbdisk-", dir="/tmp")
    port = free_port()
    try:
        ray_serve.start_local(num_cpus=2, temp_dir=temp_dir, ingress=args.ingress)
        cold = cold_series(ray_serve, settings, port, queries, args.runs, args.idle_s, "cold")
        out["cold"] = cold
        out["cold_no_spare"] = cold_series(ray_serve, settings, port, queries, args.runs, args.idle_s,
                                           "no-spare", spares=0)
        out["warm"] = warm_comparison(port, settings, queries, args.warm_queries)
        out["cold_with_warm_call"] = cold_series(ray_serve, settings, port, queries, args.runs, args.idle_s,
                                                 "hint", hint=True)
        out["cold_with_deploy_warm"] = cold_series(ray_serve, settings, port, queries, args.runs, args.idle_s,
                                                   "deploy-warm", warm=(NS,))
        disk = settings.model_copy(update={"disk_cache_dir": disk_dir})
        cold_series(ray_serve, disk, port, queries, 1, args.idle_s, "disk-prime")
        out["cold_with_disk_cache"] = cold_series(ray_serve, disk, port, queries, args.runs, args.idle_s, "disk")
        if not args.skip_torch:
            # embed_runtime "auto" (the default) would run queries on numpy even here.
            torch_settings = settings.model_copy(update={"embed_runtime": "torch"})
            out["cold_torch_runtime"] = cold_series(ray_serve, torch_settings, port, queries, 1, args.idle_s,
                                                    "torch", runtime="torch")
    finally:
        ray_serve.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(disk_dir, ignore_errors=True)
    out["load_average_end"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    print(text)
    path = Path(args.out or Path(__file__).resolve().parent / "results" / time.strftime("%Y%m%d-%H%M%S-coldstart.json"))
    path.write_text(text + "\n")
    log(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
