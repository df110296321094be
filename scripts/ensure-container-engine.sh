#!/usr/bin/env bash
# A container engine speaking the Docker API, for the Compose end-to-end test (tests/e2e/).
#
#   ensure-container-engine.sh install           make sure one can be had (idempotent; used by `make test`)
#   ensure-container-engine.sh start DIR PROJECT  print DOCKER_HOST=... and ENGINE=docker|podman
#   ensure-container-engine.sh stop DIR          stop what `start` started, by PID
#
# A real Docker engine is used when one answers (DOCKER_HOST, else /var/run/docker.sock). Otherwise,
# as root on Debian, Debian's podman is installed and configured the way it works on machines
# without systemd and with hybrid cgroups (runc, cgroupfs, file event log, ulimits within the
# hard limits, the CNI dnsname plugin so containers resolve each other by service name), and
# `start` runs `podman system service` on a socket in DIR for this test run only. Without systemd
# nothing runs podman's healthchecks (podman schedules them as systemd timers), so `start` also
# runs them every 2 s for the containers of Compose project PROJECT, as the timers would.
#
# Exit status 3 means "no engine can be had here" and stderr says what is missing: the tests skip
# with that message. Any other failure is an error.
set -euo pipefail

readonly UNAVAILABLE=3
readonly CONF_DIR=/etc/containers/containers.conf.d
readonly CONF_FILE=$CONF_DIR/50-smart-grid-lb.conf
readonly HEALTHCHECK_PERIOD_S=2
readonly MAX_SERVICE_S=7200   # the healthcheck ticker gives up after this, whatever happens

say() { echo "container-engine: $*" >&2; }
unavailable() { say "$*"; exit "$UNAVAILABLE"; }

# Does a Docker engine answer at $1 (a DOCKER_HOST value)?
docker_answers() {
  local host=$1
  case $host in
    unix://*) [ -S "${host#unix://}" ] && command -v curl >/dev/null 2>&1 \
                && curl -sf --max-time 3 --unix-socket "${host#unix://}" http://d/_ping >/dev/null ;;
    tcp://*)  command -v curl >/dev/null 2>&1 \
                && curl -sf --max-time 3 "http://${host#tcp://}/_ping" >/dev/null ;;
    *) return 1 ;;
  esac
}

real_docker_host() {
  local host
  for host in ${DOCKER_HOST:+"$DOCKER_HOST"} unix:///var/run/docker.sock; do
    if docker_answers "$host"; then echo "$host"; return 0; fi
  done
  return 1
}

can_install() {
  [ -r /etc/debian_version ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local opts=(-y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends)
  apt-get install "${opts[@]}" "$@" >/dev/null 2>&1 \
    || { apt-get update -qq -o DPkg::Lock::Timeout=300 && apt-get install "${opts[@]}" "$@" >/dev/null; }
}

# What containers.conf must say here; written only when it differs, so reruns touch nothing.
write_podman_config() {
  # A container cannot get more than podman's conmon has, and without CAP_SYS_RESOURCE (as in
  # a sandbox) nothing can raise a hard limit: our hard limits, and for nproc also
  # kernel.pid_max, which is what conmon ends up with here (measured: 32768, not `ulimit -Hu`).
  local nofile nproc pid_max wanted
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] && nproc=1048576
  [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
  wanted=$(cat <<EOF
# Written by smart-grid-load-balancer's scripts/ensure-container-engine.sh: what podman needs on a
# machine without systemd and with hybrid cgroups (crun fails there; runc works).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
# How long an exec session's conmon waits for the API to collect its exit code (default 300 s):
# long enough for the API, short enough that no conmon outlives the test run by minutes.
exit_command_delay = 15

[network]
network_backend = "cni"
EOF
)
  if [ ! -f "$CONF_FILE" ] || [ "$(cat "$CONF_FILE")" != "$wanted" ]; then
    mkdir -p "$CONF_DIR"
    printf '%s\n' "$wanted" > "$CONF_FILE"
    say "wrote $CONF_FILE"
  fi
}

install() {
  if real_docker_host >/dev/null; then return 0; fi
  local missing=()
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  [ -x /usr/lib/cni/dnsname ] || missing+=(golang-github-containernetworking-plugin-dnsname)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)   # base images, no registry
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v catatonit >/dev/null 2>&1 || missing+=(catatonit)   # podman kube play's pause image
  if [ ${#missing[@]} -gt 0 ]; then
    can_install || unavailable "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}," \
      "/var/run/docker.sock) and podman cannot be installed here (needs root on Debian/Ubuntu);" \
      "missing: ${missing[*]}"
    say "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  [ "$(id -u)" = 0 ] || unavailable "podman is installed but the e2e test needs root (rootful podman)"
  write_podman_config
}

# Run every healthcheck of PROJECT's containers each HEALTHCHECK_PERIOD_S, while the service lives.
healthcheck_ticker() {
  local service_pid=$1 project=$2 deadline=$((SECONDS + MAX_SERVICE_S)) id
  while kill -0 "$service_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    for id in $(podman ps -q --filter "label=com.docker.compose.project=$project" 2>/dev/null); do
      podman healthcheck run "$id" >/dev/null 2>&1 || true   # unhealthy is recorded by podman
    done
    sleep "$HEALTHCHECK_PERIOD_S"
  done
}

start() {
  local dir=$1 project=$2 host sock i
  mkdir -p "$dir"
  if host=$(real_docker_host); then
    echo "DOCKER_HOST=$host"; echo "ENGINE=docker"; return 0
  fi
  install
  sock=$dir/podman.sock
  rm -f "$sock"
  podman system service --time=0 "unix://$sock" >"$dir/podman-service.log" 2>&1 &
  echo $! >"$dir/podman-service.pid"
  for i in $(seq 1 100); do   # up to 10 s
    if docker_answers "unix://$sock"; then break; fi
    kill -0 "$(cat "$dir/podman-service.pid")" 2>/dev/null \
      || { cat "$dir/podman-service.log" >&2; say "podman system service exited"; exit 1; }
    sleep 0.1
  done
  docker_answers "unix://$sock" || { say "podman system service did not answer on $sock in 10 s"; exit 1; }
  if [ ! -S /run/systemd/private ]; then
    healthcheck_ticker "$(cat "$dir/podman-service.pid")" "$project" >/dev/null 2>&1 &
    echo $! >"$dir/healthcheck-ticker.pid"
  fi
  echo "DOCKER_HOST=unix://$sock"; echo "ENGINE=podman"
}

stop() {
  local dir=$1 name pid i
  for name in healthcheck-ticker podman-service; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    if kill "$pid" 2>/dev/null; then
      for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
  done
  rm -f "$dir/podman.sock"
}

case ${1:-} in
  install) install ;;
  start) [ $# -eq 3 ] || { say "usage: $0 start DIR PROJECT"; exit 2; }; start "$2" "$3" ;;
  stop) [ $# -eq 2 ] || { say "usage: $0 stop DIR"; exit 2; }; stop "$2" ;;
  *) say "usage: $0 install | start DIR PROJECT | stop DIR"; exit 2 ;;
esac
