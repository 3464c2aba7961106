#!/usr/bin/env bash
# Install everything the tests need into .venv (and Debian's chromium when missing), then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium
  else
    echo "chromium is missing and cannot be installed without root: the browser test will skip" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU wheel on local disk; anything else downloads gigabytes.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[train,test]"
exec .venv/bin/python -m pytest "$@"
