#!/usr/bin/env bash
# Create bench/.venv-peers: the systems the benchmark compares us with (FAISS, LanceDB,
# Chroma), kept out of the project venv so their dependencies never leak into ours.
#
#     bash bench/setup_peers.sh            # idempotent; reinstalls nothing already there
#
# Versions are pinned to the ones BENCHMARKS.md was measured with. No torch is needed by
# any of them (chromadb embeds with onnxruntime, and we pass vectors anyway); the script
# warns if a CUDA torch ever slips in through a dependency.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    # The interpreter the project venv was made from, else python3 on PATH.
    project_cfg="$here/../.venv/pyvenv.cfg"
    if [[ -f "$project_cfg" ]]; then
        python="$(sed -n 's/^executable = //p' "$project_cfg")"
    fi
    [[ -x "$python" ]] || python="$(command -v python3)"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip_install() {
    # Some machines' pip.conf names local mirror folders that may not exist: drop that noise.
    "$venv/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install --upgrade pip
pip_install "lancedb==0.40.0" "pylance==14.0.2" "chromadb==1.5.9" "faiss-cpu==1.15.1" numpy pyarrow

if "$venv/bin/python" -m pip show torch >/dev/null 2>&1; then
    version="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
    case "$version" in
        *+cpu) ;;
        *) echo "warning: a non-CPU torch ($version) got into $venv: no peer needs it, uninstall it" >&2 ;;
    esac
fi
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
print("peers venv:", ", ".join(f"{p} {md.version(p)}" for p in ("lancedb", "pylance", "chromadb", "faiss-cpu", "numpy", "pyarrow")))
EOF
