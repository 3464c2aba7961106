#!/usr/bin/env bash
# Install everything the tests need into .venv (and the Debian packages below when missing), then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the suite uses when present: chromium (the browser test), qemu-user (the int8 tests
# emulate an AVX2 CPU without VNNI with qemu-x86_64, whatever CPU runs the suite), coturn (the TURN test
# runs its own turnserver on loopback) and janus (the SR worker tests run their own Janus, configured as
# deploy/janus).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v qemu-x86_64 >/dev/null 2>&1 || missing+=(qemu-user)
command -v turnserver >/dev/null 2>&1 || missing+=(coturn)
command -v janus >/dev/null 2>&1 || missing+=(janus)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; then
    as_root apt-get update -qq && as_root apt-get install -y -qq "${missing[@]}"
    # Debian starts coturn as a system service on install (on all interfaces): the test needs none of it.
    if [[ " ${missing[*]} " == *" coturn "* ]] && [ -d /run/systemd/system ]; then
      as_root systemctl disable --now coturn.service || true
    fi
    # ...and Janus likewise (on port 8088): the tests start their own.
    if [[ " ${missing[*]} " == *" janus "* ]] && [ -d /run/systemd/system ]; then
      as_root systemctl disable --now janus.service || true
    fi
  else
    echo "cannot install ${missing[*]} without root: the tests that need them will skip and say why" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first, pinned, and only the CPU build: PyPI's wheel pulls CUDA and gigabytes of nvidia packages. A wheel
# already at hand (installed, or in pip's find-links) is used without touching the network; otherwise it comes
# from PyTorch's CPU index. Only torch comes from there (--no-deps): its dependencies come with the project below.
.venv/bin/pip install -q --no-deps --no-index torch==2.13.0 2>/dev/null ||
  .venv/bin/pip install -q --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
.venv/bin/pip install -q -e ".[train,test,vmaf]"
# The habits first: lint, format and types, on the whole tree (configured in pyproject.toml).
.venv/bin/ruff check src tests scripts
.venv/bin/ruff format --check src tests scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
