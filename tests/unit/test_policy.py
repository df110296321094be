from __future__ import annotations

from pathlib import Path

import pytest

from balancer.policy import (
    Better,
    PendingAdjustment,
    PolicyError,
    SelectMode,
    load_policy,
    parse_duration,
)

REPO = Path(__file__).resolve().parents[2]
GOOD = """\
name: {name}
query: substation_load{{job="substation"}}
result:
  better: lower
refresh_interval: 2s
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["least-load", "least-utilization", "rate-weighted"])
def test_shipped_policies_load(name: str) -> None:
    policy = load_policy(REPO / "policies" / f"{name}.yaml")
    assert policy.name == name
    assert policy.substation_label == "instance"


def test_shipped_rate_weighted_is_weighted_by_headroom() -> None:
    policy = load_policy(REPO / "policies" / "rate-weighted.yaml")
    assert policy.select is SelectMode.WEIGHTED
    assert policy.better is Better.HIGHER
    assert policy.pending_adjustment is PendingAdjustment.HEADROOM


def test_defaults_fill_unset_result_fields(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "mine", GOOD.format(name="mine")))
    assert policy.select is SelectMode.BEST
    assert policy.pending_adjustment is PendingAdjustment.KW
    assert policy.refresh_interval_s == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", r"mine\.yaml: not valid YAML"),
        ("- a list\n", r"top level: must be a mapping"),
        (GOOD.format(name="other"), r"name: 'other' must match the file name 'mine'"),
        (GOOD.format(name="Bad Name"), r"name: must be lowercase"),
        ("name: mine\nresult: {}\n", r"query: is required"),
        ("name: mine\nquery: sum(substation_load\n", r"query: PromQL does not parse: unclosed"),
        ("name: mine\nquery: nosuchfunc(up)\n", r"unknown function with name 'nosuchfunc'"),
        (GOOD.format(name="mine") + "colour: blue\n", r"colour: unknown field"),
        ("name: mine\nquery: up\nresult: {better: sideways}\n",
         r"result\.better: must be one of lower, higher, got 'sideways'"),
        ("name: mine\nquery: up\nresult: {select: roulette}\n",
         r"result\.select: must be one of best, weighted"),
        ("name: mine\nquery: up\nresult: {pending_adjustment: magic}\n",
         r"result\.pending_adjustment: must be one of kw, utilization, headroom, none"),
        ("name: mine\nquery: up\nresult: {substation_label: 'not a label'}\n",
         r"result\.substation_label: must be a Prometheus label name"),
        ("name: mine\nquery: up\nresult: {select: weighted, better: lower}\n",
         r"a weighted policy needs better: higher"),
        ("name: mine\nquery: up\nrefresh_interval: soon\n",
         r"refresh_interval: must be a duration between 100ms and 5m"),
        ("name: mine\nquery: up\nrefresh_interval: 10m\n", r"refresh_interval: must be"),
        ("name: mine\nquery: up\ntie_tolerance: -1\n", r"tie_tolerance: must be a number >= 0"),
        ("name: mine\nquery: up\nresult: [1]\n", r"result: must be a mapping"),
        ("name: mine\nquery: up\nresult: {order: asc}\n", r"result\.order: unknown field"),
    ],
)
def test_each_bad_policy_gets_its_own_message(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy(write(tmp_path, "mine", text))


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = "name: mine\nquery: sum(\nresult: {better: up, select: x}\nrefresh_interval: 0\n"
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, "mine", text))
    assert len(caught.value.problems) == 4
    assert str(caught.value).startswith(str(tmp_path / "mine.yaml"))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.yaml: cannot read file"):
        load_policy(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("raw", "seconds"),
                         [("500ms", 0.5), ("1s", 1.0), ("2m", 120.0), (3, 3.0), ("1h", None),
                          (True, None), ("", None)])
def test_parse_duration(raw: object, seconds: float | None) -> None:
    assert parse_duration(raw) == seconds
