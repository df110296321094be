#!/usr/bin/env bash
# Make sure `victoria-metrics` (single-node VictoriaMetrics) is on PATH for the integration test
# that runs a real balancer against it (tests/integration/test_victoria_metrics.py). On
# Debian/Ubuntu as root, install Debian's package; elsewhere say what to install and go on: the
# test then skips, saying why. Idempotent: does nothing when the binary is present.
set -uo pipefail
. "$(dirname "$0")/lib/debian.sh"
command -v victoria-metrics >/dev/null 2>&1 && exit 0
if can_apt_install; then
  echo "setup: installing Debian's victoria-metrics package"
  apt_install victoria-metrics victoria-metrics && exit 0
fi
echo "setup: victoria-metrics not found and not installable here (Debian: apt-get install" \
     "victoria-metrics); the VictoriaMetrics integration test will skip" >&2
exit 0
