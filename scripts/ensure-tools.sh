#!/usr/bin/env bash
# System tools that only some make targets need, by group; `make up` needs none of them.
#   ensure-tools.sh test     docker-compose (`make test`: compose validation, the e2e run)
#   ensure-tools.sh bench    wrk and nginx (`make bench`: throughput against a direct call and nginx)
#   ensure-tools.sh --list GROUP   print the group's "command:package" pairs, install nothing
# Installed on Debian/Ubuntu as root; elsewhere the steps that need them say so and skip.
set -uo pipefail
. "$(dirname "$0")/lib/debian.sh"

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
if can_apt_install; then
  echo "setup: installing ${missing[*]}"
  # nginx-light's postinst may start a system nginx; the benchmark runs its own.
  service=""
  [[ " ${missing[*]} " == *" nginx-light "* ]] && service=nginx
  apt_install "$service" "${missing[@]}"
else
  echo "setup: optional tools missing (${missing[*]}); the steps that need them will skip" >&2
fi
exit 0
