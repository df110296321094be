"""Fakes shared by the unit tests: small stand-ins for the Protocols the code depends on."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings

from balancer.policy import Policy, parse_policy
from balancer.snapshot import Snapshot, SubstationView

# CI (.ci/run sets HYPOTHESIS_PROFILE=ci) tries the same examples on every run, so a red CI means
# the change broke something, not that this run happened to draw a new input. Runs elsewhere
# draw new examples each time, which is how such inputs are found: a failure prints its example,
# which then becomes an explicit @example of its test.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "explore"))


class FakeQueryClient:
    """A QueryClient answering each PromQL string from a table (or a callable)."""

    def __init__(self, answers: dict[str, Any] | None = None,
                 default: Callable[[str], Any] | None = None) -> None:
        self.answers = answers or {}
        self.default = default
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def custom_query(self, query: str, params: dict[str, Any]) -> Any:
        self.calls.append((query, dict(params)))
        answer = self.answers.get(query)
        if answer is None and self.default is not None:
            answer = self.default(query)
        if isinstance(answer, Exception):
            raise answer
        return answer if answer is not None else []


def series(value: float | str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1_700_000_000.0, str(value)]}


def make_policy(**overrides: Any) -> Policy:
    raw: dict[str, Any] = {
        "name": "test-policy",
        "query": 'sum by (instance) (substation_load{job="substation"})',
        "result": {"substation_label": "instance", "better": "lower", "select": "best",
                   "pending_adjustment": "kw"},
        "refresh_interval": "1s",
    }
    result_overrides = overrides.pop("result", {})
    raw["result"].update(result_overrides)
    raw.update(overrides)
    return parse_policy(raw, source="policies/test-policy.yaml")


def make_snapshot(*views: SubstationView, at: float = 1000.0) -> Snapshot:
    return Snapshot(policy_name="test-policy", evaluated_at=at,
                    substations={v.instance: v for v in views})


def view(instance: str, load_kw: float | None, capacity_kw: float | None, *,
         score: float | None = None, up: bool = True, scrape_ts: float = 1000.0,
         name: str | None = None) -> SubstationView:
    return SubstationView(instance=instance, name=name or instance, up=up, scrape_ts=scrape_ts,
                          load_kw=load_kw, capacity_kw=capacity_kw,
                          score=load_kw if score is None else score)


@pytest.fixture
def fake_prometheus() -> FakeQueryClient:
    return FakeQueryClient()
