"""Reading Prometheus: run instant queries, turn odd answers into explicit outcomes.

`prometheus-api-client` is synchronous (requests); callers run `read_snapshot` in a thread.
Every odd answer has a decided meaning:
- HTTP 400 (bad_data), 422 (execution), 503 (timeout), other non-200, connection errors and
  client timeouts raise QueryFailure with a reason; the caller keeps its last good snapshot.
- An empty vector is not an error but means "no data": no substation gets a score from it.
- A series without the identifying label is dropped and reported.
- NaN and +/-Inf values are dropped and reported: such a substation is not eligible.
- Several series for one substation keep the most pessimistic value and are reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from balancer.policy import Better, Policy
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


def make_client(base_url: str, timeout_s: float = 2.0,
                headers: Mapping[str, str] | None = None) -> PrometheusConnect:
    # The library's default retries 3 times with a 1 s backoff on 5xx: a refresh would stall for
    # seconds while the snapshot ages. The refresh loop itself is the retry, so retry nothing.
    return PrometheusConnect(url=base_url.rstrip("/"), headers=dict(headers or {}),
                             retry=Retry(total=0, raise_on_status=False),
                             # requests takes float seconds; the library's hint says int
                             timeout=timeout_s)  # type: ignore[arg-type]


def run_query(client: QueryClient, promql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One instant query -> its vector result, or QueryFailure saying why not."""
    try:
        result = client.custom_query(promql, params=dict(params))
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
    except (ValueError, KeyError, TypeError) as exc:
        raise QueryFailure("bad_response", f"not a Prometheus API answer: {exc}") from exc
    if not isinstance(result, list) or not all(
            isinstance(s, dict) and "value" in s for s in result):
        raise QueryFailure("bad_response",
                           f"expected an instant vector, got {str(result)[:120]}")
    return result


def read_vector(result: list[dict[str, Any]], key_label: str,
                keep: Callable[[float, float], float], what: str
                ) -> tuple[dict[str, float], dict[str, dict[str, str]], list[str]]:
    """Vector -> {label value: value}, the labels of each kept series, and the problems seen."""
    values: dict[str, float] = {}
    labels: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for series in result:
        metric = series.get("metric") or {}
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

    @property
    def up(self) -> str:
        return f'up{{job="{self.job}"}}'

    @property
    def scrape_time(self) -> str:
        return f'timestamp(up{{job="{self.job}"}})'

    @property
    def load(self) -> str:
        return f'substation_load{{job="{self.job}"}}'

    @property
    def capacity(self) -> str:
        return f'substation_capacity_kw{{job="{self.job}"}}'


def read_snapshot(client: QueryClient, policy: Policy, queries: GridQueries, at: float,
                  extra_params: Mapping[str, Any] | None = None) -> Snapshot:
    """Evaluate the grid queries and the policy at one instant -> a Snapshot."""
    # Evaluating every query at the same `time` keeps load, capacity and score consistent.
    params = {**(extra_params or {}), "time": f"{at:.3f}"}
    up, _, p_up = read_vector(run_query(client, queries.up, params), "instance", min, "up")
    scraped, _, p_ts = read_vector(run_query(client, queries.scrape_time, params), "instance",
                                   min, "scrape time")
    load, load_labels, p_load = read_vector(run_query(client, queries.load, params), "instance",
                                            max, "load")
    capacity, cap_labels, p_cap = read_vector(run_query(client, queries.capacity, params),
                                              "instance", min, "capacity")
    worst = max if policy.better is Better.LOWER else min
    scores, _, p_score = read_vector(run_query(client, policy.query, params),
                                     policy.substation_label, worst, f"policy {policy.name}")
    names = {inst: (cap_labels.get(inst) or load_labels.get(inst) or {}).get("substation", inst)
             for inst in up}
    by_name = {name: inst for inst, name in names.items()}
    scores_by_instance = {by_name.get(key, key): value for key, value in scores.items()}
    problems = p_up + p_ts + p_load + p_cap + p_score
    if not scores:
        problems.append(f"policy {policy.name}: the query returned no data")
    views = {
        inst: SubstationView(
            instance=inst, name=names[inst], up=up[inst] == 1.0, scrape_ts=scraped.get(inst, 0.0),
            load_kw=load.get(inst), capacity_kw=capacity.get(inst),
            score=scores_by_instance.get(inst),
        )
        for inst in up
    }
    return Snapshot(policy_name=policy.name, evaluated_at=at, substations=views,
                    problems=tuple(problems))
