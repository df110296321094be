"""`python -m gridlb.peek [URL]`: print a service's JSON view, for operators (docs/runbook.md).

In Compose the balancer and the substations publish no port, and their images have no curl:
`docker compose exec balancer python -m gridlb.peek` prints the balancer's `/policy` from inside
its container. The internal token is sent when GRID_INTERNAL_TOKEN is set (it is, inside the
containers), so the token-protected views of a substation work the same way. Only the standard
library: it runs wherever the package is installed.

Exit status: 0 for a 2xx answer, 1 for any other answer (its body is still printed: the JSON
error says why), 2 when nothing answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

DEFAULT_URL = "http://127.0.0.1:8081/policy"
TIMEOUT_S = 5.0


def fetch(url: str, token: str | None, timeout_s: float = TIMEOUT_S) -> tuple[int, bytes]:
    """(status, body) of GET url; raises OSError (URLError included) when nothing answers."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:   # an answer, just not a 2xx one
        return int(exc.code), bytes(exc.read())


def render(body: bytes) -> str:
    """Indented JSON when the body is JSON, else the body as text."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridlb.peek",
                                     description="Print a service's JSON view.")
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help=f"what to GET (default: {DEFAULT_URL}, the balancer's policy view)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds to wait")
    args = parser.parse_args(argv)
    try:
        status, body = fetch(args.url, os.environ.get("GRID_INTERNAL_TOKEN"), args.timeout)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        print(f"peek: {args.url}: no answer ({reason})", file=sys.stderr)
        return 2
    print(render(body))
    if not 200 <= status < 300:
        print(f"peek: {args.url} answered HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
