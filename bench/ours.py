"""Our service on SeaweedFS, measured the way a user would meet it.

* ingest: real ``vectordb serve --role ingest`` process, HTTP upserts of precomputed
  vectors in ``batch``-row requests from ``clients`` concurrent clients; a write counts
  when acknowledged (durable: its manifest commit succeeded). Then POST /index.
* in-process: ``Service(...).query(ns, vector=..., top_k=10, consistency="eventual")``
  on a fresh ``Service`` with its own empty cache (connect -> first answer), with a
  :class:`CountingStore` under the cache that records every object-store request;
  then a warm-up pass and a measured pass over all queries.
* HTTP: a fresh ``vectordb serve --role query`` process (process start -> first answer),
  then warm-up and measured passes, and the worker's RSS from /proc.
* embedding: the namespace embedder ``minilm`` (bundled all-MiniLM-L6-v2) on NFCorpus.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dataset as ds_mod  # noqa: E402
from counting import CountingStore, describe_requests  # noqa: E402

from api.service import Service  # noqa: E402
from storage import CachedStore, open_raw_store  # noqa: E402
from vectordb import keys  # noqa: E402
from vectordb.ivf import default_nprobe  # noqa: E402
from vectordb.settings import Settings  # noqa: E402
from vectordb.testing import free_port, one_get_per_partition  # noqa: E402

NAMESPACE = "bench"
JSON_HEADERS = {"content-type": "application/json"}


# --------------------------------------------------------------------------- helpers


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered))) - 1))]


def proc_memory(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss_mb"] = round(int(line.split()[1]) / 1024, 1)
        elif line.startswith("VmHWM:"):
            out["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    return out


def _rate_by_tenth(acked: list[tuple[float, int]], started: float) -> list[float]:
    """Vectors/s acknowledged in each tenth of the rows (is the rate sustained?)."""
    total = sum(n for _, n in acked)
    rates, done, prev_rows, prev_t = [], 0, 0, started
    for when, n in sorted(acked):
        done += n
        if done >= total * (len(rates) + 1) / 10:
            rates.append(round((done - prev_rows) / max(when - prev_t, 1e-9), 1))
            prev_rows, prev_t = done, when
    return rates


def reset_peak_rss(pid: int) -> None:
    """Restart the kernel's high-water mark of ``pid``'s RSS (VmHWM) from its RSS now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class RssSampler:
    """``pid``'s RSS (MB) every ``every`` seconds while in the ``with`` block."""

    def __init__(self, pid: int, every: float = 5.0) -> None:
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(proc_memory(self.pid).get("rss_mb"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_idle(pid: int, timeout: float = 60.0) -> float:
    """Wait until process ``pid`` uses < 5% of a core over 0.5 s; the seconds waited."""
    started = time.perf_counter()
    last = cpu_seconds(pid)
    while time.perf_counter() - started < timeout:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.025:
            break
        last = now
    return time.perf_counter() - started


def row_of(doc_id: str) -> int:
    """The data set's row whose vector ``doc_id`` holds (after a realistic ingest, an
    updated id holds its update's: ``realistic_truth``)."""
    row = int(doc_id[1:])
    return _UPDATED.get(row, row)


# Set by ``realistic_truth``: row r -> the row whose vector the id of row r holds after a
# realistic ingest, for the ids that were updated.
_UPDATED: dict[int, int] = {}


CONTENT_TYPES = {"arrow": "application/vnd.apache.arrow.stream", "base64": "application/json", "json": "application/json"}


# ``realistic`` ingest (``ingest(..., realistic=True)``): every OVERWRITE_EVERY-th row from
# OVERWRITE_BACK rows on carries the id the row OVERWRITE_BACK before it carries (an update
# of a row background builds have indexed by then; the ids of rows 7, 27, ... below
# OVERWRITE_BACK are each updated once every OVERWRITE_BACK rows), and after every
# DELETE_EVERY-th batch the clients delete DELETE_IDS ids of rows half that distance back.
OVERWRITE_EVERY, OVERWRITE_BACK = 20, 100_000
DELETE_EVERY, DELETE_IDS = 10, 250
_TEXTS: list[str] = []


def realistic_id(row: int) -> str:
    """The id row ``row`` is written under in a realistic ingest (an update for some)."""
    if row >= OVERWRITE_BACK and row % OVERWRITE_EVERY == 7:
        return ds_mod.doc_id(row % OVERWRITE_BACK)  # the id rows OVERWRITE_BACK apart share
    return ds_mod.doc_id(row)


def realistic_columns(lo: int, hi: int) -> dict:
    """Ids (some updates), text (an NFCorpus abstract's first 400 characters, cycled) and
    attributes (a year, a language, a counter) of rows [lo, hi)."""
    if not _TEXTS:
        _TEXTS.extend(t[:400] for t in ds_mod.nfcorpus_texts())
    langs = ("en", "de", "fr")
    return {
        "id": [realistic_id(r) for r in range(lo, hi)],
        "text": [_TEXTS[r % len(_TEXTS)] for r in range(lo, hi)],
        "attributes": [f'{{"year":{1990 + r % 35},"lang":"{langs[r % 3]}","n":{r}}}' for r in range(lo, hi)],
    }


def realistic_deletes(lo: int) -> list[str]:
    """The ids deleted after the batch starting at row ``lo`` (rows half of OVERWRITE_BACK back)."""
    first = max(0, lo - OVERWRITE_BACK // 2)
    return [ds_mod.doc_id(r) for r in range(first, first + DELETE_IDS * 4, 4)]


def realistic_live_rows(rows: int, batch: int) -> np.ndarray:
    """Which of the first ``rows`` rows a realistic ingest of them in batches of ``batch``
    leaves live: not replaced by an update (the row OVERWRITE_BACK later, which carries its
    id) and not deleted (the ids of updated and of deleted rows never meet: a deleted row is
    a multiple of 4 past a batch start, an updated one 7 past a multiple of 20). Sets what
    :func:`row_of` maps updated ids to: the last row that carries each."""
    assert OVERWRITE_BACK % OVERWRITE_EVERY == 0, "an update's id must be one a row below OVERWRITE_BACK owns"
    live = np.ones(rows, bool)
    updates = np.arange(OVERWRITE_BACK + 7, rows, OVERWRITE_EVERY)
    live[updates - OVERWRITE_BACK] = False
    _UPDATED.clear()
    _UPDATED.update(zip((updates % OVERWRITE_BACK).tolist(), updates.tolist()))  # later rows overwrite
    for n, lo in enumerate(range(0, rows, batch)):
        if n % DELETE_EVERY == DELETE_EVERY - 1:
            live[[row_of(i) for i in realistic_deletes(lo) if row_of(i) < rows]] = False
    return live


def realistic_truth(data: ds_mod.Dataset, batch: int, log) -> ds_mod.Dataset:
    """``data`` with the exact top-10 of each query over the rows a realistic ingest
    (``ingest(..., realistic=True)``) leaves live, as the data set's rows (:func:`row_of`
    maps the ids answers name to them)."""
    started = time.perf_counter()
    live = realistic_live_rows(data.rows, batch)
    queries = np.ascontiguousarray(data.queries, np.float32)
    best = np.full((len(queries), ds_mod.K), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), ds_mod.K), np.int64)
    step = 200_000
    for lo in range(0, data.rows, step):
        block = np.asarray(data.base[lo : lo + step], np.float32)
        scores = queries @ block.T
        scores[:, ~live[lo : lo + step]] = -np.inf
        top = np.argpartition(-scores, ds_mod.K, axis=1)[:, : ds_mod.K] if scores.shape[1] > ds_mod.K else \
            np.tile(np.arange(scores.shape[1]), (len(queries), 1))
        both = np.concatenate([best, np.take_along_axis(scores, top, 1)], axis=1)
        both_rows = np.concatenate([best_rows, top + lo], axis=1)
        order = np.argsort(-both, axis=1, kind="stable")[:, : ds_mod.K]
        best, best_rows = np.take_along_axis(both, order, 1), np.take_along_axis(both_rows, order, 1)
    log(f"realistic ground truth: {int(live.sum()):,} of {data.rows:,} rows live, exact top-{ds_mod.K} of "
        f"{len(queries):,} queries in {time.perf_counter() - started:.1f} s")
    return dataclasses.replace(data, gt=best_rows)


def upsert_body(base: np.ndarray, lo: int, hi: int, encoding: str = "base64", realistic: bool = False) -> bytes:
    """``{"documents": [{"id", "vector"}...]}`` for rows [lo, hi); ``realistic`` (Arrow
    only): with text, attributes and some updates (``realistic_columns``).

    ``arrow``: an Arrow IPC stream (columns ``id``, ``vector``), the API's bulk form.
    ``base64``: each vector as the API's compact form, base64 of little-endian float32
    (exact). ``json``: lists of numbers, written as integers with an exponent
    (``1234567e-7``, valid JSON rounded to 1e-7, so an inner product moves by < 1e-6):
    less than half the bytes of json.dumps and ~3x faster to produce.
    """
    block = np.asarray(base[lo:hi], np.float32)
    if encoding == "arrow":
        import pyarrow as pa

        columns = realistic_columns(lo, hi) if realistic else {"id": [ds_mod.doc_id(lo + i) for i in range(hi - lo)]}
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
        table = pa.table(columns)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()
    if realistic:
        raise ValueError("a realistic upsert body is Arrow only")
    if encoding == "base64":
        docs = ",".join(
            f'{{"id":"{ds_mod.doc_id(lo + i)}","vector":"{base64.b64encode(row.astype("<f4").tobytes()).decode()}"}}'
            for i, row in enumerate(block)
        )
    else:
        ints = np.rint(block.astype(np.float64) * 1e7).astype(np.int64).tolist()
        docs = ",".join(
            f'{{"id":"{ds_mod.doc_id(lo + i)}","vector":[{"e-7,".join(map(str, row))}e-7]}}'
            for i, row in enumerate(ints)
        )
    return ('{"documents":[' + docs + "]}").encode()


PACKAGES = ("api", "ingest", "query", "storage", "vectordb", "deploy")


def compile_sources(root: Path) -> None:
    """Compile the project's modules as the Dockerfile does (``compileall``): a deployed
    worker loads bytecode, while a checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would
    compile every project module at each start (tens of ms of the start measured)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", *[p for p in PACKAGES if (root / p).is_dir()]],
                   cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)


def tree_commit(tree: Path) -> str:
    """The commit a source tree is checked out at (what results name, not a machine's path)."""
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


class Worker:
    """A ``vectordb serve`` subprocess on 127.0.0.1 (ended by PID when done)."""

    def __init__(self, env: dict[str, str], role: str, log_path: Path, root: Path = ROOT) -> None:
        """``root``: the source tree the worker runs (another commit's, for a baseline)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
        self.spawned = time.perf_counter()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--role", role, "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll /healthz every 10 ms; the seconds from spawn to the first 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return time.perf_counter() - self.spawned
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def first_answer(self, body: bytes, timeout: float = 60.0) -> tuple[float, float, bytes]:
        """Send one query as soon as the worker accepts connections, the way an eager client
        would: retry the connection every 2 ms (a refused connect costs the worker nothing,
        unlike polling /healthz through a new httpx client, whose TLS context alone is ~15 ms
        of CPU taken from the worker starting beside it on 2 cores). Returns the seconds from
        spawn to the accepted connection and to the answer, and the answer's body."""
        deadline = time.monotonic() + timeout
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                conn.connect()
            except ConnectionRefusedError:
                conn.close()
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                       f"{self.log_path.read_text()[-4000:]}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not accept connections in {timeout}s:\n"
                                       f"{self.log_path.read_text()[-4000:]}") from None
                time.sleep(0.002)
                continue
            accepted = time.perf_counter()
            try:
                conn.request("POST", f"/v1/namespaces/{NAMESPACE}/query", body=body, headers=JSON_HEADERS)
                response = conn.getresponse()
                answer = response.read()
            finally:
                conn.close()
            answered = time.perf_counter()
            if response.status != 200:
                raise RuntimeError(f"first query failed: {response.status} {answer[:300]!r}")
            return accepted - self.spawned, answered - self.spawned, answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- phases


class BodyFile:
    """Upsert bodies encoded once into a file in the data set's cache (``bodies-<rows>-
    <batch>-<encoding>[-realistic2].bin`` and its offsets, ``.offsets.npy``): for sets whose
    bodies would not fit in memory beside the server. Made under a temporary name and
    renamed, so a partial file is never used."""

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.offsets = offsets
        self.bytes = int(offsets[-1])
        self._fd = os.open(path, os.O_RDONLY)

    @classmethod
    def open(cls, data: ds_mod.Dataset, batch: int, encoding: str, realistic: bool, log) -> BodyFile:
        # "realistic2": the update ids of 5919476 (each id updated every OVERWRITE_BACK rows).
        name = f"bodies-{data.rows}-{batch}-{encoding}{'-realistic2' if realistic else ''}"
        directory = ds_mod.set_dir(data.seed)
        path, offsets_path = directory / f"{name}.bin", directory / f"{name}.offsets.npy"
        if not offsets_path.exists():
            started, at, offsets = time.perf_counter(), 0, [0]
            directory.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            with open(partial, "wb") as f:
                for n, lo in enumerate(range(0, data.rows, batch)):
                    at += f.write(upsert_body(data.base, lo, min(lo + batch, data.rows), encoding, realistic))
                    offsets.append(at)
                    if n % 200 == 199:
                        log(f"upsert bodies: {lo + batch:,} of {data.rows:,} rows encoded into {path.name}")
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
            np.save(offsets_path, np.array(offsets, np.int64))
            log(f"upsert bodies: {at / 1e9:.1f} GB in {time.perf_counter() - started:.0f} s")
        return cls(path, np.load(offsets_path))

    def body(self, n: int) -> bytes:
        """Body ``n`` (of the batch starting at row ``n * batch``)."""
        start, end = int(self.offsets[n]), int(self.offsets[n + 1])
        return os.pread(self._fd, end - start, start)

    def close(self) -> None:
        os.close(self._fd)


def ingest(data: ds_mod.Dataset, env: dict, workdir: Path, clients: int, batch: int, encoding: str, log,
           vector_dtype: str = "float32", realistic: bool = False, root: Path = ROOT) -> dict:
    """``realistic``: rows with text and attributes, 5 % of them updates of older rows, and
    deletes between batches (``realistic_columns``, ``realistic_deletes``). ``root``: the
    source tree the ingest worker runs (another commit's, for a baseline)."""
    out: dict = {"vector_dtype": vector_dtype, "realistic": realistic}
    starts = range(0, data.rows, batch)
    # Bodies are encoded beforehand, so the clients' encoding (~12 ms of a core per 5,000
    # rows) is not in the ingest time on the cores the server uses: in memory while they
    # fit in an eighth of it; a larger set (10M x 384 is ~16 GB of bodies) into a file in
    # the data set's cache, made once, each client reading its body from it as it sends.
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ahead = data.rows * data.base.shape[1] * 4 <= memory // 8
    out["bodies_encoded"] = "beforehand" if ahead else "beforehand, into a file read as sent"
    bodies: list[bytes] = []
    started = time.perf_counter()
    if ahead:
        bodies = [upsert_body(data.base, lo, min(lo + batch, data.rows), encoding, realistic) for lo in starts]
        out["upsert_body_mb"] = round(sum(map(len, bodies)) / 1e6, 1)
    else:
        body_file = BodyFile.open(data, batch, encoding, realistic, log)
        out["upsert_body_mb"] = round(body_file.bytes / 1e6, 1)
    out["client_encode_s"] = round(time.perf_counter() - started, 2)
    worker = Worker({**env, "VECTORDB_PRELOAD_EMBEDDER": ""}, "ingest", workdir / "ingest.log", root)
    try:
        worker.wait_ready()
        with httpx.Client(base_url=worker.url, timeout=600) as c:
            c.put(f"/v1/namespaces/{NAMESPACE}",
                  json={"embedder": "none", "dimensions": ds_mod.DIMS, "metric": "cosine",
                        "vector_dtype": vector_dtype}).raise_for_status()
        latencies: list[float] = []
        acked: list[tuple[float, int]] = []  # (when, rows) of each acknowledged upsert
        deleted: list[int] = []  # ids each delete request named (realistic)
        lock = threading.Lock()
        queue = iter(range(len(starts)))

        def client_loop() -> None:
            with httpx.Client(base_url=worker.url, timeout=600) as c:
                while True:
                    with lock:
                        n = next(queue, None)
                    if n is None:
                        return
                    body = bodies[n] if ahead else body_file.body(n)
                    t = time.perf_counter()
                    r = c.post(f"/v1/namespaces/{NAMESPACE}/documents", content=body,
                               headers={"content-type": CONTENT_TYPES[encoding]})
                    r.raise_for_status()
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        acked.append((time.perf_counter(), min(batch, data.rows - starts[n])))
                    if realistic and n % DELETE_EVERY == DELETE_EVERY - 1:
                        c.post(f"/v1/namespaces/{NAMESPACE}/documents/delete",
                               json={"ids": realistic_deletes(starts[n])}).raise_for_status()
                        with lock:
                            deleted.append(DELETE_IDS)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for f in [pool.submit(client_loop) for _ in range(clients)]:
                f.result()
        ingest_s = time.perf_counter() - started
        out.update({
            "ingest_s": round(ingest_s, 2),
            "ingest_vectors_per_s": round(data.rows / ingest_s, 1),
            "upsert_p50_ms": round(ms(percentile(latencies, 0.5)), 1),
            "upsert_p99_ms": round(ms(percentile(latencies, 0.99)), 1),
            "ingest_clients": clients,
            "vector_encoding": encoding,
            "ingest_batch": batch,
            "ingest_vectors_per_s_by_tenth": _rate_by_tenth(acked, started),
        })
        if realistic:
            out["delete_requests"], out["ids_deleted_named"] = len(deleted), sum(deleted)
        log(f"ours: ingested {data.rows:,} rows in {ingest_s:.1f} s ({data.rows / ingest_s:,.0f} vectors/s)")
        bodies.clear()  # free the JSON before the index build
        with httpx.Client(base_url=worker.url, timeout=600) as c:
            # What background builds (if on) had indexed when the last upsert was acknowledged.
            described = c.get(f"/v1/namespaces/{NAMESPACE}").json()
            out["after_ingest_segments"] = len(described["segments"])
            out["after_ingest_rows"] = described["rows"]
        # The build's own peak: the ingest's is recorded, then the high-water mark reset.
        out.update({f"after_ingest_{k}": v for k, v in proc_memory(worker.proc.pid).items()})
        reset_peak_rss(worker.proc.pid)
        with httpx.Client(base_url=worker.url, timeout=3600) as c, RssSampler(worker.proc.pid) as sampler:
            started = time.perf_counter()
            r = c.post(f"/v1/namespaces/{NAMESPACE}/index", json={})
            r.raise_for_status()
            out["build_s"] = round(time.perf_counter() - started, 2)
        out["build_peak_rss_mb"] = proc_memory(worker.proc.pid)["peak_rss_mb"]
        out["build_rss_mb_every_5s"] = sampler.samples
        with httpx.Client(base_url=worker.url, timeout=600) as c:
            out["index_response"] = r.json()
            described = c.get(f"/v1/namespaces/{NAMESPACE}").json()
            out["segments"] = described["segments"]
            out["stats"] = c.get("/healthz").json()["stats"]
        out["ingest_worker_peak_rss_mb"] = max(out["build_peak_rss_mb"], out.get("after_ingest_peak_rss_mb", 0))
        log(f"ours: index built in {out['build_s']:.1f} s (ingest worker peak RSS {out['ingest_worker_peak_rss_mb']} MB: "
            f"{out.get('after_ingest_peak_rss_mb')} MB while ingesting, {out['build_peak_rss_mb']} MB while building)")
    finally:
        worker.stop()
        if not ahead:
            body_file.close()
    return out


def in_process(data: ds_mod.Dataset, settings: Settings, colds: int, log) -> dict:
    """Fresh Services with empty caches (cold), then warm passes on the last one."""
    from vectordb import ivf

    ivf._faiss()  # import FAISS first: "connect -> first answer" is in a warm process
    queries = data.queries
    cold, one_each, no_hint = [], [], []
    service = None
    for i in range(colds):
        q = queries[i % len(queries)]
        # The same cold query with its partitions read one GET each (as before
        # NamespaceReader.partition_loads read neighbours together), and without layouts.bin
        # (each ivf.bin read once latest.json named the segments, as before
        # vectordb.layout_hint): the baselines, alternated.
        for runs, baseline in ((one_each, "one GET each"), (no_hint, "no layouts.bin"), (cold, None)):
            hint = None
            if baseline == "no layouts.bin":  # taken away for this query, put back after it
                raw = open_raw_store(settings)
                hint = raw.get(keys.layout_hint_key(NAMESPACE))
                raw.delete(keys.layout_hint_key(NAMESPACE))
            t0 = time.perf_counter()
            counting = CountingStore(open_raw_store(settings))
            service = Service(settings, store=CachedStore(counting, settings.cache_bytes))
            if baseline == "one GET each":
                one_get_per_partition(service.reader)
            t1 = time.perf_counter()
            counting.take()
            service.query(NAMESPACE, vector=q, top_k=ds_mod.K, consistency="eventual")
            t2 = time.perf_counter()
            runs.append({"connect_ms": ms(t1 - t0), "first_query_ms": ms(t2 - t1), "connect_first_ms": ms(t2 - t0),
                         **describe_requests(counting.take())})
            if hint is not None:
                raw.put(keys.layout_hint_key(NAMESPACE), hint)
            if baseline or i < colds - 1:
                service.close()
    assert service is not None
    median = sorted(cold, key=lambda c: c["connect_first_ms"])[len(cold) // 2]
    out: dict = {
        "connect_first_ms": round(statistics.median(c["connect_first_ms"] for c in cold), 1),
        "cold_connect_ms": round(statistics.median(c["connect_ms"] for c in cold), 1),
        "cold_first_query_ms": round(statistics.median(c["first_query_ms"] for c in cold), 1),
        "cold_requests": median["requests"],
        "cold_bytes": median["bytes"],
        "cold_round_trips": median["round_trips"],
        "cold_runs": [{k: v for k, v in c.items() if k != "trace"} for c in cold],
        "cold_trace": median["trace"],  # of the median run
        "cold_one_get_each": {
            "connect_first_ms": round(statistics.median(c["connect_first_ms"] for c in one_each), 1),
            "requests": sorted(c["requests"] for c in one_each)[len(one_each) // 2],
            "bytes": sorted(c["bytes"] for c in one_each)[len(one_each) // 2],
            "runs": [{k: v for k, v in c.items() if k != "trace"} for c in one_each],
        },
    }
    out["cold_vs_one_get_each"] = round(out["connect_first_ms"] / out["cold_one_get_each"]["connect_first_ms"], 3)
    plain = sorted(no_hint, key=lambda c: c["connect_first_ms"])[len(no_hint) // 2]
    out["cold_no_layout_hint"] = {
        "connect_first_ms": round(statistics.median(c["connect_first_ms"] for c in no_hint), 1),
        "requests": plain["requests"], "bytes": plain["bytes"], "round_trips": plain["round_trips"],
        "runs": [{k: v for k, v in c.items() if k != "trace"} for c in no_hint],
        "trace": plain["trace"],
    }
    out["cold_vs_no_layout_hint"] = round(out["connect_first_ms"] / out["cold_no_layout_hint"]["connect_first_ms"], 3)

    def search(q, consistency="eventual"):
        return [row_of(h.id) for h in service.query(NAMESPACE, vector=q, top_k=ds_mod.K, consistency=consistency).hits]

    counting = service.store.inner
    out.update(warm_passes(search, queries, data.gt, after_warm_up=counting.take))
    out["warm_requests"] = describe_requests(counting.take())["by_op"]
    out["warm_cache"] = service.store.stats()
    # Strong consistency pays a manifest probe per query: one extra round trip.
    strong = []
    for q in queries[:200]:
        t = time.perf_counter()
        search(q, "strong")
        strong.append(time.perf_counter() - t)
    out["warm_strong_p50_ms"] = round(ms(percentile(strong, 0.5)), 3)
    out["warm_strong_p99_ms"] = round(ms(percentile(strong, 0.99)), 3)
    strong_requests = describe_requests(counting.take())
    out["warm_strong_requests"] = strong_requests["by_op"]
    out["warm_strong_round_trips_per_query"] = round(strong_requests["round_trips"] / len(strong), 2)
    service.close()
    log(f"ours in-process: cold {out['connect_first_ms']} ms in {out['cold_round_trips']} round trips "
        f"({out['cold_one_get_each']['connect_first_ms']} ms with a GET a partition: {out['cold_vs_one_get_each']}x; "
        f"{out['cold_no_layout_hint']['connect_first_ms']} ms in {out['cold_no_layout_hint']['round_trips']} without "
        f"layouts.bin: {out['cold_vs_no_layout_hint']}x), warm p50 {out['warm_p50_ms']} ms, "
        f"recall {out['recall_at_10']}")
    return out


def warm_passes(search, queries: np.ndarray, gt: np.ndarray, after_warm_up=lambda: None) -> dict:
    """One warm-up pass over every query, then a measured pass: latency and recall@10."""
    for q in queries:
        search(q)
    after_warm_up()
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q))
        latencies.append(time.perf_counter() - t)
    return {
        "warm_p50_ms": round(ms(percentile(latencies, 0.5)), 3),
        "warm_p99_ms": round(ms(percentile(latencies, 0.99)), 3),
        "warm_mean_ms": round(ms(sum(latencies) / len(latencies)), 3),
        "recall_at_10": round(ds_mod.recall_at_k(found, gt), 4),
    }


def lean_search(port: int):
    """A search function over one keep-alive ``http.client`` connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    url = f"/v1/namespaces/{NAMESPACE}/query"
    headers = {"content-type": "application/json"}

    def search(q):
        conn.request("POST", url, body=orjson.dumps({"vector": q.tolist(), "top_k": ds_mod.K, "consistency": "eventual"}),
                     headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"query failed: {response.status} {body[:300]!r}")
        return [row_of(h["id"]) for h in orjson.loads(body)["results"]]

    return search


def over_http(data: ds_mod.Dataset, env: dict, workdir: Path, preload: bool, starts: int, log) -> dict:
    """``starts`` fresh query workers: process start -> first answer (median); the last one
    then runs the warm passes and reports its RSS."""
    worker_env = dict(env) if preload else {**env, "VECTORDB_PRELOAD_EMBEDDER": ""}
    compile_sources(ROOT)
    samples: list[dict] = []
    out: dict = {}
    first_body = orjson.dumps({"vector": data.queries[0].tolist(), "top_k": ds_mod.K, "consistency": "eventual"})
    for n in range(starts):
        worker = Worker(worker_env, "query", workdir / "query.log")
        try:
            accepted_s, answered_s, answer = worker.first_answer(first_body)
            first_rows = [row_of(h["id"]) for h in orjson.loads(answer)["results"]]
            samples.append({"process_first_ms": round(ms(answered_s), 1), "ready_ms": round(ms(accepted_s), 1),
                            "connect_first_ms": round(ms(answered_s - accepted_s), 1)})
            with httpx.Client(base_url=worker.url, timeout=120) as c:
                url = f"/v1/namespaces/{NAMESPACE}/query"

                # JSON by orjson both ways, as an app that cares about latency would: httpx's
                # json= and .json() (the standard library) cost ~0.3 ms more per query here.
                def search(q, c=c, url=url):
                    body = orjson.dumps({"vector": q.tolist(), "top_k": ds_mod.K, "consistency": "eventual"})
                    r = c.post(url, content=body, headers=JSON_HEADERS)
                    r.raise_for_status()
                    return [row_of(h["id"]) for h in orjson.loads(r.content)["results"]]

                if search(data.queries[0]) != first_rows:
                    raise RuntimeError("the first answer differs from the same query asked again")
                if n == starts - 1:
                    out["cold_cache"] = c.get("/healthz").json()["stats"].get("cache", {})
                    # Steady state: let the background embedder preload finish before measuring.
                    out["settle_s"] = round(wait_idle(worker.proc.pid), 1)
                    out.update(warm_passes(search, data.queries, data.gt))
                    # The same passes from a lean keep-alive client (http.client + orjson): what
                    # the service costs over HTTP without httpx's own ~0.5 ms per request.
                    out["lean_client"] = warm_passes(lean_search(worker.port), data.queries, data.gt)
                    out.update(proc_memory(worker.proc.pid))
                    out["warm_cache"] = c.get("/healthz").json()["stats"].get("cache", {})
        finally:
            worker.stop()
    for key in ("process_first_ms", "ready_ms", "connect_first_ms"):
        out[key] = round(statistics.median(s[key] for s in samples), 1)
    out["starts"] = samples
    log(f"ours HTTP ({'preload' if preload else 'no preload'}): process->first {out['process_first_ms']} ms "
        f"(median of {starts}), warm p50 {out['warm_p50_ms']} ms, RSS {out['rss_mb']} MB")
    return out


def embedding(n_docs: int, n_queries: int, seed: int, log) -> dict:
    """The 'minilm' embedder of our registry: model load, single-query latency, docs/s."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from vectordb import embedders

    settings = Settings()
    texts = ds_mod.nfcorpus_texts()
    rng = np.random.default_rng([seed, 4])
    docs = [texts[i] for i in rng.choice(len(texts), n_docs, replace=False)]
    with open(ds_mod.DATA / "nfcorpus" / "queries.jsonl") as f:
        query_texts = [json.loads(line)["text"] for _, line in zip(range(n_queries + 3), f, strict=False)]
    started = time.perf_counter()
    embedder = embedders.get("minilm", settings)
    embedder.load()
    load_s = time.perf_counter() - started
    import torch

    def query_latencies() -> list[float]:
        for text in query_texts[:3]:
            embedder.embed_query(text)
        latencies = []
        for text in query_texts[3:]:
            t = time.perf_counter()
            embedder.embed_query(text)
            latencies.append(time.perf_counter() - t)
        return latencies

    threads = torch.get_num_threads()
    latencies = query_latencies()
    t = time.perf_counter()
    embedder.embed_documents(docs)
    docs_s = time.perf_counter() - t
    # torch's default (one thread per core) collapses when the cores are busy with other
    # work; one thread is the comparison that shows it.
    torch.set_num_threads(1)
    one_thread = query_latencies()
    torch.set_num_threads(threads)
    out = {
        "model_load_s": round(load_s, 2),
        "torch_threads": threads,
        "query_p50_ms": round(ms(percentile(latencies, 0.5)), 2),
        "query_p99_ms": round(ms(percentile(latencies, 0.99)), 2),
        "query_1thread_p50_ms": round(ms(percentile(one_thread, 0.5)), 2),
        "query_1thread_p99_ms": round(ms(percentile(one_thread, 0.99)), 2),
        "queries": len(latencies),
        "docs": n_docs,
        "docs_per_s": round(n_docs / docs_s, 1),
        "runtime": settings.embed_runtime,
        "batch_size": settings.embed_batch_size,
        "max_seq_length": settings.embed_max_seq_length,
    }
    out.update(text_queries(settings, query_texts[3:], log))
    log(f"embedding: query p50 {out['query_p50_ms']} ms, {out['docs_per_s']} docs/s")
    return out


def text_queries(settings: Settings, query_texts: list[str], log) -> dict:
    """Warm text queries through the service (embed + search) on NFCorpus (3,633 documents,
    their cached MiniLM vectors supplied at ingest), beside the embedder alone on the same
    texts in the same process: the difference is what the service adds to a text query."""
    from vectordb import embedders

    vectors = ds_mod.real_embeddings(log)
    texts = ds_mod.nfcorpus_texts()
    svc = Service(settings.model_copy(update={"store_uri": "memory://bench-text", "auto_index": False}))
    try:
        svc.create_namespace("nf", embedder="minilm", chunking=False)
        for lo in range(0, len(vectors), 1000):
            svc.upsert("nf", [{"id": f"d{i}", "text": texts[i], "vector": base64.b64encode(vectors[i].tobytes()).decode()}
                              for i in range(lo, min(lo + 1000, len(vectors)))])
        svc.index("nf")
        embedder = embedders.get("minilm", settings)
        for text in query_texts[:3]:
            svc.query("nf", text=text, top_k=10, consistency="eventual")
        embed, full = [], []
        for text in query_texts:
            t = time.perf_counter()
            embedder.embed_query(text)
            embed.append(time.perf_counter() - t)
            t = time.perf_counter()
            svc.query("nf", text=text, top_k=10, consistency="eventual")
            full.append(time.perf_counter() - t)
    finally:
        svc.close()
    out = {"text_query_p50_ms": round(ms(percentile(full, 0.5)), 2),
           "text_query_embed_p50_ms": round(ms(percentile(embed, 0.5)), 2)}
    out["text_query_overhead_ms"] = round(out["text_query_p50_ms"] - out["text_query_embed_p50_ms"], 2)
    log(f"text query (in-process, NFCorpus): p50 {out['text_query_p50_ms']} ms = embedding "
        f"{out['text_query_embed_p50_ms']} ms + {out['text_query_overhead_ms']} ms")
    return out


def run(data: ds_mod.Dataset, endpoint: str, bucket: str, prefix: str, access: str, secret: str, workdir: Path, *,
        clients: int, batch: int, encoding: str, colds: int, quick: bool, log, vector_dtype: str = "float32",
        background_builds: bool = False, realistic: bool = False) -> dict:
    """``realistic``: rows with text and attributes, updates and deletes (``ingest``);
    ``data.gt`` must then be ``realistic_truth``'s."""
    store_uri = f"s3://{bucket}/{prefix}"
    env = {
        "VECTORDB_STORE_URI": store_uri,
        "VECTORDB_S3_ENDPOINT": endpoint,
        "VECTORDB_S3_ACCESS_KEY": access,
        "VECTORDB_S3_SECRET_KEY": secret,
        # One index build after the ingest (POST /index), measured on its own; with the
        # default (``background_builds``), background builds compete with the upserts and
        # POST /index builds what is left.
        "VECTORDB_AUTO_INDEX": "true" if background_builds else "false",
    }
    settings = Settings(store_uri=store_uri, s3_endpoint=endpoint, s3_access_key=access, s3_secret_key=secret,
                        preload_embedder="")
    nlist = ds_mod.nlist_for(data.rows)
    out: dict = {"store_uri": store_uri, "nlist": nlist, "nprobe": default_nprobe(nlist)}
    out["vector_dtype"] = vector_dtype
    out["background_builds"] = background_builds
    out["realistic"] = realistic
    out["ingest"] = ingest(data, env, workdir, clients, batch, encoding, log, vector_dtype, realistic)
    out["in_process"] = in_process(data, settings, colds, log)
    starts = 1 if quick else 3
    out["http"] = over_http(data, env, workdir, preload=True, starts=starts, log=log)
    if not quick:
        out["http_no_preload"] = over_http(data, env, workdir, preload=False, starts=starts, log=log)
    return out
