"""The ``vectordb`` command: run the service, or maintain a namespace from a shell.

    vectordb serve [--role all|ingest|query] [--host 127.0.0.1] [--port 8080] [--store URI] [--insecure]
    vectordb keys create --prefix P --rights read|write|admin [--name N] [--rate R ...]   (prints the token once)
    vectordb keys list | keys revoke KEY_ID
    vectordb index NS [--compact] [--gc] [--ray ADDRESS]
    vectordb gc NS
    vectordb namespaces
    vectordb versions | tag | untag | rollback | branch | backup | restore ...   (see api/cli_versions.py)
    vectordb import NS PATH | export NS PATH      (bulk load / dump; see api/cli_transfer.py)
    vectordb eval beir DIR [...]     (nDCG@10 / recall@100 per mode; see bench/beir.py)
    vectordb deploy ray [...]        (see deploy/README.md)

Settings come from ``VECTORDB_*`` environment variables (see README); flags override them.
``--store URI`` may come before or after the command; every command but ``serve`` prints the
store it resolved to on stderr, and ``serve`` logs it in its start-up line.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import sys


def _settings(args, announce: bool = True):
    """The settings (environment, then ``--store``); ``announce``: say on stderr which store
    they resolve to (the serve command logs it instead)."""
    from storage import describe_store
    from vectordb.settings import load

    overrides = {k: v for k, v in {"store_uri": getattr(args, "store", None)}.items() if v is not None}
    settings = load(**overrides)
    if announce:
        print(f"store: {describe_store(settings)}", file=sys.stderr)
    return settings


# glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Have glibc's malloc use at most ``arenas`` arenas (unless ``MALLOC_ARENA_MAX`` is set:
    then glibc has read it). Its default, 8 a core, lets each of the 16 fetch threads free
    decoded partitions into an arena of its own that keeps the memory: a 200,000-row int8
    namespace queried past a 96 MiB cache grew to 335 MB RSS and kept growing, against
    ~225 MB with 2 arenas, at the same speed (at 10M rows with a 2 GiB cache: 3.5 GB). True
    when the limit took (glibc), else False."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):  # not glibc
        return False


def _serve(args) -> int:
    limit_malloc_arenas()  # before the thread pools start
    # A worker's start allocates a few hundred thousand objects (modules, classes, pydantic
    # schemas, routes) that live as long as the process. With the cyclic collector on, each
    # of its full passes re-walks all of them while they pile up: ~30 ms of a query worker's
    # process start -> first answer. Off until the app is built, then those objects are
    # frozen (moved out of the collector's view, as for a pre-fork server) and it resumes.
    gc.disable()
    try:
        import uvicorn

        app, host, port = _build_server(args)
    finally:
        gc.freeze()
        gc.enable()
    # ws="none": the API has no websocket routes, and loading a websocket protocol is a few ms
    # of every worker's start.
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, access_log=False, ws="none")
    return 0


def _build_server(args):
    from api.app import create_app

    settings = _settings(args, announce=False)
    role = args.role or settings.role
    host = args.host or settings.host
    port = args.port or settings.port
    _log_to_stderr(args.log_level)
    # Before binding: without credentials, loopback only (api/exposure.py).
    from api.apikeys import KeyStore
    from api.exposure import check_bind
    from storage import open_raw_store

    settings = check_bind(settings, host, KeyStore(open_raw_store(settings)), args.insecure)
    app = create_app(settings, role)
    logging.getLogger("vectordb").info("%s", startup_line(settings, role, host, port))
    return app, host, port


def _service(args):
    from api.service import Service

    return Service(_settings(args))


def _index(args) -> int:
    from api.service import Service

    settings = _settings(args)
    if args.ray:  # build on a Ray cluster (ingest.ray_build), as VECTORDB_RAY_ADDRESS would
        settings = settings.model_copy(update={"ray_address": args.ray})
    service = Service(settings)
    result = service.index(args.namespace, compact=args.compact)
    out = {"version": result.version, "indexed_rows": result.indexed_rows, "segments": result.segments,
           "compacted": result.compacted, "seconds": round(result.seconds, 3)}
    if args.gc:
        out["gc"] = service.collect_garbage(args.namespace)
    print(json.dumps(out))
    return 0


def _gc(args) -> int:
    result = _service(args).collect_garbage(args.namespace)
    print(json.dumps(result))
    print(gc_summary(result), file=sys.stderr)
    return 0


def gc_summary(r: dict) -> str:
    """What a collection deleted and what it kept, and why, in words."""
    return (
        f"deleted {r['objects_deleted']} objects ({r['bytes_deleted']} bytes), pruned {r['manifests_pruned']} "
        f"versions, removed {r['manifests_deleted']} expired stubs; kept {r['versions_kept']} readable versions "
        f"({r['versions_kept_by_retention']} by retention, VECTORDB_RETAIN_MANIFESTS; "
        f"{r['versions_kept_by_grace']} younger than VECTORDB_GC_GRACE_S) and {r['objects_kept']} objects "
        f"({r['objects_kept_for_versions']} for those versions, {r['objects_kept_for_tags']} for tags, "
        f"{r['objects_kept_for_branches']} for branches, {r['objects_kept_by_fence']} newer than the GC fence"
        f"{' ' + str(r['fence']) if r['fence'] is not None else ''}: writes in flight may commit them)"
    )


def startup_line(settings, role: str, host: str, port: int) -> str:
    """The line a server logs as it starts: store (no credentials), role, model, address."""
    from storage import describe_store

    model = settings.preload_embedder or "none preloaded"
    if settings.model_path:
        model += f" from {settings.model_path}"
    return (
        f"vectordb serving role {role} at http://{host}:{port}, store {describe_store(settings)}, "
        f"model {model} (runtime {settings.embed_runtime}, device {settings.embed_device})"
    )


def _log_to_stderr(level: str) -> None:
    """Our loggers (start-up line, ``vectordb.access``) to stderr, beside uvicorn's own."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    for name in ("vectordb", "api", "ingest", "query", "storage"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level.upper())


def _namespaces(args) -> int:
    print(json.dumps(_service(args).list_namespaces()))
    return 0


def _keys(args) -> int:
    from api.apikeys import KeyStore, Limits
    from storage import open_raw_store

    keys = KeyStore(open_raw_store(_settings(args)))
    if args.keys_command == "create":
        limits = Limits.from_json({k: getattr(args, k) for k in Limits.__dataclass_fields__ if getattr(args, k) is not None})
        record, token = keys.create(args.rights, args.prefix, args.name, limits)
        print(json.dumps({**record.to_json(with_hash=False), "token": token}))
        print("the token is shown only now; the store keeps its hash", file=sys.stderr)
    elif args.keys_command == "list":
        print(json.dumps([r.to_json(with_hash=False) for r in keys.list()]))
    else:
        print(json.dumps(keys.revoke(args.key_id).to_json(with_hash=False)))
    return 0


def _eval(args) -> int:
    # bench/ is not an installed package: load the evaluation from this checkout.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "beir.py"
    if not path.exists():
        print("vectordb eval needs a source checkout (bench/beir.py)", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("vectordb_bench_beir", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args.rest, results_dir=None)  # nothing written into the checkout


def _deploy(args) -> int:
    # By name: the server does not depend on its deployments (they depend on it).
    deploy_ray = importlib.import_module("deploy.ray_serve").main
    return deploy_ray((["--store", args.store] if args.store else []) + args.deploy_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vectordb", description="Serverless vector search on object storage.")
    parser.add_argument("--store", help="store URI (overrides VECTORDB_STORE_URI)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--role", choices=["all", "ingest", "query"])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--insecure", action="store_true",
                       help="listen on a non-loopback address even without API keys or JWT (VECTORDB_INSECURE)")
    serve.set_defaults(func=_serve)

    keys = sub.add_parser("keys", help="create, list and revoke API keys (stored hashed in the store)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print its token (once)")
    create.add_argument("--prefix", action="append", required=True,
                        help="namespace-name prefix the key covers (repeatable; '*' = every namespace)")
    create.add_argument("--rights", choices=["read", "write", "admin"], required=True,
                        help="read: query and read; write: also upsert, delete, upload, index; admin: also "
                        "create and drop namespaces")
    create.add_argument("--name", default="", help="a label for people")
    create.add_argument("--rate", dest="rate_per_s", type=float, help="requests per second (per worker)")
    create.add_argument("--burst", type=int, help="most requests at once (the bucket's depth; default: the rate, at least 1)")
    create.add_argument("--max-namespaces", type=int, help="most namespaces within its prefixes when it creates one")
    create.add_argument("--max-rows", type=int, help="most documents or ids in one write request")
    create.add_argument("--max-bytes", type=int, help="largest request body")
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key (effective within VECTORDB_AUTH_CACHE_S)")
    revoke.add_argument("key_id")
    keys.set_defaults(func=_keys)

    index = sub.add_parser("index", help="index a namespace's write-ahead log now")
    index.add_argument("namespace")
    index.add_argument("--compact", action="store_true", help="also merge all segments, dropping deleted rows")
    index.add_argument("--gc", action="store_true", help="then delete objects no retained manifest needs")
    index.add_argument("--ray", metavar="ADDRESS", help="build on the Ray cluster at ADDRESS (host:port of its head), "
                       "one task per shard (overrides VECTORDB_RAY_ADDRESS)")
    index.set_defaults(func=_index)

    gc = sub.add_parser("gc", help="delete objects no retained manifest needs")
    gc.add_argument("namespace")
    gc.set_defaults(func=_gc)

    names = sub.add_parser("namespaces", help="list namespaces")
    names.set_defaults(func=_namespaces)

    from api.cli_versions import add_commands  # versions, tag, untag, rollback, branch, backup, restore

    add_commands(sub, _service, _settings)

    from api.cli_transfer import add_commands as add_transfer  # import, export

    add_transfer(sub, _settings)

    ev = sub.add_parser("eval", help="retrieval quality on a BEIR dataset through the HTTP API", add_help=False)
    ev.add_argument("suite", choices=["beir"])
    ev.add_argument("rest", nargs=argparse.REMAINDER, help="see: vectordb eval beir --help")
    ev.set_defaults(func=_eval)

    # add_help=False lets "vectordb deploy ray --help" reach the deploy command's own help.
    deploy = sub.add_parser("deploy", help="run the roles on an engine that scales them to zero", add_help=False)
    deploy.add_argument("engine", choices=["ray"])
    deploy.add_argument("deploy_args", nargs=argparse.REMAINDER, help="see: vectordb deploy ray --help")
    deploy.set_defaults(func=_deploy)

    _accept_store_after_command(sub)
    args = parser.parse_args(argv)
    from vectordb.errors import VectorDBError

    try:
        return args.func(args)
    except VectorDBError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 2


def _accept_store_after_command(sub) -> None:
    """``--store URI`` after the command too (``vectordb serve --store URI``), as well as
    before it; eval and deploy pass their arguments on untouched."""
    for name, parser in sub.choices.items():
        if name in ("eval", "deploy"):
            continue
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            _accept_store_after_command(action)
        if not nested:
            parser.add_argument("--store", default=argparse.SUPPRESS, help="store URI (overrides VECTORDB_STORE_URI)")


if __name__ == "__main__":
    sys.exit(main())
