#!/usr/bin/env bash
# Create .venv and install the pinned lock plus the harness (editable).
# Idempotent: does nothing when lock.txt and pyproject.toml are unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.installed"
want=$(cat lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "install: $VENV is up to date with lock.txt"
    exit 0
fi

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    for cand in python3.11 python3; do
        if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            PY=$cand; break
        fi
    done
fi
if [[ -z "$PY" ]]; then
    echo "install: Python 3.11 is required (the lock was verified on 3.11); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/pip" install --quiet -r lock.txt
# setuptools 80.9.0 is in the lock, so the editable build needs no isolated build env.
"$VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e .
"$VENV/bin/pip" check
echo "$want" > "$STAMP"
echo "install: done in $(( $(date +%s) - start )) s; venv size $(du -sh "$VENV" | cut -f1)"
