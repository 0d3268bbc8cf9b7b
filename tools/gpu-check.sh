#!/usr/bin/env bash
# `make gpu-check`: the GPU check (tools/gpu_check.py) on a CUDA machine. Uses .venv when it has a
# CUDA-capable torch, or for `--smoke` (the script checked on a CPU: `make test` runs it); otherwise the
# machine's python3 (which must hold torch, timm, pandas, scipy) plus the wheels in .whl/ (made by
# tools/gpu-wheels.sh, carried along). Output under $OUT (or results/gpu-check/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
smoke=0
for a in "$@"; do [[ "$a" == "--smoke" ]] && smoke=1; done
if [[ -x .venv/bin/python ]] && { [[ $smoke == 1 ]] || .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }; then
  PY=.venv/bin/python
elif compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sdd-site .whl/*.whl
  export PYTHONPATH=/tmp/sdd-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
exec "$PY" tools/gpu_check.py --out "${OUT:-results/gpu-check}" "$@"
