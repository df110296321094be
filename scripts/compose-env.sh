#!/usr/bin/env bash
# Write the Compose stack's secrets into an env file (default: .env beside docker-compose.yml),
# fresh and random, readable by you only. docker-compose.yml has no default secrets and refuses
# to start without them. An existing file is left alone: variables it lacks are appended, the
# ones it has are kept (so clients keep working across `docker compose up`s).
#   GRID_API_KEYS        the clients' keys for the public API (comma-separated; add your own)
#   GRID_INTERNAL_TOKEN  what the ingress, balancer and substations use between themselves
#   GRAFANA_ADMIN_PASSWORD  Grafana's `admin` user (viewers need none: anonymous read-only)
#   GRID_POSTGRES_PASSWORD  the ingress replicas' PostgreSQL (docker-compose.postgres.yml)
set -euo pipefail
env_file=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.env"}
umask 077
touch "$env_file"
chmod 600 "$env_file"   # it holds secrets, whoever created it
# A last line without a newline would run into the first line appended.
if [ -s "$env_file" ] && [ -n "$(tail -c1 "$env_file")" ]; then echo >> "$env_file"; fi
random_secret() { head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }
for name in GRID_API_KEYS GRID_INTERNAL_TOKEN GRAFANA_ADMIN_PASSWORD GRID_POSTGRES_PASSWORD; do
  if ! grep -q "^$name=." "$env_file"; then
    echo "$name=$(random_secret)" >> "$env_file"
    echo "compose-env: wrote a new $name into $env_file" >&2
  fi
done
