from __future__ import annotations

from pathlib import Path

import pytest

from balancer.policy import (
    MAX_FILE_BYTES,
    Better,
    LoadAging,
    PendingAdjustment,
    Policy,
    PolicyError,
    SelectMode,
    load_policy,
    parse_duration,
    parse_policy,
    policy_path,
    render_query,
)
from balancer.prom import GridQueries
from gridlb.grid import show
from tests.conftest import make_policy

REPO = Path(__file__).resolve().parents[2]
REPO_POLICY = REPO / "policies" / "least-utilization.yaml"
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


@pytest.mark.parametrize("name", ["least-load", "least-utilization", "rate-weighted",
                                  "most-deliverable-energy"])
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
        ("name: mine\nquery: up\ntie_tolerance: -1\n",
         r"tie_tolerance: must be a finite number between 0 and 1e\+09, got -1"),
        ("name: mine\nquery: up\nresult: [1]\n", r"result: must be a mapping"),
        ("name: mine\nquery: up\nresult: {order: asc}\n", r"result\.order: unknown field"),
        ("name: mine\nquery: up\ntie_tolerance: .nan\n",
         r"tie_tolerance: must be a finite number between 0 and 1e\+09, got nan"),
        ("name: mine\nquery: up\ntie_tolerance: .inf\n", r"tie_tolerance: .*got inf"),
        ("name: mine\nquery: up\ntie_tolerance: 1.0e+10\n", r"tie_tolerance: .*got 10000000000\.0"),
        ("name: mine\nquery: up\ntie_tolerance: " + "9" * 400 + "\n",
         r"tie_tolerance: .*got a huge integer"),
        ("name: mine\nquery: up\ntie_tolerance: '0.5'\n", r"tie_tolerance: .*got '0\.5'"),
        ("name: mine\nquery: up\ntie_tolerance: [1, 2]\n", r"tie_tolerance: .*got a list"),
        ("name: mine\nquery: up\nrefresh_interval: .nan\n", r"refresh_interval: must be"),
        ("name: mine\nquery: up\nrefresh_interval: " + "9" * 400 + "\n",
         r"refresh_interval: .*got a huge integer"),
        ("name: mine\nquery: up\nrefresh_interval: -1s\n", r"refresh_interval: must be"),
        ("name: \"mine\\n\"\nquery: up\n", r"name: must be lowercase"),
        ("name: mine\nquery: 42\n", r"query: must be non-empty text, got 42"),
        ("name: mine\nquery: up\ndescription: \"\\ud800\"\n",
         r"description: must be valid Unicode text"),
        ("name: mine\nquery: up\ndescription: " + "x" * 2001 + "\n",
         r"description: must be at most 2000 characters"),
        ("name: mine\nquery: up\n1: one\nnull: nothing\n", r"1: unknown field.*None: unknown"),
        ("name: mine\nquery: up\nresult: {better: [lower]}\n",
         r"result\.better: must be one of lower, higher, got a list"),
        ("name: mine\nquery: up\nwhen: 2023-02-30\n", r"not valid YAML: day is out of range"),
        ("name: mine\nquery: up\nx: " + "[" * 5000 + "]" * 5000 + "\n",
         r"not valid YAML: nested too deeply"),
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


def test_a_file_that_is_not_utf8_is_refused_naming_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_bytes(GOOD.format(name="mine").encode() + b"description: caf\xe9\n")
    with pytest.raises(PolicyError, match=r"mine\.yaml: file: not UTF-8 text \(byte 0xe9 at "
                                          r"offset \d+\)"):
        load_policy(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.format(name="mine").encode())
    assert load_policy(path).name == "mine"


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "mine", GOOD.format(name="mine") + "#" * 70_000 + "\n")
    with pytest.raises(PolicyError, match=r"file: larger than 64 KiB"):
        load_policy(path)


def test_an_alias_bomb_is_reported_without_expanding_it(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
              for i in range(1, 30)]
    text = "\n".join(lines) + "\nname: mine\nquery: up\ntie_tolerance: *a29\n"
    with pytest.raises(PolicyError, match=r"tie_tolerance: .*got a list"):
        load_policy(write(tmp_path, "mine", text))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.yaml: cannot read file"):
        load_policy(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("raw", "seconds"),
                         [("500ms", 0.5), ("1s", 1.0), ("2m", 120.0), (3, 3.0), ("1h", None),
                          (True, None), ("", None)])
def test_parse_duration(raw: object, seconds: float | None) -> None:
    assert parse_duration(raw) == seconds


def parse(raw: object) -> Policy:
    return parse_policy(raw, source="policies/mine.yaml")


MINIMAL = {"name": "mine", "query": "substation_load"}


@pytest.mark.parametrize(("raw", "problems"), [
    ([1], ["top level: must be a mapping with name, query and result, got a list"]),
    ({"name": "mine"}, ["query: is required"]),
    ({**MINIMAL, "result": [1]}, ["result: must be a mapping, got a list"]),
    ({**MINIMAL, "colour": "blue"},
     ["colour: unknown field (known: description, name, query, refresh_interval, result, "
      "tie_tolerance)"]),
    ({**MINIMAL, "result": {"order": "asc"}},
     ["result.order: unknown field (known: better, load_aging, pending_adjustment, select, "
      "substation_label)"]),
    ({**MINIMAL, "result": {"select": "weighted"}},
     ["result.better: a weighted policy needs better: higher (the score is a weight)"]),
    ({**MINIMAL, "refresh_interval": "soon"},
     ["refresh_interval: must be a duration between 100ms and 5m (e.g. '1s'), got 'soon'"]),
    ({**MINIMAL, "refresh_interval": "99ms"},
     ["refresh_interval: must be a duration between 100ms and 5m (e.g. '1s'), got '99ms'"]),
    ({**MINIMAL, "refresh_interval": 300.5},
     ["refresh_interval: must be a duration between 100ms and 5m (e.g. '1s'), got 300.5"]),
    ({**MINIMAL, "tie_tolerance": "wide"},
     ["tie_tolerance: must be a finite number between 0 and 1e+09, got 'wide'"]),
    ({**MINIMAL, "tie_tolerance": True},
     ["tie_tolerance: must be a finite number between 0 and 1e+09, got True"]),
    ({**MINIMAL, "description": 5}, ["description: must be text, got 5"]),
], ids=["not-a-mapping", "no-query", "result-not-a-mapping", "unknown-field",
        "unknown-result-field", "weighted-lower", "interval-unreadable", "interval-too-short",
        "interval-too-long", "tolerance-text", "tolerance-bool", "description-not-text"])
def test_each_problem_is_reported_exactly(raw: object, problems: list[str]) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(raw)
    assert caught.value.problems == problems
    assert caught.value.path == "policies/mine.yaml"


def test_a_minimal_policy_gets_every_default() -> None:
    policy = parse(MINIMAL)
    assert (policy.substation_label, policy.better, policy.select, policy.pending_adjustment,
            policy.refresh_interval_s, policy.tie_tolerance, policy.description) == \
        ("instance", Better.LOWER, SelectMode.BEST, PendingAdjustment.KW, 1.0, 0.0, "")
    assert (policy.name, policy.query, policy.source) == \
        ("mine", "substation_load", "policies/mine.yaml")


def test_every_field_is_read_as_written() -> None:
    policy = parse({"name": "mine", "description": "  Spread by headroom.\n",
                    "query": "  clamp_min(substation_capacity_kw - substation_load, 0)\n",
                    "result": {"substation_label": "substation", "better": "higher",
                               "select": "weighted", "pending_adjustment": "headroom"},
                    "refresh_interval": "500ms", "tie_tolerance": 2})
    assert (policy.description, policy.query, policy.substation_label, policy.better,
            policy.select, policy.pending_adjustment, policy.refresh_interval_s,
            policy.tie_tolerance) == \
        ("Spread by headroom.", "clamp_min(substation_capacity_kw - substation_load, 0)",
         "substation", Better.HIGHER, SelectMode.WEIGHTED, PendingAdjustment.HEADROOM, 0.5, 2.0)


@pytest.mark.parametrize("interval", ["100ms", 0.1, "5m", 300])
def test_the_refresh_interval_bounds_are_inclusive(interval: object) -> None:
    assert parse({**MINIMAL, "refresh_interval": interval}).refresh_interval_s in (0.1, 300.0)


def test_a_policy_file_is_found_by_name() -> None:
    assert policy_path("policies", "least-load") == Path("policies/least-load.yaml")
    assert policy_path(Path("/etc/grid"), "x") == Path("/etc/grid/x.yaml")


@pytest.mark.parametrize(("value", "shown"), [
    (None, "None"), (True, "True"), (1.5, "1.5"), (1000, "1000"), (10**20 - 1, repr(10**20 - 1)),
    (10**20, "a huge integer"), (-(10**20), "a huge integer"),
    ("x" * 60, repr("x" * 60)), ("x" * 61, repr("x" * 57 + "...")),
    ("\x1f" * 15, "'" + "\\x1f" * 15 + "'"), ("\x1f" * 16, "'" + "\\x1f" * 14 + "\\...'"),
    ("\U0001019d" * 6 + "0", "'" + "\\U0001019d" * 5 + "\\U00010...'"),
    ([1], "a list"), ({"a": 1}, "a mapping"), ({1}, "a set"), (b"x", "a bytes"),
])
def test_values_are_quoted_short_and_never_as_a_structure(value: object, shown: str) -> None:
    assert show(value) == shown


@pytest.mark.parametrize(("raw", "problems"), [
    ({**MINIMAL, "name": "Bad Name"},
     ["name: must be lowercase letters, digits, '-' or '_', got 'Bad Name'"]),
    ({**MINIMAL, "bad key": 1},
     ["'bad key': unknown field (known: description, name, query, refresh_interval, result, "
      "tie_tolerance)"]),
    ({**MINIMAL, "result": {"substation_label": "not a label"}},
     ["result.substation_label: must be a Prometheus label name, got 'not a label'"]),
    ({**MINIMAL, "tie_tolerance": 1e9 * 2},
     ["tie_tolerance: must be a finite number between 0 and 1e+09, got 2000000000.0"]),
    ({**MINIMAL, "description": "x" * 2001},
     ["description: must be at most 2000 characters, got 2001"]),
], ids=["bad-name", "odd-key", "bad-label", "tolerance-too-large", "description-too-long"])
def test_each_problem_quotes_what_was_given(raw: object, problems: list[str]) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(raw)
    assert caught.value.problems == problems


def test_limits_are_inclusive() -> None:
    policy = parse({**MINIMAL, "tie_tolerance": 1e9, "description": "x" * 2000})
    assert policy.tie_tolerance == 1e9 and len(policy.description) == 2000


def test_a_file_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not(
        tmp_path: Path) -> None:
    text = GOOD.format(name="mine")
    path = write(tmp_path, "mine", text + "#" * (MAX_FILE_BYTES - len(text) - 1) + "\n")
    assert path.stat().st_size == MAX_FILE_BYTES and load_policy(path).name == "mine"
    path.write_text(path.read_text() + "#")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert (caught.value.path, caught.value.problems) == \
        (str(path), ["file: larger than 64 KiB; a policy is a few lines of YAML"])


def test_a_file_that_is_not_utf8_is_named_with_the_offending_byte(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_bytes(b"name: mine\ndescription: caf\xe9\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.problems == [
        "file: not UTF-8 text (byte 0xe9 at offset 27); save it as UTF-8"]


def test_a_long_yaml_error_is_cut_to_300_characters(tmp_path: Path) -> None:
    path = write(tmp_path, "mine", "name: !" + "t" * 400 + " x\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (problem,) = caught.value.problems
    assert problem.startswith("not valid YAML: could not determine a constructor")
    assert len(problem) == len("not valid YAML: ") + 300


def test_load_aging_is_read_and_defaults_to_none() -> None:
    assert make_policy().load_aging is LoadAging.NONE
    assert make_policy(result={"load_aging": "forecast"}).load_aging is LoadAging.FORECAST


def test_an_unknown_load_aging_is_refused_with_the_choices() -> None:
    with pytest.raises(PolicyError, match=r"result\.load_aging: must be one of none, forecast, "
                                          r"got 'predict'"):
        make_policy(result={"load_aging": "predict"})


def test_a_policy_query_may_use_grid_and_nothing_else(tmp_path: Path) -> None:
    text = (REPO_POLICY.read_text().replace('grid="$grid"', 'grid="$grid", zone="$zone"'))
    path = tmp_path / "least-utilization.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=r"query: unknown variable \$zone \(known: \$grid\)"):
        load_policy(path)


def test_the_grid_is_filled_in_before_evaluation_and_selects_every_grid_query() -> None:
    policy = load_policy(REPO_POLICY)
    assert 'grid="$grid"' in policy.query
    queries = GridQueries(grid="north")
    assert queries.render(policy.query).count('grid="north"') == 2
    assert "$grid" not in queries.render(policy.query)
    for q in (queries.up, queries.scrape_time, queries.load, queries.capacity, queries.roster,
              queries.balancers, queries.load_seq, queries.forecast):
        assert 'grid="north"' in q, q
    # Without a name: series that carry no grid label.
    assert 'grid=""' in GridQueries().up and render_query("$grid", {"grid": ""}) == ""
    assert render_query('x{a="$other"}', {"grid": "g"}) == 'x{a="$other"}'
