#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the requirements.
# Idempotent: a second run only checks that the requirements are satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha"
want=$(cat requirements*.txt | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing requirements (torch is large: this takes a few minutes the first time)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >/dev/null 2>&1 || true
    for req in requirements*.txt; do
        "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar on -r "$req"
    done
    echo "$want" > "$stamp"
else
    echo "[setup] environment $VENV is up to date"
fi
