"""The Ray Serve replica: the vectordb FastAPI app of one role inside one Ray actor.

Ray imports this module in every replica process; it imports nothing of ours at module
level, so a replica's own imports (``api.app`` and what it pulls in) happen in the
constructor, where the cold-start clock can see them.
"""

from __future__ import annotations

import logging

from ray import serve

from vectordb.coldstart import process_clock

log = logging.getLogger("vectordb.replica")


@serve.ingress()
class VectorDBReplica:
    """Builds the app; Ray Serve calls :meth:`__serve_build_asgi_app__` right after.

    ``settings``: the fields of a ``vectordb.settings.Settings`` (the deploying process
    resolves them once, so every replica on every node runs the same configuration).
    ``embed_runtime``: ``numpy`` runs the ``minilm`` embedder without torch (fast cold
    start), ``torch`` uses sentence-transformers. ``warm``: namespaces to prefetch before
    the replica reports ready. ``loopback_only``: see :func:`_keep_internal_grpc_on_loopback`.
    ``spare_workers``: once this replica has answered its first request, it has that many
    idle, preloaded Ray workers started for the next replica (``deploy.worker_pool``).
    """

    def __init__(
        self,
        role: str,
        settings: dict,
        embed_runtime: str = "numpy",
        warm: tuple[str, ...] = (),
        loopback_only: bool = False,
        spare_workers: int = 0,
    ) -> None:
        clock = process_clock()
        clock.mark("replica_init")
        if loopback_only:
            _keep_internal_grpc_on_loopback()
        if role in ("query", "all"):
            _skip_disconnect_watch()
        from api.app import create_app
        from api.metrics import install_metrics
        from api.service import Service
        from api.warm import install_warm
        from query import warm as warming
        from vectordb import embedders
        from vectordb.settings import Settings

        # FAISS is not imported here: as in any worker, the first answers are numpy's and
        # vectordb.ivf imports FAISS right after the first one (a spare worker has it already).
        clock.mark("imports")
        config = Settings(**settings)
        if embed_runtime == "numpy":
            from vectordb.bert_numpy import use_for_minilm

            use_for_minilm()
        service = Service(config)
        app = create_app(config, role, service)
        install_metrics(app, service, clock)  # a no-op where create_app installed them
        if role in ("query", "all"):
            install_warm(app, service)
        clock.mark("app_ready")
        if role in ("query", "all") and config.preload_embedder:
            # Loaded here, not in the background: a replica is routed traffic once its
            # constructor returns, and a text query would wait for the model anyway.
            embedder = embedders.get(config.preload_embedder, config)
            getattr(embedder, "load", lambda: None)()
            clock.mark("model_loaded")
        for ns in warm:
            try:
                warming.warm(service, ns)
            except Exception as exc:  # a hint: a missing namespace must not fail the replica
                log.warning("warming %s failed: %s", ns, exc)
        self._app = app
        if spare_workers:
            from deploy import worker_pool

            worker_pool.prestart_after(lambda: clock.reached("first_answer"), spare_workers)

    def __serve_build_asgi_app__(self):
        return self._app


def _keep_internal_grpc_on_loopback() -> None:
    """Bind Serve's inter-deployment gRPC server of this replica to 127.0.0.1.

    Ray Serve (2.60) starts it on ``[::]:0``, every interface, after the constructor
    returns, and offers no setting for it. On one machine nothing but local processes
    needs it (the HTTP proxy reaches replicas through Ray's own actor calls), so a
    deployment whose proxy binds loopback keeps this server on loopback too. On a
    cluster it must stay reachable from other nodes: do not call this there.
    """
    try:
        from ray.serve._private import replica as serve_replica
    except ImportError:  # another Ray layout: leave Serve as it is
        return
    original = getattr(serve_replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_vectordb_loopback", False):
        return

    def on_loopback(server, address: str):
        return original(server, address.replace("[::]", "127.0.0.1", 1))

    on_loopback._vectordb_loopback = True
    serve_replica.add_port_to_grpc_server = on_loopback


def _skip_disconnect_watch() -> None:
    """Serve HTTP requests in this replica without watching for the client's disconnect.

    For each request that reaches a replica directly (the HAProxy ingress), Ray Serve
    (2.60) starts a task that reads the connection until the client goes, and runs the
    request in a second task beside it, to cancel the request if the client leaves, unless
    the request carries ``x-request-disconnect-disabled: ?1``. That cost 0.4-1 ms per
    warm query on 2 cores (deploy/README.md) and buys nothing here: a query runs in a
    thread or inline on the loop (``api.app.InlineGate``), where a cancel takes effect
    only once it has finished anyway. Request timeouts (``request_timeout_s``) still apply.
    """
    try:
        from ray.serve._private import replica as serve_replica
    except ImportError:  # another Ray layout: leave Serve as it is
        return
    if getattr(serve_replica, "parse_disconnect_disabled_header", None) is None:
        return
    serve_replica.parse_disconnect_disabled_header = _disconnect_watch_disabled


def _disconnect_watch_disabled(headers) -> bool:
    return True
