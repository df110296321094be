"""`python -m substation`: run one simulated substation."""

from __future__ import annotations

import argparse
import os

from gridlb.charge import DEFAULT_MIN_KW, ChargeLimits
from gridlb.cli import INTERNAL_TOKEN, add_common_args, check_auth
from gridlb.durable import Durability
from gridlb.http import run_service
from gridlb.logs import setup_logging
from substation.app import create_app
from substation.config import SubstationConfig


def parse_args(argv: list[str] | None = None) -> SubstationConfig:
    parser = argparse.ArgumentParser(prog="python -m substation", description=__doc__)
    parser.add_argument("--id", required=True, help="the substation's id (its metrics label)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--capacity-kw", type=float, required=True)
    parser.add_argument("--speed-factor", type=float, default=60.0,
                        help="simulated seconds per real second (60: an hour per minute)")
    parser.add_argument("--state-path", default=None,
                        help="SQLite file keeping sessions across restarts")
    parser.add_argument("--durability", choices=[d.value for d in Durability],
                        default=Durability.FULL.value,
                        help="full: a confirmed session survives a power loss (fsync per "
                             "commit group); process: only a crash of the process")
    parser.add_argument("--max-sessions", type=int, default=10_000,
                        help="sessions charging at once, at most")
    parser.add_argument("--min-kw", type=float, default=DEFAULT_MIN_KW,
                        help="the smallest charging power accepted")
    parser.add_argument("--tick-interval", type=float, default=0.2,
                        help="seconds between two steps of the simulation (energy is credited "
                             "and completed sessions end at each step)")
    parser.add_argument("--ended-retention", type=float, default=600.0,
                        help="seconds an ended session stays readable (then it is forgotten, "
                             "here and in the state file)")
    parser.add_argument("--history", action="store_true",
                        help="append every admission, stop and completion to a history table "
                             "in the state file, in the same transaction (for the nemesis's "
                             "checker; never pruned)")
    parser.add_argument("--fault-file", default=None,
                        help="TEST ONLY: a file holding a delay in ms that every commit waits "
                             "first (a slow disk, changed while running)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.capacity_kw <= 0 or args.speed_factor <= 0 or not args.tick_interval > 0 \
            or not args.ended_retention > 0:
        parser.error("--capacity-kw, --speed-factor, --tick-interval and --ended-retention "
                     "must be positive")
    if args.max_sessions < 1 or not args.min_kw > 0:
        parser.error("--max-sessions must be at least 1 and --min-kw above 0")
    token = os.environ.get("GRID_INTERNAL_TOKEN") or None
    check_auth(parser, "substation", token is not None, args.insecure_no_auth, INTERNAL_TOKEN)
    return SubstationConfig(substation_id=args.id, capacity_kw=args.capacity_kw,
                            host=args.host, port=args.port, speed_factor=args.speed_factor,
                            state_path=args.state_path, durability=Durability(args.durability),
                            max_sessions=args.max_sessions, retention_s=args.ended_retention,
                            limits=ChargeLimits(min_kw=args.min_kw),
                            tick_interval_s=args.tick_interval, history=args.history,
                            fault_file=args.fault_file,
                            internal_token=token, log_format=args.log_format)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    setup_logging("substation", config.log_format)
    run_service(create_app(config), config.host, config.port)


if __name__ == "__main__":
    main()
