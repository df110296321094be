"""`make bench`: every benchmark in one run; a results table, and bench/results/latest.json.

    python -m bench [--quick] [part ...]

parts: quality decision refresh throughput memory realstack power
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.decision import run_decision
from bench.memory import run_memory
from bench.power import PowerPlan, run_power
from bench.quality import Plan, run_quality
from bench.realstack import run_realstack
from bench.refresh import run_refresh
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


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def table(rows: list[dict[str, object]]) -> str:
    """Markdown tables: one per shape of row (e.g. results and targets), in order of first."""
    if not rows:
        return "(no rows)"
    shapes = list(dict.fromkeys(frozenset(row) for row in rows))
    if len(shapes) > 1:
        return "\n\n".join(table([r for r in rows if frozenset(r) == shape])
                           for shape in shapes)
    keys = list(rows[0])

    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
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
