#!/usr/bin/env bash
# Sets up towerrec in ./.venv: the CPU build of PyTorch when no torch is
# present (a loose 'torch' requirement would pull several GB of CUDA wheels),
# then the package itself with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ".[test]"
echo "towerrec is installed in .venv: run .venv/bin/towerrec --help"
