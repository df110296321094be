"""`make bench`: every benchmark in one run; a results table, and bench/results/latest.json.

    python -m bench [--quick] [part ...]     (through make: make bench ARGS="--quick quality")
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from bench.decision import run_decision
from bench.memory import run_memory
from bench.power import PowerPlan, run_power
from bench.quality import Plan, run_quality
from bench.realstack import run_realstack
from bench.refresh import run_refresh
from bench.tables import table
from bench.throughput import run_throughput

RESULTS = Path(__file__).resolve().parent / "results"
# The quality charts docs/benchmarks.md embeds; a --quick run draws its own beside the results.
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def quality(quick: bool) -> list[dict[str, object]]:
    plan = Plan(horizon_s=900.0, short_horizon_s=450.0) if quick else Plan()
    return run_quality(plan, charts_dir=RESULTS / "images" if quick else IMAGES)


def power(quick: bool) -> list[dict[str, object]]:
    plan = PowerPlan(capacity_pcts=(20, 50, 100), seeds=(1,)) if quick else PowerPlan()
    return run_power(plan, charts_dir=RESULTS / "images" if quick else IMAGES)


PARTS: dict[str, Callable[[bool], list[dict[str, object]]]] = {
    "quality": quality,
    "decision": run_decision,
    "refresh": run_refresh,
    "throughput": run_throughput,
    "memory": run_memory,
    "realstack": run_realstack,
    "power": power,
}


# What each part measures, and how long it takes in seconds (a full run, a --quick run) on the
# 2-core machine of docs/benchmarks.md: quality and realstack as measured there (25 minutes in
# all), decision as measured; refresh, throughput and memory from their own run lengths (Prometheus
# and stack starts, 10 s per wrk cell, 100,000 sessions at several hundred per second).
PART_INFO: dict[str, tuple[str, float, float]] = {
    "quality": ("balance quality against an oracle under stale data, simulated; draws the "
                "charts", 480, 120),
    "decision": ("the cost of one routing decision at 10, 100 and 1,000 substations", 10, 3),
    "refresh": ("the policy refresh cost against a real Prometheus; queries per second",
                90, 60),
    "throughput": ("requests per second and latency through the stack with wrk, against a "
                   "direct call and nginx", 180, 60),
    "memory": ("each service's memory after 100,000 sessions (--quick: 10,000)", 150, 30),
    "realstack": ("balance on the real stack at a 1 s and a 15 s scrape", 600, 240),
    "power": ("sharing power (floors + least-laxity) against fixed kW, FCFS, EDF, LLF, round "
              "robin and offline LP optima; draws the charts", 260, 40),
}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{round(seconds / 30) / 2:g} min"


def parts_help() -> str:
    """The parts, what each measures and how long it takes: the --help epilog."""
    width = max(map(len, PART_INFO))
    lines = ["parts (all by default), and how long each takes on 2 cores:"]
    for name, (what, full, quick) in PART_INFO.items():
        lines.append(f"  {name:<{width}}  about {_duration(full)} (--quick: {_duration(quick)})")
        lines += [f"  {'':<{width}}    {line}" for line in textwrap.wrap(what, 72)]
    total = sum(full for _, full, _ in PART_INFO.values())
    quick_total = sum(quick for _, _, quick in PART_INFO.values())
    lines.append(f"  {'all':<{width}}  about {_duration(total)} (--quick: "
                 f"{_duration(quick_total)})")
    return "\n".join(lines)


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__,
                                     epilog=parts_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help=f"any of: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    args = parser.parse_args(argv)
    if unknown := [p for p in args.parts if p not in PARTS]:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    results: dict[str, object] = {"machine": machine(), "quick": args.quick}
    for part in args.parts or list(PARTS):
        started = time.monotonic()
        print(f"\n## {part}", flush=True)
        rows = PARTS[part](args.quick)
        results[part] = rows
        print(table(rows))
        print(f"({time.monotonic() - started:.0f} s)", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
