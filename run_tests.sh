#!/usr/bin/env bash
# The test command: set up the environment if needed, lint, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
