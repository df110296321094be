#!/usr/bin/env python3
"""Container healthcheck: `http-ok URL` exits 0 when URL answers 2xx within 2 s, else 1 saying why.

A script rather than `python -c "..."` in docker-compose.yml: podman's Docker API splits a
healthcheck's arguments on spaces, which breaks any inline program.
"""

import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=2):
        pass
except Exception as exc:   # any failure is "unhealthy"; the reason goes to the health log
    sys.exit(f"{sys.argv[1]}: {exc}")
