"""Issue 13, part 3: an index build on a local multi-node Ray cluster beside the single-process build.

    .venv/bin/python bench/ray_build.py [--rows 1000000] [--memory 1073741824] [--queries 1000]

On SeaweedFS (reused on 127.0.0.1:8333 if it serves, else started here, or ``--s3``), with
the MiniLM-like set of ``bench/dataset.py`` (cosine):

1. ``--rows`` rows are written as WAL objects (100 commits, no index, no WAL merge);
2. **single**: one index build in a fresh child process (``Service.index``: upload and
   commit included), ``build_memory_bytes`` = ``--memory``; its wall time and peak RSS
   (VmHWM); recall@10 of ``--queries`` queries against exact ground truth;
3. the namespace is restored to the version in 1 (the same WAL objects, unindexed);
4. **ray**: a cluster of two nodes on this machine (``ingest.ray_build.local_cluster``:
   head + worker, one CPU each, 127.0.0.1), and the same build from a fresh child process
   as ``vectordb index NS --ray ADDRESS`` runs it: the child is the driver; its wall
   time and peak RSS, and each node's worker processes' peak RSS (VmHWM of every process
   the node's raylet started, sampled every 0.1 s while the build runs); recall@10 as in 2.

The machine's cores are shared by both nodes, so the Ray build's wall time shows what
sharding costs or saves in work (one k-means on the single build's sample, on one node;
each half-size segment assigned against all the centroids), not what a cluster of
separate machines would add in parallelism.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dataset as ds_mod  # noqa: E402
import s3 as s3_mod  # noqa: E402
from bounded_build import log, mb, memory_kb, run_child, settings_for, write_wal  # noqa: E402

from api.service import Service  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

NS = "raybuild"


def child_build(settings_json: str, ns: str, ray_address: str | None) -> None:
    """In a fresh process: one index build (on Ray if ``ray_address``), its peak RSS."""
    import faiss  # noqa: F401  (imports out of the measure)
    import pyarrow.parquet  # noqa: F401

    settings = Settings(**json.loads(settings_json))
    if ray_address:
        import ray  # noqa: F401

        settings = settings.model_copy(update={"ray_address": ray_address})
    svc = Service(settings)
    before, _ = memory_kb()
    started = time.perf_counter()
    result = svc.index(ns)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": result.indexed_rows, "segments": result.segments, "seconds": seconds,
                      "before_kb": before, "peak_kb": memory_kb()[1]}))


class NodeMemory:
    """Peak RSS (VmHWM) of every process each node's raylet started, sampled while running."""

    def __init__(self, raylets: dict[str, int]) -> None:
        self.raylets = raylets  # node name -> raylet pid
        self.peaks: dict[str, dict[int, tuple[int, str]]] = {name: {} for name in raylets}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NodeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.1)

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        for name, raylet in self.raylets.items():
            stack = [raylet]
            while stack:
                pid = stack.pop()
                stack.extend(children.get(pid, []))
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if "VmHWM" not in fields:
                    continue
                hwm = int(fields["VmHWM"].split()[0])
                if hwm > self.peaks[name].get(pid, (0, ""))[0]:
                    self.peaks[name][pid] = (hwm, title)

    def report(self) -> dict:
        out = {}
        for name, peaks in self.peaks.items():
            workers = {pid: v for pid, v in peaks.items() if _is_worker(v[1])}
            out[name] = {"worker_peak_kb": max((v[0] for v in workers.values()), default=0),
                         "workers_sum_kb": sum(v[0] for v in workers.values()), "workers": len(workers),
                         "all_processes_sum_kb": sum(v[0] for v in peaks.values())}
        return out


def _is_worker(title: str) -> bool:
    """A Ray worker process (``ray::IDLE``, a shard's actor ``ray::Shard``), not the raylet or an agent."""
    return title.startswith("ray::") and not any(word in title for word in ("Agent", "Dashboard", "RuntimeEnv"))


def recall(settings: Settings, data: ds_mod.Dataset, n: int) -> float:
    """recall@10 of ``n`` queries from a fresh query Service, closed after (its cache, up to
    ``cache_bytes``, is not held through the next phase)."""
    svc = Service(settings)
    try:
        found = [[int(h.id.removeprefix("r")) for h in svc.query(NS, vector=q.tolist(), top_k=10).hits]
                 for q in data.queries[:n]]
    finally:
        svc.close()
    return round(ds_mod.recall_at_k(found, data.gt[:n]), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory", type=int, default=1024**3, help="build_memory_bytes of each build (each Ray task)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--s3", default=None, help="host:port of an S3 endpoint (default: SeaweedFS)")
    parser.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_build(args.child[0], args.child[1], args.child[2] if len(args.child) > 2 else None)
        return 0
    from ingest import ray_build

    data = ds_mod.prepare(args.rows, sanity=False)
    workdir = Path(tempfile.mkdtemp(prefix="ray-build-"))
    prefix = f"raybuild-{int(time.time())}"
    result: dict = {"rows": args.rows, "dims": int(data.base.shape[1]), "memory_bytes": args.memory,
                    "cpus": os.cpu_count(), "queries": args.queries}
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-ray-build-{args.rows}.json"

    def save() -> None:  # after each phase: a later failure (at 10M, an OOM) keeps what was measured
        out.write_text(json.dumps(result, indent=1))
        log(f"results so far in {out.relative_to(ROOT)}")

    with s3_mod.endpoint(args.s3, workdir, log) as endpoint:
        try:
            # No background WAL merge: both builds read the same 100 WAL objects.
            # 100 WAL objects whatever --rows: a write request may hold rows / 100 of them.
            settings = settings_for(endpoint, prefix, build_memory_bytes=args.memory, wal_merge_objects=0,
                                    max_batch_docs=max(10_000, -(-args.rows // 100)))
            svc = Service(settings)
            svc.create_namespace(NS, "none", data.base.shape[1], "cosine")
            log(f"writing {args.rows:,} rows as WAL objects")
            write_wal(svc, NS, data.base, 0, args.rows, 100)
            unindexed = svc.catalog.latest(NS).version
            settings_json = settings.model_dump_json()
            log("single-process build")
            result["single"] = run_child([sys.executable, __file__, "--child", settings_json, NS], ROOT)
            result["single"]["recall_at_10"] = recall(settings, data, args.queries)
            save()
            svc.restore(NS, unindexed)
            assert not svc.catalog.latest(NS).segments
            log("starting a two-node Ray cluster")
            with ray_build.local_cluster(nodes=2, cpus=1) as cluster:
                raylets = {"head": cluster.head_node.all_processes["raylet"][0].process.pid}
                for i, node in enumerate(cluster.worker_nodes, 1):
                    raylets[f"node{i}"] = node.all_processes["raylet"][0].process.pid
                log("Ray build")
                with NodeMemory(raylets) as nodes:
                    result["ray"] = run_child([sys.executable, __file__, "--child", settings_json, NS, cluster.address],
                                              ROOT)
                    nodes.sample()
                result["ray"]["nodes"] = nodes.report()
            result["ray"]["recall_at_10"] = recall(settings, data, args.queries)
            manifest = svc.catalog.latest(NS)
            result["ray"]["segment_rows"] = sorted(s.rows for s in manifest.segments)
            svc.close()
        finally:
            s3_mod.remove_prefixes(endpoint, [prefix], log)
    print(report(result))
    save()
    return 0


def report(r: dict) -> str:
    lines = [f"index build of {r['rows']:,} x {r['dims']} (cosine), build_memory_bytes {r['memory_bytes'] / 2**30:.2f} GiB, "
             f"{r['cpus']} cores on this machine, SeaweedFS; recall@10 of {r['queries']} queries, default nprobe"]
    single, ray = r.get("single", {}), r.get("ray", {})
    for name, b in (("single", single), ("ray", ray)):
        if "error" in b:
            lines.append(f"  {name}: failed: {b['error']}")
    if "error" in single or "error" in ray or not single or not ray:
        return "\n".join(lines)
    lines.append(f"  {'':34s} {'wall s':>8s} {'peak RSS':>10s} {'segments':>9s} {'recall@10':>10s}")
    lines.append(f"  {'single process':34s} {single['seconds']:8.1f} {mb(single['peak_kb']):>10s} "
                 f"{single['segments']:>9d} {single['recall_at_10']:>10.4f}")
    lines.append(f"  {'ray: driver (vectordb index --ray)':34s} {ray['seconds']:8.1f} {mb(ray['peak_kb']):>10s} "
                 f"{ray['segments']:>9d} {ray['recall_at_10']:>10.4f}")
    for name, node in ray["nodes"].items():
        lines.append(f"  {'ray: ' + name + ' worker peak':34s} {'':8s} {mb(node['worker_peak_kb']):>10s}   "
                     f"({node['workers']} workers, their peaks summed {mb(node['workers_sum_kb'])}; "
                     f"with the raylet and agents {mb(node['all_processes_sum_kb'])})")
    busiest = max(node["worker_peak_kb"] for node in ray["nodes"].values())
    lines.append(f"  ratios ray / single: wall {ray['seconds'] / single['seconds']:.2f}, "
                 f"busiest node's worker peak RSS {busiest / single['peak_kb']:.2f}, "
                 f"driver peak RSS {ray['peak_kb'] / single['peak_kb']:.2f}; "
                 f"ray segments' rows {ray.get('segment_rows')}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
