# Sourced by scripts/ensure-*.sh: installing Debian's packages on a Debian/Ubuntu machine as root.
# The project runs its own servers on its own ports, so a system service a package starts
# (Prometheus on :9090, PostgreSQL on :5432, ...) is stopped and disabled again.

# True on a Debian/Ubuntu machine where we may install packages.
can_apt_install() {
  [ -r /etc/debian_version ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

# apt_install SERVICE PACKAGE...: install the packages (quietly, without recommends, waiting up
# to 5 minutes for another apt to finish), then stop SERVICE if the packages started it ("" for
# none). Returns non-zero when apt-get fails.
apt_install() {
  local service=$1
  shift
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=300 || return 1
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "$@" >/dev/null \
    || return 1
  if [ -n "$service" ]; then
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then service "$service" stop >/dev/null 2>&1 || true; fi
  fi
  return 0
}
