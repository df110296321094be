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

Promises (`promised`: session ids whose floor is held, as ours holds a committed floor): in every
slot of its stay such a session gets at least its floor, or what it still needs if less, so by
the end of slot t (counted from its arrival) it has at least min(energy, floor x (t + 1) slots).
The LP takes that cumulative bound (cumulative variables y, y[t] = y[t-1] + energy in slot t,
y[t] bounded below): every allocation that holds the floors meets it, so the LP's optimum is an
upper bound on what any allocation keeping those promises delivers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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
                    routing: Mapping[int, int] | None = None, pooled: bool = False,
                    promised: Collection[int] = ()) -> Optimum:
    """The most energy deliverable by departure (see the module's docstring)."""
    if pooled and routing is None and len(capacities_kw) > 1 and not promised:
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
    # Promises: a cumulative variable y per (promised session, slot of its stay), after the x.
    cumulative: dict[tuple[int, int], int] = {}   # (session index, slot) -> column
    low_y: list[float] = []
    high_y: list[float] = []
    for i, s in enumerate(sessions):
        if s.id in promised:
            for t in range(s.arrival, s.departure):
                cumulative[i, t] = n + len(cumulative)
                low_y.append(min(s.energy_kwh, s.min_kw * (t - s.arrival + 1) * slot_h))
                high_y.append(s.energy_kwh)
    m = len(cumulative)
    a_eq = None
    b_eq = None
    if m:
        # Row r = y's own column - n: y[i, t] - y[i, t-1] - slot_h * sum over k of x[i, k, t] = 0.
        eq_rows, eq_cols, eq_values = [np.arange(m)], [np.arange(n, n + m)], [np.ones(m)]
        previous = [(c - n, cumulative[i, t - 1]) for (i, t), c in cumulative.items()
                    if (i, t - 1) in cumulative]
        if previous:
            eq_rows.append(np.array([r for r, _ in previous]))
            eq_cols.append(np.array([c for _, c in previous]))
            eq_values.append(-np.ones(len(previous)))
        mine = [(cumulative[int(who[c]), int(when[c])] - n, c) for c in range(n)
                if (int(who[c]), int(when[c])) in cumulative]
        eq_rows.append(np.array([r for r, _ in mine], dtype=np.int64))
        eq_cols.append(np.array([c for _, c in mine], dtype=np.int64))
        eq_values.append(np.full(len(mine), -slot_h))
        a_eq = coo_matrix((np.concatenate(eq_values),
                           (np.concatenate(eq_rows), np.concatenate(eq_cols))),
                          shape=(m, n + m)).tocsr()
        b_eq = np.zeros(m)
        matrix = coo_matrix(matrix)
        matrix = coo_matrix((matrix.data, (matrix.row, matrix.col)),
                            shape=(height, n + m)).tocsr()
    result = linprog(np.concatenate([-slot_h * np.ones(n), np.zeros(m)]), A_ub=matrix,
                     b_ub=np.concatenate(bounds_b), A_eq=a_eq, b_eq=b_eq,
                     bounds=np.column_stack([np.concatenate([np.zeros(n), low_y]),
                                             np.concatenate([upper, high_y])]),
                     method="highs")
    if result.status != 0:
        raise RuntimeError(f"the offline LP was not solved: {result.message}")
    x = np.clip(result.x[:n], 0.0, None)
    delivered = np.bincount(who, weights=x * slot_h, minlength=len(sessions))
    kw = {(sessions[i].id, int(k), int(t)): float(v)
          for i, k, t, v in zip(who, where, when, x, strict=True) if v > 1e-9}
    load = np.bincount(when, weights=x, minlength=slots)
    return Optimum({s.id: min(s.energy_kwh, float(delivered[i]))
                    for i, s in enumerate(sessions)}, kw, tuple(float(v) for v in load))
