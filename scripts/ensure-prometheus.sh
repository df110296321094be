#!/usr/bin/env bash
# Make sure `prometheus` and `promtool` are on PATH. On Debian/Ubuntu as root, install Debian's
# package; elsewhere, say exactly what to install. Idempotent: does nothing when both are present.
set -euo pipefail
. "$(dirname "$0")/lib/debian.sh"
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if can_apt_install; then
  echo "setup: installing Debian's prometheus package (prometheus + promtool)"
  apt_install prometheus prometheus
  exit 0
fi
cat >&2 <<'MSG'
setup: `prometheus` and `promtool` (Prometheus >= 2.37) are needed and were not found.
  Debian/Ubuntu: sudo apt-get install --no-install-recommends prometheus
  Fedora:        sudo dnf install golang-github-prometheus
  macOS:         brew install prometheus
  Any system:    the release tarball from the Prometheus project, with both binaries on PATH.
MSG
exit 1
