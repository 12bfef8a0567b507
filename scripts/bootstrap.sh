#!/usr/bin/env bash
# Create .venv (if missing) and install vis_core with its dev extras. Idempotent.
# torch is installed first and pinned: the pinned version takes the local CPU wheel, while a bare `torch`
# requirement would pull several GB of CUDA packages. pyproject.toml itself only asks for a range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -vE "^WARNING: Location|^\s*$" || true
.venv/bin/python -c "import vis_core, torch; print('vis_core', vis_core.__version__, '| torch', torch.__version__)"
