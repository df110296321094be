#!/usr/bin/env python3
"""The image's default command: it runs one of three services, so say which and how.

`docker run IMAGE` alone starts nothing that listens: each service needs its peers' addresses
and its secrets, which docker-compose.yml gives it. Exits 64 (EX_USAGE) after printing this."""

import sys

USAGE = """\
smart-grid-load-balancer: one image for three services; name one as the command.

  substation-entrypoint --host=0.0.0.0 --port=9100 --capacity-kw=500
      a substation (claims a numbered slot in /data; GRID_INTERNAL_TOKEN)
  python -m balancer --host=0.0.0.0 --port=8081 --prometheus-url=http://prometheus:9090 \\
      --policy-dir=/policies
      the balancer (GRID_INTERNAL_TOKEN)
  python -m ingress --host=0.0.0.0 --port=8080 --balancer-url=http://balancer:8081 \\
      --store-path=/data/ingress.sqlite3
      the public API (GRID_API_KEYS, GRID_INTERNAL_TOKEN)

Each takes --help. docker-compose.yml runs all three with Prometheus and Grafana:
  scripts/compose-env.sh && docker compose up
"""

if __name__ == "__main__":
    sys.stderr.write(USAGE)
    sys.exit(64)
