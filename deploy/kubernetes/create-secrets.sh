#!/usr/bin/env bash
# Create the Secrets the grid's pods read, with fresh random values, in namespace NAMESPACE
# (default smart-grid). No manifest carries a secret: the pods wait (CreateContainerConfigError)
# until these exist.
#
#   create-secrets.sh self-contained              for overlays/self-contained (PostgreSQL in the namespace)
#   GRID_STORE_URL=postgresql://USER:PASSWORD@HOST:5432/DB create-secrets.sh production
#                                                 for overlays/production and production-hpa
#   create-secrets.sh --dry-run KIND              print them (YAML) instead; needs no cluster
#
#   smart-grid-secrets   GRID_INTERNAL_TOKEN   what the ingress, balancers and substations use among themselves
#                        GRID_API_KEYS         the clients' keys for the public API (comma-separated; add your own)
#   smart-grid-store     GRID_STORE_URL        the ingress's PostgreSQL (self-contained: the in-namespace one)
#   smart-grid-postgres  POSTGRES_PASSWORD     self-contained only: the in-namespace PostgreSQL's password
#
# A Secret that exists already is left alone (clients keep their keys across runs); to rotate
# one, delete it, run this again and restart the pods that read it (`kubectl rollout restart`).
# Values travel through a file only you can read, never the command line.
set -euo pipefail
namespace=${NAMESPACE:-smart-grid}
dry_run=false
if [ "${1:-}" = --dry-run ]; then dry_run=true; shift; fi
kind=${1:-}
case $kind in
  self-contained | production) ;;
  *) echo "usage: $0 [--dry-run] self-contained|production" >&2; exit 2 ;;
esac
if [ "$kind" = production ] && [ -z "${GRID_STORE_URL:-}" ]; then
  echo "create-secrets: set GRID_STORE_URL to your PostgreSQL's URL (postgresql://USER:PASSWORD@HOST:5432/DB)" >&2
  exit 2
fi

# URL-safe, so that a password fits in a URL as it is.
random_secret() { head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
umask 077

# create NAME KEY=VALUE...: one Secret from an env file.
create() {
  local name=$1; shift
  printf '%s\n' "$@" > "$workdir/$name.env"
  if $dry_run; then
    echo ---
    kubectl create secret generic "$name" --namespace "$namespace" \
      --from-env-file "$workdir/$name.env" --dry-run=client -o yaml
  elif kubectl get secret "$name" --namespace "$namespace" >/dev/null 2>&1; then
    echo "create-secrets: $namespace/$name exists; left as it is" >&2
  else
    kubectl create secret generic "$name" --namespace "$namespace" \
      --from-env-file "$workdir/$name.env" >/dev/null
    echo "create-secrets: created $namespace/$name" >&2
  fi
}

if ! $dry_run && ! kubectl get namespace "$namespace" >/dev/null 2>&1; then
  echo "create-secrets: namespace $namespace does not exist yet; creating it" >&2
  kubectl create namespace "$namespace" >/dev/null
fi
create smart-grid-secrets "GRID_INTERNAL_TOKEN=$(random_secret)" "GRID_API_KEYS=$(random_secret)"
if [ "$kind" = self-contained ]; then
  password=$(random_secret)
  create smart-grid-postgres "POSTGRES_PASSWORD=$password"
  create smart-grid-store "GRID_STORE_URL=postgresql://grid:$password@postgres:5432/grid"
else
  create smart-grid-store "GRID_STORE_URL=$GRID_STORE_URL"
fi
