"""`python -m ingress`: run the public API."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gridlb.charge import DEFAULT_MIN_KW, ChargeLimits
from gridlb.cli import API_KEYS, add_common_args, check_auth
from gridlb.durable import Durability
from gridlb.http import run_service
from gridlb.logs import setup_logging
from ingress.app import create_app
from ingress.config import IngressConfig
from ingress.stores import POSTGRES_SCHEMES


def api_keys(keys_file: str | None) -> tuple[str, ...]:
    keys = [k.strip() for k in os.environ.get("GRID_API_KEYS", "").split(",")]
    if keys_file:
        keys += [line.strip() for line in Path(keys_file).read_text().splitlines()]
    return tuple(k for k in keys if k and not k.startswith("#"))


def parse_args(argv: list[str] | None = None) -> IngressConfig:
    parser = argparse.ArgumentParser(prog="python -m ingress", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--balancer-url", default="http://127.0.0.1:8081",
                        help="one or more balancer replicas, comma-separated")
    parser.add_argument("--store-path", default=".run/ingress.sqlite3",
                        help="the SQLite file of a single ingress (unless --store-url is given)")
    parser.add_argument("--store-url", default=os.environ.get("GRID_STORE_URL") or None,
                        help="postgresql://user:password@host:port/db: a store shared by every "
                             "ingress replica (also GRID_STORE_URL, which keeps the password "
                             "out of the process list)")
    parser.add_argument("--store-pool-size", type=int, default=32,
                        help="PostgreSQL connections this ingress opens at most")
    parser.add_argument("--api-keys-file", default=None,
                        help="one API key per line (also GRID_API_KEYS, comma-separated)")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="seconds a charge request may take in all")
    parser.add_argument("--durability", choices=[d.value for d in Durability],
                        default=Durability.FULL.value,
                        help="full: an answered outcome survives a power loss; process: only "
                             "a crash of the process")
    parser.add_argument("--min-kw", type=float, default=DEFAULT_MIN_KW,
                        help="the smallest charging power accepted")
    parser.add_argument("--max-keys", type=int, default=1_000_000,
                        help="settled idempotency records kept at most (unresolved ones are "
                             "always kept)")
    parser.add_argument("--prune-interval", type=float, default=3600.0,
                        help="seconds between prunings of expired or evicted records")
    parser.add_argument("--reconcile-interval", type=float, default=2.0,
                        help="seconds between rounds of resolving records whose outcome is "
                             "unknown (ingress/reconciler.py)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    urls = tuple(u.strip().rstrip("/") for u in args.balancer_url.split(",") if u.strip())
    if not urls:
        parser.error("--balancer-url: name at least one balancer")
    if args.store_url is not None and not args.store_url.startswith(POSTGRES_SCHEMES):
        parser.error("--store-url: must be a postgresql:// URL (without one, the SQLite file "
                     "at --store-path is used)")
    if args.store_pool_size < 1:
        parser.error("--store-pool-size: must be at least 1")
    if not args.request_timeout > 1.0 or not args.min_kw > 0 or args.max_keys < 0 or \
            not args.prune_interval > 0 or not args.reconcile_interval > 0:
        parser.error("--request-timeout must be above 1 s, --min-kw, --prune-interval and "
                     "--reconcile-interval above 0, --max-keys >= 0")
    keys = api_keys(args.api_keys_file)
    check_auth(parser, "ingress", bool(keys), args.insecure_no_auth, API_KEYS)
    return IngressConfig(balancer_urls=urls, host=args.host, port=args.port,
                         api_keys=keys, log_format=args.log_format,
                         internal_token=os.environ.get("GRID_INTERNAL_TOKEN") or None,
                         store_path=args.store_path, store_url=args.store_url,
                         store_pool_size=args.store_pool_size,
                         request_timeout_s=args.request_timeout,
                         durability=Durability(args.durability),
                         limits=ChargeLimits(min_kw=args.min_kw), max_keys=args.max_keys,
                         prune_interval_s=args.prune_interval,
                         reconcile_interval_s=args.reconcile_interval)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    setup_logging("ingress", config.log_format)
    run_service(create_app(config), config.host, config.port)


if __name__ == "__main__":
    main()
