#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, postgres) are here: the store shared by ingress
# replicas (grid.yaml `ingress_store: postgresql`) and `make test`'s store contract suite. On
# Debian/Ubuntu as root, install Debian's package; elsewhere say what to install. The project
# runs its own servers (gridlb/postgres.py), so the package's own cluster is stopped.
set -euo pipefail
. "$(dirname "$0")/lib/debian.sh"
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
   || { command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; }; then
  exit 0
fi
if can_apt_install; then
  echo "setup: installing Debian's postgresql package (initdb, postgres)"
  apt_install postgresql postgresql
  exit 0
fi
cat >&2 <<'MSG'
setup: PostgreSQL's server (initdb and postgres, version >= 13) is needed and was not found.
  Debian/Ubuntu: sudo apt-get install --no-install-recommends postgresql
  Fedora:        sudo dnf install postgresql-server
  macOS:         brew install postgresql
MSG
exit 1
