"""The ``vectordb`` commands that move documents in and out of a namespace in bulk.

    vectordb import NS PATH [--batch-size 5000] [--workers 2] [--checkpoint FILE] [--restart]
                            [--create [--embedder E] [--dimensions D] [--metric M]] [--generate-ids]
    vectordb export NS PATH [--as-of VERSION|TAG|TIME] [--page-size 1000]

Both work on the store the settings name (``--store``), or on a running service with
``--url http://... [--api-key KEY]`` (or ``VECTORDB_API_KEY``). PATH: a ``.jsonl``,
``.parquet`` or ``.csv`` file, or for import a directory of documents (each file through
the file parsers). A progress bar with rate and ETA goes to stderr when it is a terminal
(not with ``--quiet``); then one summary line; the result as JSON on stdout. An
interrupted import resumes where it stopped when run again (see :mod:`ingest.bulk`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def add_commands(sub, settings_of) -> None:
    """Register ``import`` and ``export`` on ``sub``; ``settings_of(args)`` gives the store
    settings when no ``--url`` is given."""

    def target(parser) -> None:
        parser.add_argument("--url", help="a running service (http://host:port) instead of the store")
        parser.add_argument("--api-key", help="the service's API key (default: VECTORDB_API_KEY)")
        parser.add_argument("--quiet", action="store_true", help="no progress bar, only the summary")

    imp = sub.add_parser("import", help="bulk-load a JSONL, Parquet or CSV file, or a directory of documents")
    imp.add_argument("namespace")
    imp.add_argument("path", type=Path)
    imp.add_argument("--batch-size", type=int, default=5000, help="rows per upsert (default 5000)")
    imp.add_argument(
        "--workers",
        type=int,
        default=2,
        help="batches in flight at once (default 2; 1 keeps the file's order for repeated ids)",
    )
    imp.add_argument("--checkpoint", type=Path, help="the resume file (default: <PATH>.import-<NS>.json beside it)")
    imp.add_argument("--restart", action="store_true", help="ignore the checkpoint: import from the first row")
    imp.add_argument(
        "--generate-ids",
        action="store_true",
        help="rows without an id get '<file name>:<row>' (stable while the file is unchanged)",
    )
    imp.add_argument(
        "--create",
        action="store_true",
        help="create the namespace if it does not exist (configuration: the flags below, else what "
        "an export recorded, else embedder 'none' with the vectors' dimensions)",
    )
    imp.add_argument("--embedder", help="with --create")
    imp.add_argument("--dimensions", type=int, help="with --create")
    imp.add_argument("--metric", help="with --create")
    target(imp)
    imp.set_defaults(func=lambda a: _import(a, settings_of))

    exp = sub.add_parser("export", help="write every live document (vectors, attributes) to Parquet or JSONL")
    exp.add_argument("namespace")
    exp.add_argument("path", type=Path, help="a .parquet or .jsonl file (written whole or not at all)")
    exp.add_argument("--as-of", dest="as_of", help="a version, tag or time (default: the newest version)")
    exp.add_argument("--page-size", type=int, default=1000, help="documents per page read (default 1000)")
    target(exp)
    exp.set_defaults(func=lambda a: _export(a, settings_of))


def _connect(args, settings_of):
    import vectordb

    if args.url:
        return vectordb.connect(args.url, api_key=args.api_key or os.environ.get("VECTORDB_API_KEY"))
    settings = settings_of(args)
    return vectordb.connect(settings.store_uri)


def _import(args, settings_of) -> int:
    from ingest import bulk, bulk_sources
    from vectordb.errors import InvalidArgument, NamespaceNotFound

    path: Path = args.path
    if not path.exists():
        raise InvalidArgument(f"{path}: no such file or directory")
    directory = path.is_dir()
    if not directory:
        bulk_sources.format_of(path)  # a bad file type fails before anything is opened
    with _connect(args, settings_of) as db:
        try:
            ns = db.namespace(args.namespace)
        except NamespaceNotFound:
            if not args.create:
                raise NamespaceNotFound(
                    f"namespace {args.namespace!r} does not exist; create it first or pass --create"
                ) from None
            ns = db.create_namespace(args.namespace, **_config_for(args, path, directory))
        checkpoint = bulk.Checkpoint(
            args.checkpoint or bulk.Checkpoint.beside(path, args.namespace), path, args.namespace
        )
        if args.restart:
            checkpoint.remove()
        if directory:
            total = len(bulk.document_files(path)[0])
            unit = "files"
        else:
            total = bulk_sources.count_rows(path)
            unit = "rows"
        with _Bar(total, unit, args.quiet) as bar:
            bar.skip(checkpoint.load().get("rows", 0) if not directory else len(checkpoint.load().get("files", {})))
            if directory:
                result = bulk.import_directory(ns, path, checkpoint, progress=bar.update)
            else:
                result = bulk.import_file(
                    ns,
                    path,
                    checkpoint,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    generate_ids=args.generate_ids,
                    progress=bar.update,
                )
    rate = result.rows / result.seconds if result.seconds else 0.0
    summary = (
        f"imported {result.rows} {unit} into {args.namespace} in {result.seconds:.1f} s "
        f"({rate:,.0f} {unit}/s), version {result.version}"
    )
    if result.skipped:
        summary += f"; {result.skipped} {unit} skipped (done by an earlier run, per {checkpoint.path})"
    if result.skipped_files:
        summary += f"; {len(result.skipped_files)} files no parser takes left out"
    print(summary, file=sys.stderr)
    print(
        json.dumps(
            {
                "namespace": args.namespace,
                unit: result.rows,
                "skipped": result.skipped,
                "version": result.version,
                "seconds": round(result.seconds, 3),
                **({"files_left_out": result.skipped_files} if result.skipped_files else {}),
            }
        )
    )
    return 0


def _config_for(args, path: Path, directory: bool) -> dict:
    """The new namespace's configuration: flags, else an export's record, else inferred."""
    from ingest import bulk_sources

    config: dict = {}
    if not directory:
        recorded = bulk_sources.exported_config(path)
        if recorded:
            # An export's rows are stored rows (chunks included): stored again as they are.
            config = {k: recorded[k] for k in ("embedder", "dimensions", "metric", "vector_dtype")}
            if recorded.get("cluster_by"):
                config["cluster_by"] = recorded["cluster_by"]
            config["chunking"] = False
        elif args.dimensions is None:
            first = next(bulk_sources.read_batches(path, 1, generate_ids=True), None)
            vector = _first_vector(first.documents) if first else None
            if vector is not None:
                config = {"embedder": "none", "dimensions": len(vector)}
    for key in ("embedder", "dimensions", "metric"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return config


def _first_vector(documents):
    if isinstance(documents, list):
        return documents[0].get("vector")
    return documents.column("vector")[0].as_py() if "vector" in documents.column_names else None


def _export(args, settings_of) -> int:
    from ingest import bulk

    as_of = int(args.as_of) if args.as_of and args.as_of.isdigit() else args.as_of
    with _connect(args, settings_of) as db:
        ns = db.namespace(args.namespace)
        info = ns.describe()
        total = sum(info.rows.values()) or None  # unindexed rows may repeat ids: an estimate
        with _Bar(total, "rows", args.quiet) as bar:
            result = bulk.export(
                ns,
                args.path,
                as_of=as_of,
                page_size=args.page_size,
                progress=bar.update,
                on_version=lambda v: bar.write(f"exporting {args.namespace} as of version {v}"),
            )
    rate = result.rows / result.seconds if result.seconds else 0.0
    print(
        f"exported {result.rows} rows of {args.namespace} version {result.version} to {args.path} in "
        f"{result.seconds:.1f} s ({rate:,.0f} rows/s)",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "namespace": args.namespace,
                "version": result.version,
                "rows": result.rows,
                "path": str(args.path),
                "seconds": round(result.seconds, 3),
            }
        )
    )
    return 0


class _Bar:
    """A tqdm bar on stderr when it is a terminal and not ``quiet``; otherwise nothing."""

    def __init__(self, total: int | None, unit: str, quiet: bool) -> None:
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=f" {unit}", unit_scale=True, file=sys.stderr, dynamic_ncols=True)

    def skip(self, n: int) -> None:
        """Rows done by an earlier run: shown as done, not counted in the rate."""
        if self.bar is not None and n:
            self.bar.initial = self.bar.n = n
            self.bar.refresh()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
