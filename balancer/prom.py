"""Reading Prometheus: run instant queries, turn odd answers into explicit outcomes.

`prometheus-api-client` is synchronous (requests); callers run `read_snapshot` in a thread.
Every odd answer has a decided meaning:
- HTTP 400 (bad_data), 422 (execution), 503 (timeout), other non-200, connection errors, client
  timeouts, a body cut off mid-way (truncated) and anything that is not a Prometheus vector
  answer (bad_response) raise QueryFailure with a reason: the only exception that leaves here.
  If a grid query fails, the caller keeps its last good snapshot.
- If only the policy's query fails (e.g. 422 "many-to-many matching not allowed" because one
  substation exports an odd series), the grid is still read: PolicyQueryFailed carries a snapshot
  without scores, in which substations are ranked by utilization (one odd series must not stop
  the whole grid's routing).
- An empty vector is not an error but means "no data": no substation gets a score from it. When
  no substation that is up gets a score (no data, or none of it names a substation scraped
  now), the snapshot says so (`policy_no_data`): the refresh loop warns and counts it.
- A series without the identifying label is dropped and reported.
- NaN and +/-Inf values are dropped and reported: such a substation is not eligible.
- A forecast point (substation_load_forecast_kw, only read for a `load_aging: forecast`
  policy) with an odd horizon or value is dropped and reported; without a forecast a
  substation's load is simply not aged.
- Several series for one substation keep the most pessimistic value and are reported.
- Series left by an earlier run (a substation renamed or replaced at the same address) stay
  visible for Prometheus's lookback with no staleness marker: the grid queries keep only series
  from each target's latest scrape, and a policy series naming another substation than the one
  now at that address is dropped and reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from balancer.policy import Better, LoadAging, Policy, render_query
from balancer.promaccess import (
    CredentialsUnreadable,
    PrometheusAccess,
    auth_for,
    session_for,
)
from balancer.snapshot import Snapshot, SubstationView

_STATUS_RE = re.compile(r"HTTP Status Code (\d{3})")
_REASON_BY_STATUS = {400: "bad_data", 422: "execution", 503: "timeout", 499: "canceled"}


class QueryClient(Protocol):
    """The part of PrometheusConnect the balancer uses."""

    def custom_query(self, query: str, params: dict[str, Any]) -> Any: ...


class QueryFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class PolicyQueryFailed(QueryFailure):
    """The grid was read but the policy's query failed: `grid` is the snapshot without scores."""

    def __init__(self, failure: QueryFailure, grid: Snapshot) -> None:
        super().__init__(failure.reason, failure.detail)
        self.grid = grid


def make_client(base_url: str, timeout_s: float = 2.0,
                headers: Mapping[str, str] | None = None,
                access: PrometheusAccess | None = None) -> PrometheusConnect:
    access = access or PrometheusAccess()
    # The library's default retries 3 times with a 1 s backoff on 5xx: a refresh would stall for
    # seconds while the snapshot ages. The refresh loop itself is the retry, so retry nothing.
    return PrometheusConnect(url=base_url.rstrip("/"),
                             headers={**access.headers, **(headers or {})},
                             # passed on to requests, which takes any AuthBase
                             auth=auth_for(access),  # type: ignore[arg-type]
                             session=session_for(access),
                             retry=Retry(total=0, raise_on_status=False),
                             # requests takes float seconds; the library's hint says int
                             timeout=timeout_s)  # type: ignore[arg-type]


def run_query(client: QueryClient, promql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One instant query -> its vector result, or QueryFailure saying why not."""
    try:
        result = client.custom_query(promql, params=dict(params))
    except CredentialsUnreadable as exc:
        raise QueryFailure("credentials", str(exc)[:300]) from exc
    except PrometheusApiClientException as exc:
        match = _STATUS_RE.search(str(exc))
        status = int(match.group(1)) if match else 0
        raise QueryFailure(_REASON_BY_STATUS.get(status, f"http_{status}"), str(exc)[:500]) \
            from exc
    except requests.Timeout as exc:
        raise QueryFailure("client_timeout", str(exc)) from exc
    except requests.ConnectionError as exc:
        # With retries off, urllib3 wraps a read timeout in MaxRetryError -> ConnectionError.
        cause = getattr(exc.args[0], "reason", None) if exc.args else None
        reason = "client_timeout" if isinstance(cause, ReadTimeoutError) else "unreachable"
        raise QueryFailure(reason, str(exc)[:300]) from exc
    except requests.exceptions.ChunkedEncodingError as exc:
        # The connection closed before the whole body came (a proxy or Prometheus died mid-way).
        raise QueryFailure("truncated", f"the answer was cut off: {str(exc)[:200]}") from exc
    # JSON that does not parse, the wrong shape ({"data": []}), nesting too deep to decode.
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise QueryFailure("bad_response",
                           f"not a Prometheus API answer: {str(exc)[:200]}") from exc
    except requests.RequestException as exc:
        raise QueryFailure("request_failed", f"{type(exc).__name__}: {str(exc)[:200]}") \
            from exc
    if not _is_vector(result):
        raise QueryFailure("bad_response",
                           f"expected an instant vector, got {_excerpt(result)}")
    return result


def _is_vector(result: object) -> TypeGuard[list[dict[str, Any]]]:
    """An instant vector as Prometheus sends it: [{"metric": {str: str}, "value": [t, "v"]}]."""
    return isinstance(result, list) and all(
        isinstance(s, dict)
        and isinstance(s.get("metric", {}), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in s.get("metric", {}).items())
        and isinstance(s.get("value"), list) and len(s["value"]) == 2
        for s in result)


def _excerpt(value: object) -> str:
    try:
        return repr(value)[:120]
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"


def read_vector(result: list[dict[str, Any]], key_label: str,
                keep: Callable[[float, float], float], what: str
                ) -> tuple[dict[str, float], dict[str, dict[str, str]], list[str]]:
    """Vector -> {label value: value}, the labels of each kept series, and the problems seen."""
    values: dict[str, float] = {}
    labels: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for series in result:
        metric = series.get("metric", {})
        key = metric.get(key_label)
        if not key:
            problems.append(f"{what}: a series has no '{key_label}' label ({metric}); ignored")
            continue
        try:
            value = float(series["value"][1])
        except (IndexError, TypeError, ValueError):
            problems.append(f"{what}: unreadable value for {key}; ignored")
            continue
        if not math.isfinite(value):
            problems.append(f"{what}: {key} is {value}; not eligible")
            continue
        if key in values:
            problems.append(f"{what}: several series for {key}; kept the most pessimistic")
            value = keep(values[key], value)
        values[key] = value
        labels[key] = metric
    return values, labels, problems


@dataclass(frozen=True)
class GridQueries:
    """The fixed queries that say which substations exist and how loaded they are."""

    job: str = "substation"
    balancer_job: str = "balancer"
    # How far back a resolve looks for substations that may hold a session: longer than a
    # pending record lives before the ingress's reconciler resolves it (seconds, unless a
    # substation stays unreachable), and within Prometheus's retention.
    roster_window_s: int = 900
    # The grid's name (its `grid` label): every query selects by it, so grids sharing one
    # Prometheus never see each other's substations. "" selects series without the label (a
    # Prometheus that scrapes one grid and labels nothing).
    grid: str = ""

    def selector(self, job: str) -> str:
        return f'job="{job}", grid="{self.grid}"'

    def render(self, promql: str) -> str:
        """A policy's query with its variables ($grid) filled in (balancer/policy.py lists
        them)."""
        return render_query(promql, {"grid": self.grid})

    @property
    def up(self) -> str:
        return f"up{{{self.selector(self.job)}}}"

    @property
    def scrape_time(self) -> str:
        return f"timestamp(up{{{self.selector(self.job)}}})"

    @property
    def load(self) -> str:
        return self.latest_scrape("substation_load")

    @property
    def balancers(self) -> str:
        return f"count(up{{{self.selector(self.balancer_job)}}} == 1)"

    @property
    def load_seq(self) -> str:
        return self.latest_scrape("substation_load_seq")

    @property
    def forecast(self) -> str:
        return self.latest_scrape("substation_load_forecast_kw")

    @property
    def capacity(self) -> str:
        return self.latest_scrape("substation_capacity_kw")

    @property
    def roster(self) -> str:
        """Every substation (instance and `substation` label) scraped within the window,
        including targets since dropped from discovery: their series went stale, but their
        samples are still in the window."""
        return (f"last_over_time(substation_capacity_kw{{{self.selector(self.job)}}}"
                f"[{self.roster_window_s}s])")

    def latest_scrape(self, metric: str) -> str:
        """`metric`'s series from each target's latest scrape only. All samples of one scrape
        share `up`'s timestamp; a series older than that was not in the latest scrape: it is
        left from an earlier identity of the target (renamed or replaced at the same address)."""
        selector = f"{metric}{{{self.selector(self.job)}}}"
        return (f"{selector} and (timestamp({selector}) "
                f">= on (job, instance) group_left {self.scrape_time})")


def read_roster(result: list[dict[str, Any]], listed: Mapping[str, str]) -> dict[str, str]:
    """last_over_time(substation_capacity_kw[window]) -> {instance: name} of the substations
    seen in the window whose name is not listed now (a listed name is asked at its current
    address: a substation's sessions go where its name goes). A series without an instance is
    of no use to a fence and is skipped; one without a name is named by its instance."""
    names_now = set(listed.values())
    recent: dict[str, str] = {}
    for series in result:
        metric = series.get("metric") if isinstance(series, dict) else None
        if not isinstance(metric, dict):
            continue
        instance = metric.get("instance")
        if not isinstance(instance, str) or not instance or instance in listed:
            continue
        name = metric.get("substation")
        name = name if isinstance(name, str) and name else instance
        if name not in names_now:
            recent[instance] = name
    return recent


# How often the roster query runs: it reads every substation's samples over the whole window
# (at 1,000 substations and 1 s scrapes, 900,000 samples), so not on every refresh.
ROSTER_EVERY_S = 30.0


@dataclass
class RosterCache:
    """The roster query's last answer, read again every `every_s`. Between two reads, every
    substation listed at a refresh is remembered too, so one listed and dropped again between
    two reads is still asked by a resolve: the cached answer and the remembered ones together
    miss nothing a roster read on every refresh would have found."""

    every_s: float = ROSTER_EVERY_S
    result: list[dict[str, Any]] | None = None
    read_at: float = -math.inf
    listed_since: dict[str, str] = field(default_factory=dict)   # instance -> name

    def due(self, at: float) -> bool:
        return self.result is None or not 0.0 <= at - self.read_at < self.every_s

    def store(self, result: list[dict[str, Any]], at: float) -> None:
        self.result, self.read_at, self.listed_since = result, at, {}

    def expire(self) -> None:
        """Read it again at the next refresh."""
        self.result = None

    def recent(self, listed: Mapping[str, str]) -> dict[str, str]:
        """As read_roster, over the cached answer and the substations listed since it."""
        self.listed_since.update(listed)
        recent = read_roster(self.result or [], listed)
        names_now = set(listed.values())
        for instance, name in self.listed_since.items():
            if instance not in listed and name not in names_now:
                recent.setdefault(instance, name)
        return recent


def read_balancers(result: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """count(up{job="balancer"} == 1) -> the number of balancer replicas up. No answer (no
    balancer scraped, as in a setup that does not scrape them) means this one alone: 1. An odd
    answer (several series, not a whole number >= 1) is reported and read as 1 as well: spreading
    over replicas that may not exist costs balance, never safety."""
    if not result:
        return 1, []
    try:
        values = [sample["value"][1] for sample in result]
        count = float(values[0]) if len(values) == 1 else math.nan
    except (KeyError, IndexError, TypeError, ValueError):
        values, count = [sample.get("value") if isinstance(sample, dict) else sample
                         for sample in result], math.nan
    if not (math.isfinite(count) and count >= 1.0 and count == int(count)):
        return 1, [f"balancer replicas: {values!r} is not one whole number >= 1; read as 1"]
    return int(count), []


def read_forecasts(result: list[dict[str, Any]]
                   ) -> tuple[dict[str, tuple[tuple[float, float], ...]], list[str]]:
    """substation_load_forecast_kw -> {instance: ((horizon s, kW), ...) by horizon}.

    A point with an unreadable horizon or value is dropped and reported; several series for
    one horizon keep the highest (the pessimistic reading). A substation without a forecast is
    simply not aged."""
    points: dict[str, dict[float, float]] = {}
    problems: list[str] = []
    for series in result:
        metric = series.get("metric", {})
        instance, label = metric.get("instance"), metric.get("horizon", "")
        horizon = _horizon_s(label)
        try:
            value = float(series["value"][1])
        except (IndexError, TypeError, ValueError):
            value = math.nan
        if not instance or horizon is None or not math.isfinite(value):
            problems.append(f"forecast: unusable series {metric} = {series.get('value')}; "
                            "ignored")
            continue
        by_horizon = points.setdefault(instance, {})
        by_horizon[horizon] = max(value, by_horizon.get(horizon, value))
    return {inst: tuple(sorted(hs.items())) for inst, hs in points.items()}, problems


def _horizon_s(label: str) -> float | None:
    """ "15s" -> 15.0; anything else (no unit, not positive, not finite) -> None."""
    if not label.endswith("s"):
        return None
    try:
        value = float(label[:-1])
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def drop_leftovers(result: list[dict[str, Any]], names: Mapping[str, str], what: str
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Drop series that name another substation than the one now at their address.

    A policy keyed by `instance` sees, for the lookback after a rename, the old substation's
    series beside the new one's (Prometheus writes no staleness marker for a previous run)."""
    kept: list[dict[str, Any]] = []
    problems: list[str] = []
    for series in result:
        metric = series.get("metric", {})
        instance, named = metric.get("instance"), metric.get("substation")
        current = names.get(instance or "")
        if named and current and current != instance and named != current:
            problems.append(f"{what}: a series for substation {named!r} at {instance}, where "
                            f"{current!r} runs now (left from an earlier run); ignored")
            continue
        kept.append(series)
    return kept, problems


def read_snapshot(client: QueryClient, policy: Policy, queries: GridQueries, at: float,
                  extra_params: Mapping[str, Any] | None = None,
                  roster: RosterCache | None = None) -> Snapshot:
    """Evaluate the grid queries and the policy at one instant -> a Snapshot. `roster`: the
    roster query's answer kept between refreshes (None: the query runs now)."""
    # Evaluating every query at the same `time` keeps load, capacity and score consistent.
    params = {**(extra_params or {}), "time": f"{at:.3f}"}
    up, _, p_up = read_vector(run_query(client, queries.up, params), "instance", min, "up")
    scraped, _, p_ts = read_vector(run_query(client, queries.scrape_time, params), "instance",
                                   min, "scrape time")
    # The reading number before the load: a scrape that lands between the two queries then
    # makes the load newer than its number (kW counted twice until the next refresh, the safe
    # side), never older (the ledger would drop kW that load does not count yet: a burst would
    # overfill that substation). Later queries see at least what earlier ones saw.
    seqs, _, p_seq = read_vector(run_query(client, queries.load_seq, params), "instance", min,
                                 "load sequence")
    load, load_labels, p_load = read_vector(run_query(client, queries.load, params), "instance",
                                            max, "load")
    capacity, cap_labels, p_cap = read_vector(run_query(client, queries.capacity, params),
                                              "instance", min, "capacity")
    forecasts: dict[str, tuple[tuple[float, float], ...]] = {}
    p_forecast: list[str] = []
    if policy.load_aging is LoadAging.FORECAST:
        # Queried only for a policy that ages loads: the others cost no query more.
        forecasts, p_forecast = read_forecasts(run_query(client, queries.forecast, params))
    balancers, p_balancers = read_balancers(run_query(client, queries.balancers, params))
    names = {inst: (cap_labels.get(inst) or load_labels.get(inst) or {}).get("substation", inst)
             for inst in up}
    if roster is None:
        recent = read_roster(run_query(client, queries.roster, params), names)
    else:
        if roster.due(at):
            roster.store(run_query(client, queries.roster, params), at)
        recent = roster.recent(names)
    what = f"policy {policy.name}"
    failed: QueryFailure | None = None
    try:
        result = run_query(client, queries.render(policy.query), params)
    except QueryFailure as exc:
        failed, result = exc, []
    result, p_left = drop_leftovers(result, names, what)
    worst = max if policy.better is Better.LOWER else min
    scores, _, p_score = read_vector(result, policy.substation_label, worst, what)
    by_name = {name: inst for inst, name in names.items()}
    scores_by_instance = {by_name.get(key, key): value for key, value in scores.items()}
    problems = p_up + p_ts + p_load + p_seq + p_cap + p_forecast + p_balancers + p_left + p_score
    problems += [f"{what}: {key!r} is not a substation Prometheus scrapes now; ignored"
                 for key in scores if by_name.get(key, key) not in up]
    scored_up = any(inst in scores_by_instance for inst, value in up.items() if value == 1.0)
    no_data = failed is None and not scored_up and any(value == 1.0 for value in up.values())
    if failed is not None:
        problems.append(f"{what}: the query failed ({failed}); substations are ranked by "
                        "utilization until it succeeds")
    elif no_data:
        found = "returned no data" if not result else "gave no substation that is up a score"
        problems.append(f"{what}: the query {found} (a misspelt metric or label?); "
                        "substations are ranked by utilization until it does")
    views = {
        inst: SubstationView(
            instance=inst, name=names[inst], up=up[inst] == 1.0, scrape_ts=scraped.get(inst, 0.0),
            load_kw=load.get(inst), capacity_kw=capacity.get(inst),
            score=scores_by_instance.get(inst),
            load_seq=int(seqs[inst]) if inst in seqs else None,
            forecast=forecasts.get(inst, ()),
        )
        for inst in up
    }
    snapshot = Snapshot(policy_name=policy.name, evaluated_at=at, substations=views,
                        problems=tuple(problems), balancers=balancers, recent=recent,
                        policy_no_data=no_data)
    if failed is not None:
        raise PolicyQueryFailed(failed, snapshot)
    return snapshot
