#!/usr/bin/env bash
# Set up and run the tests on a fresh Debian machine (12 "bookworm" or newer)
# with Python 3.11+, as root or with sudo:
#
#     ./tools/test.sh [pytest args...]
#
# 1. apt-get installs what is missing (skipped when everything is there):
#    mosquitto (also ships mosquitto_passwd, which the TLS tests use), python3-venv, git, and for the RTSP test server (run by the
#    SYSTEM python, /usr/bin/python3): python3-gi gir1.2-gst-rtsp-server-1.0
#    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad, and for the
#    calibration page's browser tests chromium chromium-driver (Playwright drives /usr/bin/chromium;
#    `playwright install` is never run)
# 2. creates .venv if missing and installs the project with its test extra
#    (skipped while pyproject.toml is unchanged since the last install),
# 3. creates .venv-train if missing, for tests/test_training.py, with the pinned torch and the
#    train extra's packages (not the project: the box's code never runs there; skipped while the
#    pins and the extra are unchanged since the last install),
# 4. fetches the test footage (tools/fetch_footage.py, cached in .cache/footage
#    or $EDGE_FOOTAGE_DIR),
# 5. runs ruff and mypy (settings in pyproject.toml), then pytest.
#
# PYTHON=python3.12 picks the interpreter for a new .venv (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
GST_PKGS=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
          gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)

say() { printf 'test.sh: %s\n' "$*"; }

# ---------------------------------------------------------------- system packages
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v git >/dev/null 2>&1 || need+=(git)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ! -x .venv/bin/python ]; then
    if ! command -v "$PY" >/dev/null 2>&1; then
        need+=(python3 python3-venv)
    elif ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        need+=(python3-venv)
    fi
fi
if ! /usr/bin/python3 - >/dev/null 2>&1 <<'PYEOF'
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer  # noqa: F401
Gst.init(None)
missing = [e for e in ("filesrc", "qtdemux", "h264parse", "appsrc", "appsink", "rtph264pay",
                       "udpsrc", "udpsink", "rtpbin")
           if Gst.ElementFactory.find(e) is None]
raise SystemExit(1 if missing else 0)
PYEOF
then
    need+=("${GST_PKGS[@]}")
fi

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        say "need root or sudo to install: ${need[*]}" >&2
        exit 1
    fi
    say "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    say "system packages present"
fi

# ---------------------------------------------------------------- venv
if [ ! -x .venv/bin/python ]; then
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
        say "$PY is $("$PY" -V 2>&1); Python 3.11+ is required (set PYTHON=...)" >&2
        exit 1
    }
    say "creating .venv with $("$PY" -V 2>&1)"
    "$PY" -m venv .venv
fi
stamp=.venv/.edge-agent-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    say "pip install -e '.[test]'"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
else
    say "venv up to date"
fi

# ---------------------------------------------------------------- training venv
# torch and torchvision pinned together: Ultralytics' predict fails with other torchvision builds.
TRAIN_PINS=(torch==2.14.1 torchvision==0.29.1)
mapfile -t train_extra < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["train"]))')
train_stamp=.venv-train/.edge-agent-train-installed
train_want="${TRAIN_PINS[*]} ${train_extra[*]}"
if [ "$(cat "$train_stamp" 2>/dev/null || true)" != "$train_want" ]; then
    [ -x .venv-train/bin/python ] || "$PY" -m venv .venv-train
    say "pip install ${train_want} into .venv-train (torch is large: minutes)"
    .venv-train/bin/python -m pip install -q --disable-pip-version-check "${TRAIN_PINS[@]}" "${train_extra[@]}"
    echo "$train_want" > "$train_stamp"
else
    say "training venv up to date"
fi

# ---------------------------------------------------------------- footage
.venv/bin/python tools/fetch_footage.py

# ---------------------------------------------------------------- lint and types
# Both read their settings (and mypy its file list) from pyproject.toml; a finding fails the run.
say "ruff check agent tools tests"
.venv/bin/ruff check -q agent tools tests
say "mypy (agent, tools)"
.venv/bin/mypy --no-error-summary

# ---------------------------------------------------------------- tests
exec .venv/bin/python -m pytest -q "$@"
