"""The ``vectordb`` commands about versions: history, tags, rollback, branches, backups.

    vectordb versions NS [--limit N] [--before V]
    vectordb tag NS NAME (--version V | --as-of TIME)      vectordb untag NS NAME
    vectordb rollback NS (--version V | --tag T | --as-of TIME)
    vectordb branch NEW --from NS [--version V | --tag T | --as-of TIME]
    vectordb backup NS DEST_URI [--as NAME] [--version V | --tag T | --as-of TIME]
    vectordb restore SRC_URI NS [--as NAME]

``backup`` copies the objects one version needs into another store (a bucket, a prefix, a
directory) as a namespace of its own; ``restore`` copies one back under a new name. Both
print progress to stderr and can be run again after an interruption: what was copied
whole is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_commands(sub, service_of, settings_of) -> None:
    """Register the commands on ``sub`` (argparse subparsers). ``service_of(args)`` and
    ``settings_of(args)`` build what a command runs on."""

    def which(parser: argparse.ArgumentParser, what: str = "version") -> None:
        group = parser.add_mutually_exclusive_group(required=what == "required")
        group.add_argument("--version", type=int, help="a version number")
        group.add_argument("--tag", help="a tag name")
        group.add_argument("--as-of", dest="as_of", help="a time, ISO 8601 with a zone (2026-12-06T05:00:00Z)")

    history = sub.add_parser("versions", help="a namespace's versions, newest first, with what each committed")
    history.add_argument("namespace")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--before", type=int, help="only versions older than this one")
    history.set_defaults(func=lambda a: _print([v.to_json() for v in service_of(a).versions(a.namespace, a.limit,
                                                                                              a.before)]))

    tag = sub.add_parser("tag", help="name a version: it stays readable whatever the retention")
    tag.add_argument("namespace")
    tag.add_argument("name")
    which(tag, "required")
    tag.set_defaults(func=lambda a: _print(_tag_json(service_of(a).tag(a.namespace, a.name, _as_of(a)))))

    untag = sub.add_parser("untag", help="remove a tag (its version may then be pruned)")
    untag.add_argument("namespace")
    untag.add_argument("name")
    untag.set_defaults(func=lambda a: _print({"version": service_of(a).untag(a.namespace, a.name)}))

    rollback = sub.add_parser("rollback", help="commit a past version's content as the newest (history is kept)")
    rollback.add_argument("namespace")
    which(rollback, "required")

    def do_rollback(a) -> int:
        manifest = service_of(a).restore(a.namespace, _as_of(a))
        return _print({"version": manifest.version, "restored": manifest.change["version"]})

    rollback.set_defaults(func=do_rollback)

    branch = sub.add_parser("branch", help="create a namespace from another one's version (no data copied)")
    branch.add_argument("namespace", help="the new namespace")
    branch.add_argument("--from", dest="source", required=True, help="the namespace to branch from")
    which(branch)

    def do_branch(a) -> int:
        manifest = service_of(a).branch(a.namespace, a.source, _as_of(a))
        return _print({"name": a.namespace, "version": manifest.version, "origin": manifest.origin})

    branch.set_defaults(func=do_branch)

    backup = sub.add_parser("backup", help="copy the objects one version needs into another store")
    backup.add_argument("namespace")
    backup.add_argument("dest_uri", help="file://DIR, s3://BUCKET/PREFIX (same S3 settings) or memory://NAME")
    backup.add_argument("--as", dest="as_name", help="its name in the destination (default: the same)")
    which(backup)

    def do_backup(a) -> int:
        from ingest.backup import copy_version

        source, dest = service_of(a), _service_at(settings_of(a), a.dest_uri)
        result = copy_version(source.catalog, a.namespace, dest.catalog, a.as_name or a.namespace, _as_of(a),
                              _Progress())
        return _print(result.__dict__)

    backup.set_defaults(func=do_backup)

    restore = sub.add_parser("restore", help="copy a namespace back from a backup store, under a new name")
    restore.add_argument("src_uri", help="the backup's store URI")
    restore.add_argument("namespace", help="the namespace in the backup")
    restore.add_argument("--as", dest="as_name", help="its name here (default: the same; must be unused)")
    which(restore)

    def do_restore(a) -> int:
        from ingest.backup import copy_version

        source, dest = _service_at(settings_of(a), a.src_uri), service_of(a)
        result = copy_version(source.catalog, a.namespace, dest.catalog, a.as_name or a.namespace, _as_of(a),
                              _Progress())
        return _print(result.__dict__)

    restore.set_defaults(func=do_restore)


def _as_of(args):
    for value in (args.version, args.tag, args.as_of):
        if value is not None:
            return value
    return None


def _service_at(settings, uri: str):
    from api.service import Service

    return Service(settings.model_copy(update={"store_uri": uri}))


def _tag_json(ref) -> dict:
    return {"name": ref.name, "version": ref.version, "created_at": ref.created_at}


def _print(value) -> int:
    print(json.dumps(value, indent=2))
    return 0


class _Progress:
    """``copied 12/40 objects, 3.2/10.1 MB, 1.2 MB/s, ETA 6 s`` on stderr, at most every 0.5 s."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown = 0.0

    def __call__(self, done: int, total: int, done_bytes: int, total_bytes: int) -> None:
        now = time.monotonic()
        if done < total and now - self.shown < 0.5:
            return
        self.shown = now
        rate = done_bytes / max(now - self.started, 1e-6)
        eta = (total_bytes - done_bytes) / rate if rate > 0 else 0.0
        print(f"copied {done}/{total} objects, {done_bytes / 1e6:.1f}/{total_bytes / 1e6:.1f} MB, "
              f"{rate / 1e6:.1f} MB/s, ETA {eta:.0f} s", file=sys.stderr, flush=True)
