#!/usr/bin/env bash
# Optional Mask R-CNN backend: detectron2 from the official repository at a pinned commit,
# or from a local checkout given as D2_SRC=<path>. Needs torch in the venv first (its setup.py
# imports torch), hence --no-build-isolation; the lock already carries its runtime deps.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
D2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
if [[ -n "${D2_SRC:-}" ]]; then
    src="$D2_SRC"
    [[ -f "$src/setup.py" ]] || { echo "D2_SRC=$src is not a detectron2 checkout (no setup.py)" >&2; exit 1; }
else
    src="git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT"
fi
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/pip" install --no-build-isolation --no-deps "$src"
"$VENV/bin/pip" check
"$VENV/bin/python" -c "import detectron2; from detectron2 import model_zoo; print('detectron2', detectron2.__version__, 'at', detectron2.__file__)"
