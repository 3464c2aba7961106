#!/usr/bin/env bash
# Install the runtime into .venv and start the demo server; then open http://127.0.0.1:8080 and press Start.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
exec .venv/bin/python -m server --host "${HOST:-127.0.0.1}" --port "${PORT:-8080}" "$@"
