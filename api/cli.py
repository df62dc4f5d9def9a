"""The ``vectordb`` command: run the service, or maintain a namespace from a shell.

    vectordb serve [--role all|ingest|query] [--host 127.0.0.1] [--port 8080] [--store URI]
    vectordb index NS [--compact] [--gc]
    vectordb gc NS
    vectordb namespaces
    vectordb eval beir DIR [...]     (nDCG@10 / recall@100 per mode; see bench/beir.py)
    vectordb deploy ray [...]        (see deploy/README.md)

Settings come from ``VECTORDB_*`` environment variables (see README); flags override them.
"""

from __future__ import annotations

import argparse
import json
import sys


def _settings(args):
    from vectordb.settings import Settings

    overrides = {k: v for k, v in {"store_uri": getattr(args, "store", None)}.items() if v is not None}
    return Settings(**overrides)


def _serve(args) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings(args)
    role = args.role or settings.role
    host = args.host or settings.host
    port = args.port or settings.port
    app = create_app(settings, role)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, access_log=False)
    return 0


def _service(args):
    from api.service import Service

    return Service(_settings(args))


def _index(args) -> int:
    service = _service(args)
    result = service.index(args.namespace, compact=args.compact)
    out = {"version": result.version, "indexed_rows": result.indexed_rows, "segments": result.segments,
           "compacted": result.compacted, "seconds": round(result.seconds, 3)}
    if args.gc:
        out["gc"] = service.collect_garbage(args.namespace)
    print(json.dumps(out))
    return 0


def _gc(args) -> int:
    print(json.dumps(_service(args).collect_garbage(args.namespace)))
    return 0


def _namespaces(args) -> int:
    print(json.dumps(_service(args).list_namespaces()))
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
    return module.main(args.rest)


def _deploy(args) -> int:
    from deploy.ray_serve import main as deploy_ray

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
    serve.set_defaults(func=_serve)

    index = sub.add_parser("index", help="index a namespace's write-ahead log now")
    index.add_argument("namespace")
    index.add_argument("--compact", action="store_true", help="also merge all segments, dropping deleted rows")
    index.add_argument("--gc", action="store_true", help="then delete objects no retained manifest needs")
    index.set_defaults(func=_index)

    gc = sub.add_parser("gc", help="delete objects no retained manifest needs")
    gc.add_argument("namespace")
    gc.set_defaults(func=_gc)

    names = sub.add_parser("namespaces", help="list namespaces")
    names.set_defaults(func=_namespaces)

    ev = sub.add_parser("eval", help="retrieval quality on a BEIR dataset through the HTTP API", add_help=False)
    ev.add_argument("suite", choices=["beir"])
    ev.add_argument("rest", nargs=argparse.REMAINDER, help="see: vectordb eval beir --help")
    ev.set_defaults(func=_eval)

    # add_help=False lets "vectordb deploy ray --help" reach the deploy command's own help.
    deploy = sub.add_parser("deploy", help="run the roles on an engine that scales them to zero", add_help=False)
    deploy.add_argument("engine", choices=["ray"])
    deploy.add_argument("deploy_args", nargs=argparse.REMAINDER, help="see: vectordb deploy ray --help")
    deploy.set_defaults(func=_deploy)

    args = parser.parse_args(argv)
    from vectordb.errors import VectorDBError

    try:
        return args.func(args)
    except VectorDBError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
