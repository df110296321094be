"""What Prometheus says about the substations, once it has scraped after the run."""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException

from balancer.prom import QueryClient, QueryFailure, make_client, read_vector, run_query


@dataclass(frozen=True)
class PrometheusLoads:
    loads_kw: dict[str, float]    # by substation id
    error: str | None = None


def substation_loads(client: QueryClient) -> dict[str, float]:
    result = run_query(client, 'substation_load{job="substation"}', {})
    values, _, _ = read_vector(result, "substation", max, "load")
    return values


def scraped_after(client: QueryClient, since: float) -> bool:
    result = run_query(client, 'timestamp(up{job="substation"})', {})
    stamps, _, _ = read_vector(result, "instance", min, "scrape time")
    return bool(stamps) and all(ts > since for ts in stamps.values())


def loads_after(prometheus_url: str, since: float, wait_s: float = 10.0) -> PrometheusLoads:
    """substation_load per substation from a scrape newer than `since` (bounded wait)."""
    client = make_client(prometheus_url, timeout_s=2.0)
    try:
        deadline = time.monotonic() + wait_s
        while not scraped_after(client, since):
            if time.monotonic() > deadline:
                return PrometheusLoads(substation_loads(client),
                                       f"no scrape newer than the run after {wait_s:.0f} s")
            time.sleep(0.2)
        return PrometheusLoads(substation_loads(client))
    except (QueryFailure, PrometheusApiClientException, requests.RequestException) as exc:
        return PrometheusLoads({}, f"Prometheus at {prometheus_url} did not answer: {exc}")
