"""`python -m balancer`: run the balancer service."""

from __future__ import annotations

import argparse
import json
import os
import sys

from balancer.app import create_app
from balancer.config import BalancerConfig
from balancer.promaccess import PrometheusAccess, headers_from, validate
from gridlb.charge import DEFAULT_MIN_KW, ChargeLimits
from gridlb.cli import INTERNAL_TOKEN, add_common_args, check_auth
from gridlb.grid import GRID_NAME_RE, ConfigError
from gridlb.http import run_service
from gridlb.logs import setup_logging


def parse_args(argv: list[str] | None = None) -> BalancerConfig:
    parser = argparse.ArgumentParser(prog="python -m balancer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--prometheus-url", default="http://127.0.0.1:9090")
    parser.add_argument("--prometheus-public-url", default=None,
                        help="Prometheus as a browser reaches it (for /policy's graph link)")
    parser.add_argument("--policy-dir", default="policies")
    parser.add_argument("--policy", default=BalancerConfig.policy,
                        help="the policy served while the active-policy file holds no choice "
                             f"(default: {BalancerConfig.policy})")
    parser.add_argument("--active-policy-file", default=None,
                        help="a file every replica watches: POST /-/reload {\"policy\": ...} "
                             "writes the fleet's choice there and every replica serves it, "
                             "also after a restart (without it a reload switches one replica)")
    parser.add_argument("--substation-job", default="substation")
    parser.add_argument("--grid", default="",
                        help="this grid's name: the `grid` label Prometheus puts on its series "
                             "(several grids on one Prometheus); default: series without it")
    parser.add_argument("--max-snapshot-age", type=float, default=15.0,
                        help="seconds the newest scrape may be old before deciding in degraded "
                             "mode (keep it well above the scrape interval)")
    parser.add_argument("--query-timeout", type=float, default=2.0)
    parser.add_argument("--forward-timeout", type=float, default=3.0)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--min-kw", type=float, default=DEFAULT_MIN_KW,
                        help="the smallest charging power accepted (set it like the ingress's "
                             "and the substations')")
    parser.add_argument("--extra-query-params", default="{}",
                        help='JSON object added to every Prometheus query, e.g. '
                             '\'{"dedup": "true"}\' for Thanos')
    access = parser.add_argument_group(
        "Prometheus behind auth", "secrets are read from files (again when a file changes)")
    access.add_argument("--prometheus-bearer-token-file", default=None,
                        help="send 'Authorization: Bearer <file content>' (e.g. a service "
                             "account token)")
    access.add_argument("--prometheus-basic-auth-user", default=None)
    access.add_argument("--prometheus-basic-auth-password-file", default=None)
    access.add_argument("--prometheus-ca-file", default=None,
                        help="verify Prometheus's TLS certificate against this CA (PEM)")
    access.add_argument("--prometheus-cert-file", default=None,
                        help="client certificate for mutual TLS (PEM), with --prometheus-key-file")
    access.add_argument("--prometheus-key-file", default=None)
    access.add_argument("--prometheus-header", action="append", default=[],
                        metavar="'NAME: VALUE'",
                        help="an extra header on every query, e.g. 'X-Scope-OrgID: grid-a' "
                             "(repeatable)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    headers = headers_from(args.prometheus_header)
    if isinstance(headers, list):
        parser.error("; ".join(headers))
    prometheus_access = PrometheusAccess(
        bearer_token_file=args.prometheus_bearer_token_file,
        basic_auth_user=args.prometheus_basic_auth_user,
        basic_auth_password_file=args.prometheus_basic_auth_password_file,
        ca_file=args.prometheus_ca_file, cert_file=args.prometheus_cert_file,
        key_file=args.prometheus_key_file, headers=headers)
    problems = validate(prometheus_access)
    if problems:
        parser.error("; ".join(problems))
    try:
        extra = json.loads(args.extra_query_params)
    except json.JSONDecodeError as exc:
        parser.error(f"--extra-query-params: not JSON: {exc}")
    if not isinstance(extra, dict):
        parser.error("--extra-query-params: must be a JSON object")
    if not args.min_kw > 0:
        parser.error("--min-kw must be above 0")
    if args.grid and not GRID_NAME_RE.fullmatch(args.grid):
        parser.error("--grid: must be 1-63 lowercase letters, digits, '_', '.', '-'")
    token = os.environ.get("GRID_INTERNAL_TOKEN") or None
    check_auth(parser, "balancer", token is not None, args.insecure_no_auth, INTERNAL_TOKEN)
    return BalancerConfig(
        prometheus_url=args.prometheus_url, prometheus_public_url=args.prometheus_public_url,
        policy_dir=args.policy_dir, policy=args.policy, host=args.host, port=args.port,
        active_policy_file=args.active_policy_file,
        substation_job=args.substation_job, grid=args.grid,
        max_snapshot_age_s=args.max_snapshot_age,
        query_timeout_s=args.query_timeout, forward_timeout_s=args.forward_timeout,
        max_attempts=args.max_attempts, extra_query_params=extra,
        limits=ChargeLimits(min_kw=args.min_kw), prometheus_access=prometheus_access,
        internal_token=token, log_format=args.log_format)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    setup_logging("balancer", config.log_format)
    try:
        app = create_app(config)
    except ConfigError as exc:
        sys.exit(f"balancer: refusing to start: {exc}")
    run_service(app, config.host, config.port)


if __name__ == "__main__":
    main()
