"""The balance-quality charts (PNG, matplotlib's Agg backend) that docs/benchmarks.md embeds.

From bench/quality.py's rows: p99 utilization spread and requests refused against the scrape
interval, one line per strategy, one PNG per grid size:

    quality-<n>.png            today's workload, every strategy
    quality-workloads-<n>.png  the harder workloads, the focus strategies
    quality-replicas-<n>.png   1, 2 and 4 balancer replicas (today's and the short workload)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")   # before pyplot: no display needed
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

Row = dict[str, object]

# One fixed style per strategy, so a strategy looks the same in every chart.
STYLE: dict[str, dict[str, Any]] = {
    "seed": {"color": "#9e9e9e", "marker": "x", "label": "seed (no ledger)"},
    "random": {"color": "#bcaaa4", "marker": "v", "label": "random"},
    "round-robin": {"color": "#a1887f", "marker": "^", "label": "round robin"},
    "power-of-two": {"color": "#ff9800", "marker": "D", "label": "power of two choices"},
    "least-load": {"color": "#80cbc4", "marker": "s", "label": "least-load + ledger"},
    "least-utilization": {"color": "#1f77b4", "marker": "o", "label": "least-utilization + ledger"},
    "rate-weighted": {"color": "#b39ddb", "marker": "P", "label": "rate-weighted + ledger"},
    "least-forecast-utilization": {"color": "#d62728", "marker": "*", "markersize": 10,
                                   "linewidth": 2.5, "label": "least-forecast-utilization"},
    "oracle": {"color": "black", "marker": "", "linestyle": "--", "linewidth": 2,
               "label": "oracle (fresh data)"},
}
REPLICA_LINES = {1: "-", 2: "-.", 4: ":"}
WORKLOAD_TITLES = {
    "today": "today: 10-min sessions, a burst every 5 min",
    "short": "short: 1-min sessions",
    "lognormal": "lognormal: heavy-tailed sessions",
    "stop-early": "stop-early: 1-min sessions lasting 0.5-1.5x their declaration",
    "burst10": "burst10: one burst 10x today's",
}


def _rows(rows: Iterable[Row], **match: object) -> list[Row]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _series(rows: Sequence[Row], key: str) -> tuple[list[float], list[float]]:
    ordered = sorted(rows, key=lambda r: float(r["scrape_s"]))   # type: ignore[arg-type]
    xs = [float(r["scrape_s"]) for r in ordered]   # type: ignore[arg-type]
    if key == "refused_pct":
        ys = [100.0 * float(r["refused_requests"]) / float(r["requests"])   # type: ignore[arg-type]
              for r in ordered]
    else:
        ys = [float(r[key]) for r in ordered]   # type: ignore[arg-type]
    return xs, ys


def _axes(ax: Axes, intervals: list[float], ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(intervals))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g} s"))
    ax.set_xlabel("scrape interval")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)


def _target_band(ax: Axes, rows: list[Row], n: int, workload: str, replicas: int = 1) -> None:
    """Dotted grey: the oracle's p99 spread plus the allowance (the target's upper edge)."""
    targets = sorted(_rows(rows, strategy="target", substations=n, workload=workload,
                           replicas=replicas), key=lambda r: float(r["scrape_s"]))  # type: ignore[arg-type]
    oracle = {float(r["scrape_s"]): float(r["spread_p99"])   # type: ignore[arg-type]
              for r in _rows(rows, strategy="oracle", substations=n, workload=workload)}
    xs = [float(t["scrape_s"]) for t in targets]   # type: ignore[arg-type]
    ys = [oracle[x] + float(t["allowance"]) for x, t in zip(xs, targets, strict=True)]  # type: ignore[arg-type]
    if xs:
        label = "target: oracle + " + ("1 mean request" if replicas == 1 else
                                       "2 mean requests")
        ax.plot(xs, ys, color="grey", linestyle=":", linewidth=1.5, label=label)


def _panel_pair(axes: Sequence[Axes], rows: list[Row], n: int, workload: str,
                lines: list[tuple[str, int]], title: str, band_replicas: int = 1) -> None:
    intervals = sorted({float(r["scrape_s"]) for r in _rows(rows, substations=n)})  # type: ignore[arg-type]
    for strategy, replicas in lines:
        chosen = _rows(rows, strategy=strategy, substations=n, workload=workload,
                       replicas=replicas)
        if not chosen:
            continue
        style = dict(STYLE[strategy])
        if strategy != "oracle" and replicas > 1:
            style["linestyle"] = REPLICA_LINES.get(replicas, "-")
        if any(r for s, r in lines if s == strategy and r != replicas) or replicas > 1:
            style["label"] = f"{style['label']}, {replicas} replica{'s' if replicas > 1 else ''}"
        for ax, key in zip(axes, ("spread_p99", "refused_pct"), strict=True):
            ax.plot(*_series(chosen, key), **style)
    _target_band(axes[0], rows, n, workload, band_replicas)
    _axes(axes[0], intervals, "p99 utilization spread (max - min)", f"{title}: p99 spread")
    _axes(axes[1], intervals, "requests refused (% of requests)", f"{title}: refused")
    axes[1].set_ylim(bottom=0)   # a log scale (set later) replaces it


def _legend(axes: Sequence[Axes]) -> None:
    """One legend, right of the pair, from the spread panel (it also has the target line)."""
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def _save(fig: Any, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_charts(rows: list[Row], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sizes = sorted({int(r["substations"]) for r in rows})   # type: ignore[call-overload]
    for n in [n for n in (10, 100) if n in sizes]:
        if _rows(rows, workload="today", substations=n):
            fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
            strategies = sorted({str(r["strategy"]) for r in _rows(rows, workload="today")
                                 if r["strategy"] != "target"}, key=list(STYLE).index)
            _panel_pair(axes, rows, n, "today", [(s, 1) for s in strategies], "today")
            if all(y > 0 for line in axes[1].get_lines() for y in line.get_ydata()):
                axes[1].set_yscale("log")   # the seed refuses 10-100x more than the others
                axes[1].autoscale(axis="y")
                axes[1].yaxis.set_major_locator(FixedLocator([0.5, 1, 2, 5, 10, 20, 50, 100]))
                axes[1].yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g} %"))
                axes[1].yaxis.set_minor_formatter(NullFormatter())
            _legend(axes)
            written.append(_save(fig, out / f"quality-{n}.png",
                                 f"Balance quality at {n} substations, one balancer "
                                 "(today's workload)"))
        others = [w for w in WORKLOAD_TITLES if w != "today"
                  and _rows(rows, workload=w, substations=n)]
        if others:
            fig, grid = plt.subplots(len(others), 2, figsize=(13, 3.6 * len(others)),
                                     squeeze=False)
            for axes, workload in zip(grid, others, strict=True):
                strategies = sorted({str(r["strategy"]) for r in _rows(rows, workload=workload)
                                     if r["strategy"] != "target"}, key=list(STYLE).index)
                _panel_pair(axes, rows, n, workload, [(s, 1) for s in strategies],
                            WORKLOAD_TITLES[workload])
            _legend(grid[0])
            written.append(_save(fig, out / f"quality-workloads-{n}.png",
                                 f"Harder workloads at {n} substations, one balancer"))
        replicated = [w for w in WORKLOAD_TITLES
                      if _rows(rows, workload=w, substations=n, replicas=4)]
        if replicated:
            fig, grid = plt.subplots(len(replicated), 2,
                                     figsize=(13, 4.2 * len(replicated)), squeeze=False)
            lines = [(s, k) for s in ("least-utilization", "least-forecast-utilization")
                     for k in (1, 2, 4)] + [("oracle", 1)]
            for axes, workload in zip(grid, replicated, strict=True):
                _panel_pair(axes, rows, n, workload, lines, WORKLOAD_TITLES[workload],
                            band_replicas=4)
            _legend(grid[0])
            written.append(_save(fig, out / f"quality-replicas-{n}.png",
                                 f"1, 2 and 4 balancer replicas at {n} substations "
                                 "(each its own ledger, requests round robin)"))
    return written
