"""The offline optimum of the power-sharing benchmark: every arrival known in advance, routing
and allocation decided together by one linear program, solved by HiGHS
(`scipy.optimize.linprog(method="highs")`).

Variables: the power x[i, s, t] of session i at substation s in slot t, only within its stay
(arrival <= t < departure), 0 <= x <= max_kw. Constraints: per substation and slot, the sum is
at most its capacity; per session, the energy over all slots and substations is at most what it
asks for; per session and slot, the power over substations at most its max_kw. Objective: the
most energy delivered.

Routing: with `routing=None` the LP may SPLIT a session across substations (one car at two
substations at once): an upper bound on anything a router can reach. It then equals the LP of
ONE substation with the summed capacity (a pooled solution y[i, t] splits as
x[i, s, t] = y[i, t] * capacity[s] / sum(capacity), which fits every substation; the converse is
the sum over s), so `pooled=True` solves that far smaller LP instead
(tests/unit/test_bench_power.py checks both give the same optimum). With `routing` given (a
substation per session), each session may charge only there: the best any allocation can do
with that routing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from bench.power_workloads import Session


@dataclass(frozen=True)
class Optimum:
    delivered_kwh: dict[int, float]   # per session id
    kw: dict[tuple[int, int, int], float]   # (session id, substation index, slot) -> kW, > 0
    load_kw: tuple[float, ...] = ()         # the site's total per slot

    @property
    def total_kwh(self) -> float:
        return sum(self.delivered_kwh.values())


def offline_optimum(sessions: Sequence[Session], capacities_kw: Sequence[float], slot_h: float,
                    routing: Mapping[int, int] | None = None, pooled: bool = False) -> Optimum:
    """The most energy deliverable by departure (see the module's docstring)."""
    if pooled and routing is None and len(capacities_kw) > 1:
        merged = offline_optimum(sessions, [sum(capacities_kw)], slot_h)
        return Optimum(merged.delivered_kwh, {}, merged.load_kw)
    # One column per (session, substation, slot) it may use.
    columns: list[tuple[int, int, int]] = []   # (session index, substation, slot)
    for i, s in enumerate(sessions):
        allowed = range(len(capacities_kw)) if routing is None else (routing[s.id],)
        columns += [(i, k, t) for k in allowed for t in range(s.arrival, s.departure)]
    if not columns:
        return Optimum({s.id: 0.0 for s in sessions}, {})
    slots = max(s.departure for s in sessions)
    n = len(columns)
    col = np.arange(n)
    who = np.fromiter((c[0] for c in columns), dtype=np.int64, count=n)
    where = np.fromiter((c[1] for c in columns), dtype=np.int64, count=n)
    when = np.fromiter((c[2] for c in columns), dtype=np.int64, count=n)
    # Rows: capacity per (substation, slot), then energy per session, then (when a session may
    # use several substations) its max_kw per slot.
    capacity_rows = where * slots + when
    energy_rows = len(capacities_kw) * slots + who
    rows = [capacity_rows, energy_rows]
    cols = [col, col]
    values = [np.ones(n), np.full(n, slot_h)]
    bounds_b = [np.repeat(np.asarray(capacities_kw, dtype=float), slots),
                np.array([s.energy_kwh for s in sessions])]
    split = routing is None and len(capacities_kw) > 1
    if split:
        per_slot_rows = len(capacities_kw) * slots + len(sessions) + who * slots + when
        rows.append(per_slot_rows)
        cols.append(col)
        values.append(np.ones(n))
        bounds_b.append(np.repeat([s.max_kw for s in sessions], slots))
    height = len(capacities_kw) * slots + len(sessions) + (len(sessions) * slots if split else 0)
    matrix = coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(height, n)).tocsr()
    upper = np.array([sessions[i].max_kw for i in who])
    result = linprog(-slot_h * np.ones(n), A_ub=matrix, b_ub=np.concatenate(bounds_b),
                     bounds=np.column_stack([np.zeros(n), upper]), method="highs")
    if result.status != 0:
        raise RuntimeError(f"the offline LP was not solved: {result.message}")
    x = np.clip(result.x, 0.0, None)
    delivered = np.bincount(who, weights=x * slot_h, minlength=len(sessions))
    kw = {(sessions[i].id, int(k), int(t)): float(v)
          for i, k, t, v in zip(who, where, when, x, strict=True) if v > 1e-9}
    load = np.bincount(when, weights=x, minlength=slots)
    return Optimum({s.id: min(s.energy_kwh, float(delivered[i]))
                    for i, s in enumerate(sessions)}, kw, tuple(float(v) for v in load))
