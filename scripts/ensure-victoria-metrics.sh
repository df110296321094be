#!/usr/bin/env bash
# Make sure `victoria-metrics` (single-node VictoriaMetrics) is on PATH for the integration test
# that runs a real balancer against it (tests/integration/test_victoria_metrics.py). On
# Debian/Ubuntu as root, install Debian's package; elsewhere say what to install and go on: the
# test then skips, saying why. Idempotent: does nothing when the binary is present.
set -uo pipefail
command -v victoria-metrics >/dev/null 2>&1 && exit 0
if [ -r /etc/debian_version ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's victoria-metrics package"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends victoria-metrics >/dev/null; then
    # The package may start a system VictoriaMetrics on :8428; the tests run their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now victoria-metrics >/dev/null 2>&1 || true; fi
    if command -v service >/dev/null 2>&1; then service victoria-metrics stop >/dev/null 2>&1 || true; fi
    exit 0
  fi
fi
echo "setup: victoria-metrics not found and not installable here (Debian: apt-get install" \
     "victoria-metrics); the VictoriaMetrics integration test will skip" >&2
exit 0
