#!/usr/bin/env bash
# Optional system tools used by `make test` (compose validation) and `make bench` (wrk, nginx).
# Installed on Debian/Ubuntu as root; elsewhere the steps that need them say so and skip.
set -uo pipefail
missing=()
for pair in "docker-compose:docker-compose" "wrk:wrk" "nginx:nginx-light"; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ -r /etc/debian_version ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # nginx-light's postinst may start a system nginx; the benchmark runs its own.
  if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
else
  echo "setup: optional tools missing (${missing[*]}); compose validation and some benchmarks will skip" >&2
fi
exit 0
