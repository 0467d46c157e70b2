#!/usr/bin/env bash
# DVC for bench/bench_cli_ingest.py, in a venv of its own: DVC's ~100 dependencies stay out
# of the project's venv. The bench finds it at $DVC_VENV (default ~/.cache/tusk-bench/dvc).
set -euo pipefail
venv="${DVC_VENV:-$HOME/.cache/tusk-bench/dvc}"
if [ ! -x "$venv/bin/dvc" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "dvc==3.67.1"
fi
"$venv/bin/dvc" --version
