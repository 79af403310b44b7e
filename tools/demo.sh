#!/usr/bin/env bash
# The README's first command: set up on a fresh Debian machine (Python 3.11+) and run the agent on
# the bundled demo: a real clip as the camera, tickets kept in var/ (no broker needed).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "demo: needs Python 3.11 or newer" >&2; exit 1; }
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "demo: installing python3-venv (Debian)" >&2
  ${SUDO:-$( [ "$(id -u)" = 0 ] || echo sudo )} apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
.venv/bin/python tools/fetch_footage.py

echo "demo: running the agent on camera_config/demo-vtest.toml (about 80 s of footage; Ctrl-C stops)" >&2
.venv/bin/edge-agent -c edge.toml run --print-tickets
echo "demo: tickets and snapshots are in var/ (outbox.sqlite, evidence/<ticket>/snapshot.jpg)" >&2
