#!/usr/bin/env bash
# Make sure `prometheus` and `promtool` are on PATH. On Debian/Ubuntu as root, install Debian's
# package; elsewhere, say exactly what to install. Idempotent: does nothing when both are present.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ -r /etc/debian_version ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's prometheus package (prometheus + promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package may start a system Prometheus on :9090; the project runs its own.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
  if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
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
