#!/usr/bin/env bash
# System tools that only some make targets need, by group; `make up` needs none of them.
#   ensure-tools.sh test     docker-compose (`make test`: compose validation, the e2e run)
#   ensure-tools.sh bench    wrk and nginx (`make bench`: throughput against a direct call and nginx)
#   ensure-tools.sh --list GROUP   print the group's "command:package" pairs, install nothing
# Installed on Debian/Ubuntu as root; elsewhere the steps that need them say so and skip.
set -uo pipefail

group_tools() {
  case $1 in
    test) echo "docker-compose:docker-compose" ;;
    bench) printf '%s\n' "wrk:wrk" "nginx:nginx-light" ;;
    *) echo "ensure-tools: unknown group '$1' (test, bench)" >&2; return 2 ;;
  esac
}

if [ "${1:-}" = --list ]; then
  [ $# -eq 2 ] || { echo "usage: $0 --list GROUP" >&2; exit 2; }
  group_tools "$2"; exit
fi
[ $# -ge 1 ] || { echo "usage: $0 GROUP... (test, bench) | --list GROUP" >&2; exit 2; }

missing=()
for group in "$@"; do
  pairs=$(group_tools "$group") || exit 2
  for pair in $pairs; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ -r /etc/debian_version ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # nginx-light's postinst may start a system nginx; the benchmark runs its own.
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v service >/dev/null 2>&1; then
    service nginx stop >/dev/null 2>&1 || true
  fi
else
  echo "setup: optional tools missing (${missing[*]}); the steps that need them will skip" >&2
fi
exit 0
