"""The rush-hour summary, as a table or as JSON, and whether Prometheus agrees with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loadtest.promcheck import PrometheusLoads
from loadtest.rush import RushResult

AGREE_KW = 0.5


def shares_pct(counts: Mapping[str, int]) -> dict[str, int]:
    """Each name's share of the total in whole percent, adding up to exactly 100 (largest
    remainder: rounding each alone gives 33 + 33 + 33 for three equal shares); all 0 when the
    total is 0."""
    total = sum(counts.values())
    if total == 0:
        return dict.fromkeys(counts, 0)
    exact = {name: 100 * count / total for name, count in counts.items()}
    shares = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (shares[name] - exact[name], name))
    for name in by_remainder[:100 - sum(shares.values())]:
        shares[name] += 1
    return shares


def summary(result: RushResult, before: PrometheusLoads, after: PrometheusLoads
            ) -> dict[str, Any]:
    names = sorted(set(result.per_substation) | set(after.loads_kw))
    # The share of the requests placed (each went to one substation): the refused and failed
    # ones are in `statuses`.
    shares = shares_pct({name: result.per_substation.get(name, 0) for name in names})
    rows = []
    for name in names:
        assigned = result.kw_per_substation.get(name, 0.0)
        reported = after.loads_kw.get(name)
        delta = None if reported is None else reported - before.loads_kw.get(name, 0.0)
        rows.append({
            "substation": name, "requests": result.per_substation.get(name, 0),
            "share_pct": shares[name],
            "assigned_kw": assigned, "prometheus_load_kw": reported,
            "prometheus_load_before_kw": before.loads_kw.get(name),
            "agrees": None if delta is None else abs(delta - assigned) <= AGREE_KW,
        })
    data = {
        "requests": len(result.results), "wall_s": result.wall_s,
        "requests_per_s": len(result.results) / result.wall_s if result.wall_s else 0.0,
        "statuses": dict(result.statuses), "substations": rows,
        "latency_ms": {q: result.latency_ms(v) for q, v in
                       (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))},
        "prometheus_error": after.error, "all_definite": result.definite,
    }
    data["disagreements"] = disagreements(data)
    return data


def disagreements(data: Mapping[str, Any]) -> list[str]:
    """Why Prometheus's substation_load does not confirm what the ingress answered (empty when
    it does): the load it reports moved by other than the kW placed there, it reports none for
    a substation that was given requests, or it could not be asked."""
    if data["prometheus_error"]:
        return [f"Prometheus could not confirm the run: {data['prometheus_error']}"]
    out = []
    for row in data["substations"]:
        name, assigned = row["substation"], row["assigned_kw"]
        reported, before = row["prometheus_load_kw"], row["prometheus_load_before_kw"] or 0.0
        if row["agrees"] is False:
            out.append(f"{name}: {assigned:.1f} kW placed, but its substation_load went from "
                       f"{before:.1f} to {reported:.1f} kW ({reported - before:+.1f})")
        elif reported is None and assigned > 0:
            out.append(f"{name}: {assigned:.1f} kW placed, but Prometheus has no "
                       "substation_load for it")
    return out


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
        lines.append(f"{row['substation']:<16}{row['requests']:>9}{row['share_pct']:>7d}%"
                     f"{row['assigned_kw']:>13.1f}{reported:>30}{agrees:>8}")
    lines += ["", "status      count"]
    lines += [f"{status:<12}{count:>5}" for status, count in sorted(data["statuses"].items())]
    lat = data["latency_ms"]
    lines += ["", f"latency     p50 {lat['p50']:.1f} ms   p95 {lat['p95']:.1f} ms   "
                  f"p99 {lat['p99']:.1f} ms"]
    if data["disagreements"]:
        lines += ["", "Prometheus does not confirm the run:"]
        lines += [f"  {line}" for line in data["disagreements"]]
    return "\n".join(lines)
