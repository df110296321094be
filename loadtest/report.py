"""The rush-hour summary, as a table or as JSON."""

from __future__ import annotations

from typing import Any

from loadtest.promcheck import PrometheusLoads
from loadtest.rush import RushResult

AGREE_KW = 0.5


def summary(result: RushResult, before: PrometheusLoads, after: PrometheusLoads
            ) -> dict[str, Any]:
    names = sorted(set(result.per_substation) | set(after.loads_kw))
    rows = []
    total = max(1, len(result.results))
    for name in names:
        assigned = result.kw_per_substation.get(name, 0.0)
        reported = after.loads_kw.get(name)
        delta = None if reported is None else reported - before.loads_kw.get(name, 0.0)
        rows.append({
            "substation": name, "requests": result.per_substation.get(name, 0),
            "share_pct": 100.0 * result.per_substation.get(name, 0) / total,
            "assigned_kw": assigned, "prometheus_load_kw": reported,
            "prometheus_load_before_kw": before.loads_kw.get(name),
            "agrees": None if delta is None else abs(delta - assigned) <= AGREE_KW,
        })
    return {
        "requests": len(result.results), "wall_s": result.wall_s,
        "requests_per_s": len(result.results) / result.wall_s if result.wall_s else 0.0,
        "statuses": dict(result.statuses), "substations": rows,
        "latency_ms": {q: result.latency_ms(v) for q, v in
                       (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))},
        "prometheus_error": after.error, "all_definite": result.definite,
    }


def _kw(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(data: dict[str, Any]) -> str:
    lines = [f"Rush hour: {data['requests']} requests in {data['wall_s']:.2f} s "
             f"({data['requests_per_s']:.0f} req/s)", ""]
    header = (f"{'substation':<16}{'requests':>9}{'share':>8}{'kW assigned':>13}"
              f"{'substation_load (Prometheus)':>30}{'agrees':>8}")
    lines += [header, "-" * len(header)]
    for row in data["substations"]:
        agrees = {True: "yes", False: "NO", None: "-"}[row["agrees"]]
        before = row["prometheus_load_before_kw"]
        reported = _kw(row["prometheus_load_kw"])
        if before:
            reported = f"{reported} (was {before:.1f})"
        lines.append(f"{row['substation']:<16}{row['requests']:>9}{row['share_pct']:>7.0f}%"
                     f"{row['assigned_kw']:>13.1f}{reported:>30}{agrees:>8}")
    lines += ["", "status      count"]
    lines += [f"{status:<12}{count:>5}" for status, count in sorted(data["statuses"].items())]
    lat = data["latency_ms"]
    lines += ["", f"latency     p50 {lat['p50']:.1f} ms   p95 {lat['p95']:.1f} ms   "
                  f"p99 {lat['p99']:.1f} ms"]
    if data["prometheus_error"]:
        lines.append(f"prometheus  {data['prometheus_error']}")
    return "\n".join(lines)
