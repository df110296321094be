"""`make loadtest`: the rush hour against the running stack (`make up`), then a summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from gridlb.grid import ConfigError, load_grid
from gridlb.promconfig import REPO_ROOT
from loadtest.promcheck import loads_after
from loadtest.report import render, summary
from loadtest.rush import ingress_reachable, run_rush_hour

EXIT_STATUS = """\
exit status: 0 every request got a definite answer and Prometheus agrees; 1 some did not (or no
ingress answered); 2 a bad argument or grid file; 3 Prometheus's substation_load does not confirm
the kW placed on each substation, or Prometheus could not be asked (the reasons are printed)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make loadtest", description=__doc__,
                                     epilog=EXIT_STATUS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--kw", type=float, default=11.0, help="power of every request")
    parser.add_argument("--kw-mix", default=None,
                        help="comma-separated powers to draw from, e.g. 3.7,7.4,11,22")
    parser.add_argument("--kwh", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="stop after this long")
    parser.add_argument("--ingress-url", default=None)
    parser.add_argument("--prometheus-url", default=None)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.duration <= 0:
        parser.error("--requests, --concurrency and --duration must be positive")
    try:
        args.kw_choices = tuple(float(k) for k in args.kw_mix.split(",")) if args.kw_mix \
            else (args.kw,)
    except ValueError:
        parser.error(f"--kw-mix: not a list of numbers: {args.kw_mix!r}")
    return args


def api_key() -> str | None:
    if key := os.environ.get("GRID_API_KEY"):
        return key
    dev_key = REPO_ROOT / ".run" / "dev-api-key"   # written by `make up`
    return dev_key.read_text().strip() if dev_key.exists() else None


def progress_bar(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        grid = load_grid() if not (args.ingress_url and args.prometheus_url) else None
    except ConfigError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    ingress = args.ingress_url or (grid.ingress_url if grid else "")
    prometheus = args.prometheus_url or (grid.prometheus_url if grid else "")
    if not asyncio.run(ingress_reachable(ingress)):
        print(f"loadtest: no ingress at {ingress}: is `make up` running?", file=sys.stderr)
        return 1
    before = loads_after(prometheus, since=0.0, wait_s=0.0)
    show_progress = not args.json and not args.no_progress and \
        (args.requests > 200 or sys.stderr.isatty())
    result = asyncio.run(run_rush_hour(
        ingress, args.requests, args.concurrency, args.kw_choices, args.kwh, api_key(),
        args.duration, seed=args.seed, progress=progress_bar if show_progress else None))
    after = loads_after(prometheus, since=time.time())
    data = summary(result, before, after)
    print(json.dumps(data, indent=2) if args.json else render(data))
    if not result.definite:
        return 1
    if data["disagreements"]:
        print("loadtest: Prometheus does not confirm what the ingress answered: "
              + "; ".join(data["disagreements"]), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
