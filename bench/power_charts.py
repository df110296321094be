"""The power-sharing charts (PNG, matplotlib's Agg backend) that docs/benchmarks.md embeds.

From bench/power.py's rows, one PNG per workload (power-<workload>.png): a row per grid size
(1 and 10 substations), against the capacity as a share of the uncontrolled peak: the share of
the requested energy delivered by departure, the share of sessions fully served, and how often a
session's power changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")   # before pyplot: no display needed
import matplotlib.pyplot as plt

Row = dict[str, object]

STYLE: dict[str, dict[str, Any]] = {
    "today": {"color": "#9e9e9e", "marker": "x", "label": "today (fixed kW or refused)"},
    "fcfs": {"color": "#a1887f", "marker": "^", "label": "FCFS"},
    "edf": {"color": "#80cbc4", "marker": "s", "label": "EDF"},
    "llf": {"color": "#1f77b4", "marker": "o", "label": "LLF"},
    "round-robin": {"color": "#b39ddb", "marker": "P", "label": "round robin (water-filling)"},
    "ours": {"color": "#d62728", "marker": "*", "markersize": 10, "linewidth": 2.5,
             "label": "ours: admission by floors"},
    "ours-queue": {"color": "#ff9800", "marker": "D",
                   "label": "ours, best effort until its floor fits (no refusal)"},
    "ours-no-promise": {"color": "#8c564b", "marker": "v",
                        "label": "ours, floors as minimum power only (no promise)"},
    "optimum": {"color": "black", "marker": "", "linestyle": "--", "linewidth": 2,
                "label": "offline optimum (LP, split routing)"},
    "optimum-routed": {"color": "black", "marker": "", "linestyle": ":", "linewidth": 1.5,
                       "label": "offline optimum with ours's routing"},
    "optimum-promised": {"color": "#d62728", "marker": "", "linestyle": ":", "linewidth": 1.5,
                         "label": "offline optimum keeping ours's admissions and floors"},
}
PANELS = (("energy_pct", "energy delivered by departure (%)"),
          ("served_pct", "sessions fully served (%)"),
          ("changes_per_session", "power changes per session"))
TITLES = {"acn": "ACN-shaped workplace day (5-min slots), floors at the grid's minimum 1.4 kW",
          "acn-fill": "ACN-shaped workplace day, each floor the power that fills the car by "
                      "departure",
          "today": "today's trace, drivers staying 1-3x their charging time (1-min slots), "
                   "floors at the grid's minimum 1.4 kW",
          "today-fill": "today's trace, each floor the power that fills the car by departure"}


def write_power_charts(rows: list[Row], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for workload in dict.fromkeys(str(r["workload"]) for r in rows):
        mine = [r for r in rows if r["workload"] == workload and r["strategy"] != "target"]
        sizes = sorted({int(r["substations"]) for r in mine})   # type: ignore[call-overload]
        fig, grid = plt.subplots(len(sizes), len(PANELS), figsize=(17, 4.6 * len(sizes)),
                                 squeeze=False)
        for axes, n in zip(grid, sizes, strict=True):
            for strategy, style in STYLE.items():
                line = sorted((r for r in mine if r["strategy"] == strategy
                               and r["substations"] == n),
                              key=lambda r: int(r["capacity_pct"]))   # type: ignore[call-overload]
                for ax, (key, _) in zip(axes, PANELS, strict=True):
                    points = [(int(r["capacity_pct"]), float(r[key]))   # type: ignore[call-overload, arg-type]
                              for r in line if r[key] != ""]
                    if points:
                        ax.plot(*zip(*points, strict=True), **style)
            for ax, (_, label) in zip(axes, PANELS, strict=True):
                ax.set_xlabel("capacity (% of the uncontrolled peak)")
                ax.set_ylabel(label)
                ax.set_title(f"{n} substation{'s' if n > 1 else ''}: {label}", fontsize=10)
                ax.grid(True, alpha=0.3)
        legend: dict[str, Any] = {}   # every strategy drawn in any row, once
        for axes in grid:
            handles, labels = axes[0].get_legend_handles_labels()
            legend.update((label, h) for h, label in zip(handles, labels, strict=True)
                          if label not in legend)
        grid[0][-1].legend(list(legend.values()), list(legend), fontsize=8, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0))
        fig.suptitle(f"Sharing power: {TITLES.get(workload, workload)}", fontsize=12)
        fig.tight_layout()
        path = out / f"power-{workload}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
