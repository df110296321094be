"""`python -m ingress`: run the public API."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gridlb.http import run_service
from ingress.app import IngressConfig, create_app


def api_keys(keys_file: str | None) -> tuple[str, ...]:
    keys = [k.strip() for k in os.environ.get("GRID_API_KEYS", "").split(",")]
    if keys_file:
        keys += [line.strip() for line in Path(keys_file).read_text().splitlines()]
    return tuple(k for k in keys if k and not k.startswith("#"))


def parse_args(argv: list[str] | None = None) -> IngressConfig:
    parser = argparse.ArgumentParser(prog="python -m ingress", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--balancer-url", default="http://127.0.0.1:8081")
    parser.add_argument("--store-path", default=".run/ingress.sqlite3")
    parser.add_argument("--api-keys-file", default=None,
                        help="one API key per line (also GRID_API_KEYS, comma-separated)")
    args = parser.parse_args(argv)
    return IngressConfig(balancer_url=args.balancer_url.rstrip("/"), host=args.host,
                         port=args.port, api_keys=api_keys(args.api_keys_file),
                         internal_token=os.environ.get("GRID_INTERNAL_TOKEN") or None,
                         store_path=args.store_path)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    run_service(create_app(config), config.host, config.port)


if __name__ == "__main__":
    main()
