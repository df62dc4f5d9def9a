"""The layers of ARCHITECTURE.md, checked on the source: the read path (``query/``), the
core (``vectordb/``: ``connect`` opens the embedded side by name) and the stores
(``storage/``, which use the core's errors and settings) never import the write path
(``ingest/``), the server (``api/``) or the deployments (``deploy/``); the write path never
imports the server; the server never imports the deployments (the CLI dispatches to them by
name). The benchmarks never import the tests: what both use is ``vectordb.testing``, which
imports no pytest. Function-level imports count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "storage": {"ingest", "query", "api", "deploy"},  # it uses the core's errors and settings
    "vectordb": {"ingest", "query", "api", "deploy", "pytest"},
    "query": {"ingest", "api", "deploy"},
    "ingest": {"query", "api", "deploy"},
    "api": {"deploy"},
    "bench": {"tests"},
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_goes_up_the_layers(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
            continue  # a virtual environment (bench/.venv-peers), not ours
        wrong += [f"{rel} imports {name}" for name in sorted(_imports(path) & FORBIDDEN[package])]
    assert not wrong, wrong
