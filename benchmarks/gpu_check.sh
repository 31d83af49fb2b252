#!/usr/bin/env bash
# GPU check (issue 12, part 4): the paper's configuration at full size on one GPU, one table, < 5 min
# on an H100/H200. Details: benchmarks/gpu_check.py. Run from anywhere:
#   bash benchmarks/gpu_check.sh              # needs CUDA
#   bash benchmarks/gpu_check.sh --dry-run    # tiny sizes on CPU, seconds
# PYTHON picks the interpreter (default: the project's venv if present, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv_python="${VENV:-$HOME/.cache/coattn/venv}/bin/python"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$venv_python" ]]; then PYTHON="$venv_python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "$PYTHON" "$here/gpu_check.py" "$@"
