#!/usr/bin/env bash
# Python 3.10+ with venv and pip. Debian splits venv/ensurepip into python3-venv: install it as
# root; elsewhere say exactly what is missing.
set -euo pipefail
PYTHON=${1:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: $PYTHON not found; install Python 3.10 or newer (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
  echo "setup: $("$PYTHON" --version 2>&1) is too old; Python 3.10+ is required" >&2; exit 1; }
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ -r /etc/debian_version ] && [ "$(id -u)" = 0 ]; then
    echo "setup: installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  else
    echo "setup: $PYTHON lacks venv/ensurepip (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
    exit 1
  fi
fi
