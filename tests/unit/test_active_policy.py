"""The fleet's policy: one active-policy file, written by POST /-/reload {"policy": ...} on any
replica, followed by every replica's refresh loop, read by a replica that (re)starts.

Pure functions first (the file's format, atomic writes, the starting choice), then real aiohttp
apps on loopback sharing one file, with Prometheus a FakeQueryClient."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from balancer.__main__ import parse_args
from balancer.active import ActiveChoice, ActivePolicyFile, parse_choice, starting_policy
from balancer.app import create_app
from balancer.config import BalancerConfig
from balancer.policy import PolicyError
from balancer.state import SERVING
from gridlb.grid import ConfigError
from tests.unit.test_refresh import FAST, eventually, fake, metric_value, policy_view

REPO = Path(__file__).resolve().parents[2]
A = "127.0.0.1:9101"
Client = TestClient[web.Request, web.Application]
SLOW = FAST.replace("name: fast", "name: slow").replace("100ms", "5m")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    (tmp_path / "policies" / "fast.yaml").write_text(FAST)
    (tmp_path / "policies" / "slow.yaml").write_text(SLOW)
    return tmp_path / "policies"


@pytest.fixture
def active_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "active-policy"


# -- the file -----------------------------------------------------------------------------------
def test_a_written_choice_reads_back_and_leaves_no_temporary_file(active_path: Path) -> None:
    active = ActivePolicyFile(active_path)
    assert active.read() is None                 # no file: no choice (the configured one serves)
    choice = ActiveChoice("least-load", "least-forecast-utilization", 1234.5, "host:8081")
    active.write(choice)
    assert active.read() == choice
    assert json.loads(active_path.read_text())["policy"] == "least-load"
    assert [p.name for p in active_path.parent.iterdir()] == ["active-policy"]


def test_a_write_that_cannot_happen_raises_and_keeps_the_old_file(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(OSError):
        ActivePolicyFile(tmp_path / "not-a-dir" / "active-policy").write(
            ActiveChoice("least-load", None))


def test_a_bare_name_written_by_hand_is_a_choice_over_any_default() -> None:
    assert parse_choice("least-load\n", "f") == ActiveChoice("least-load", None)


@pytest.mark.parametrize(("text", "message"), [
    ("../../etc/passwd", r"f: file: must be a policy name or a JSON object"),
    ('{"policy": "../x"}', r"f: policy: must name a policy file .*got '\.\./x'"),
    ('{"policy": "least-load", "colour": 1}', r"f: colour: unknown field"),
    ('{"policy": "least-load", "default": 3}', r"f: default: must name a policy file or be null"),
    ('{"policy": "least-load", "set_at": true}', r"f: set_at: must be a Unix time or null"),
    ('{"policy": "least-load", "set_by": []}', r"f: set_by: must be text or null"),
    ("[1, 2]", r"f: file: must be a JSON object with 'policy', got a list"),
    ("{}", r"f: policy: must name a policy file"),
])
def test_a_broken_file_is_refused_naming_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_choice(text, "f")


def test_bytes_that_are_not_utf8_or_too_long_are_refused(active_path: Path) -> None:
    active = ActivePolicyFile(active_path)
    with pytest.raises(ConfigError, match="not UTF-8"):
        active.parse(b"\xff\xfe")
    with pytest.raises(ConfigError, match="larger than 4096 bytes"):
        active.parse(b"a" * 5000)


# -- starting ------------------------------------------------------------------------------------
def test_a_replica_starts_on_the_fleets_choice(policy_dir: Path, active_path: Path) -> None:
    active = ActivePolicyFile(active_path)
    active.write(ActiveChoice("least-load", "least-utilization"))
    start = starting_policy(active, policy_dir, "least-utilization", "me:1")
    assert (start.policy.name, start.file, start.problem) == \
        ("least-load", policy_dir / "least-load.yaml", None)


def test_without_a_file_a_replica_starts_on_the_configured_policy(policy_dir: Path,
                                                                  active_path: Path) -> None:
    start = starting_policy(ActivePolicyFile(active_path), policy_dir, "least-utilization",
                            "me:1")
    assert start.policy.name == "least-utilization" and start.problem is None
    assert not active_path.exists()


def test_a_changed_configuration_wins_over_an_older_choice_and_is_recorded(
        policy_dir: Path, active_path: Path) -> None:
    active = ActivePolicyFile(active_path)
    active.write(ActiveChoice("least-load", "least-utilization"))
    # grid.yaml's policy was edited (least-utilization -> rate-weighted), then a restart:
    start = starting_policy(active, policy_dir, "rate-weighted", "me:1", clock=lambda: 99.0)
    assert start.policy.name == "rate-weighted" and start.problem is None
    assert active.read() == ActiveChoice("rate-weighted", "rate-weighted", 99.0, "me:1")


def test_a_choice_naming_a_broken_policy_starts_on_the_configured_one_and_says_why(
        policy_dir: Path, active_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (policy_dir / "broken.yaml").write_text("name: broken\nquery: sum(up\n")
    active = ActivePolicyFile(active_path)
    active.write(ActiveChoice("broken", None))
    with caplog.at_level(logging.ERROR, logger="balancer.active"):
        start = starting_policy(active, policy_dir, "least-load", "me:1")
    assert start.policy.name == "least-load"
    assert start.problem is not None and "broken.yaml: query: PromQL does not parse" in \
        start.problem and "started on the configured policy least-load" in start.problem
    assert "names broken, which is refused" in caplog.text


def test_a_broken_active_file_starts_on_the_configured_policy(policy_dir: Path,
                                                              active_path: Path) -> None:
    active_path.parent.mkdir()
    active_path.write_text("{not json")
    start = starting_policy(ActivePolicyFile(active_path), policy_dir, "least-load", "me:1")
    assert start.policy.name == "least-load"
    assert start.problem is not None and str(active_path) in start.problem


def test_a_broken_configured_policy_still_refuses_to_start(policy_dir: Path,
                                                           active_path: Path) -> None:
    (policy_dir / "least-load.yaml").write_text("name: least-load\nquery: sum(up\n")
    with pytest.raises(PolicyError, match=r"least-load\.yaml: query: PromQL does not parse"):
        starting_policy(ActivePolicyFile(active_path), policy_dir, "least-load", "me:1")


def test_the_best_measured_policy_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRID_INTERNAL_TOKEN", "t0k")
    assert BalancerConfig().policy == "least-forecast-utilization"
    assert parse_args([]).policy == "least-forecast-utilization"
    assert parse_args([]).active_policy_file is None
    assert parse_args(["--active-policy-file", "/data/active-policy"]).active_policy_file == \
        "/data/active-policy"


# -- replicas sharing the file ------------------------------------------------------------------
def put(path: Path, text: str) -> None:
    """An operator's hand edit (small files: blocking the test's event loop is harmless)."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)


def remove(path: Path) -> None:
    path.unlink()


def exists(path: Path) -> bool:
    return path.exists()


MakeReplica = Callable[..., Awaitable[Client]]


@pytest.fixture
def replica(aiohttp_client: Any, policy_dir: Path, active_path: Path) -> MakeReplica:
    async def make(policy: str = "fast", prometheus: Any = None, **config: Any) -> Client:
        cfg = BalancerConfig(policy_dir=str(policy_dir), policy=policy, seed=1,
                             active_policy_file=str(active_path), **config)
        client: Client = await aiohttp_client(create_app(
            cfg, client=prometheus or fake({A: (10.0, 100.0)})))
        return client
    return make


async def serving_policy(client: Client) -> str:
    return str((await policy_view(client))["policy"])


async def metric_lines(client: Client, name: str) -> list[str]:
    text = await (await client.get("/metrics")).text()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


async def test_a_switch_on_one_replica_reaches_the_other_without_waiting_its_interval(
        replica: MakeReplica, active_path: Path) -> None:
    # Both on a policy evaluated every 5 minutes: only watching the file can switch the other.
    one, other = await replica("slow"), await replica("slow")
    await eventually(lambda: _has_score(other, "slow"), "the other replica's first evaluation")
    resp = await one.post("/-/reload", json={"policy": "least-load"})
    body = await resp.json()
    assert resp.status == 200 and body["fleet_wide"] is True, body
    assert body["active_policy_file"] == str(active_path)
    assert await serving_policy(one) == "least-load"

    async def switched() -> bool:
        return await serving_policy(other) == "least-load"
    # (a correctness check, not a speed target: the other replica's interval is 5 minutes)
    await eventually(switched, "the other replica to follow the file", timeout_s=10.0)
    shown = (await policy_view(other))["active_policy"]
    assert shown["policy"] == "least-load" and shown["default"] == "slow"
    # Exactly one info series, and no score series of the policy that no longer serves.
    await eventually(lambda: _has_score(other, "least-load"), "the new policy's scores")
    assert await metric_lines(other, "balancer_policy_info") == \
        ['balancer_policy_info{policy="least-load"} 1.0']
    assert all('policy="least-load"' in line
               for line in await metric_lines(other, "balancer_policy_score"))


async def _has_score(client: Client, policy: str) -> bool:
    return any(f'policy="{policy}"' in line
               for line in await metric_lines(client, "balancer_policy_score"))


async def test_a_restarted_replica_starts_on_the_fleets_choice(replica: MakeReplica) -> None:
    one = await replica("fast")
    assert (await one.post("/-/reload", json={"policy": "least-load"})).status == 200
    restarted = await replica("fast")           # same configuration, as after a crash
    assert await serving_policy(restarted) == "least-load"


async def test_without_an_active_file_a_switch_is_this_replicas_alone(
        aiohttp_client: Any, policy_dir: Path) -> None:
    cfg = BalancerConfig(policy_dir=str(policy_dir), policy="fast", seed=1)
    client: Client = await aiohttp_client(create_app(cfg, client=fake({A: (10.0, 100.0)})))
    body = await (await client.post("/-/reload", json={"policy": "least-load"})).json()
    assert (body["policy"], body["fleet_wide"], body["active_policy_file"]) == \
        ("least-load", False, None)
    assert (await policy_view(client))["active_policy"] is None


async def test_a_choice_that_cannot_be_saved_switches_no_replica(
        aiohttp_client: Any, policy_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    cfg = BalancerConfig(policy_dir=str(policy_dir), policy="fast", seed=1,
                         active_policy_file=str(tmp_path / "a-file" / "active-policy"))
    client: Client = await aiohttp_client(create_app(cfg, client=fake({A: (10.0, 100.0)})))
    resp = await client.post("/-/reload", json={"policy": "least-load"})
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "policy_not_saved", body
    assert "a-file/active-policy" in body["detail"] and "no replica switched" in body["detail"]
    assert body["serving"] == "fast" and await serving_policy(client) == "fast"


async def test_a_refused_policy_is_not_written_for_the_fleet(
        replica: MakeReplica, policy_dir: Path, active_path: Path) -> None:
    (policy_dir / "broken.yaml").write_text("name: broken\nquery: sum(up\n")
    one = await replica("fast")
    resp = await one.post("/-/reload", json={"policy": "broken"})
    assert resp.status == 422 and (await resp.json())["error"] == "invalid_policy"
    assert not exists(active_path)
    # The refusal stays visible: the loop does not quietly reload the serving file over it.
    assert one.app is not None
    evaluations = one.app[SERVING].evaluations
    before = evaluations.attempted_at or 0.0

    async def evaluated_again() -> bool:
        return (evaluations.attempted_at or 0.0) > before + 0.25
    await eventually(evaluated_again, "more evaluations on the 100 ms interval")
    assert "PromQL does not parse" in (await policy_view(one))["reload_error"]


async def test_a_path_is_not_a_policy_name(replica: MakeReplica) -> None:
    one = await replica("fast")
    resp = await one.post("/-/reload", json={"policy": "../fast"})
    body = await resp.json()
    assert resp.status == 422 and body["error"] == "invalid_request"
    assert body["detail"].startswith("policy: must be a policy name")


async def test_a_hand_edit_naming_a_broken_policy_keeps_the_last_good_one_serving(
        replica: MakeReplica, policy_dir: Path, active_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    one = await replica("fast")
    await eventually(lambda: _has_score(one, "fast"), "the first evaluation")
    (policy_dir / "broken.yaml").write_text("name: broken\nquery: sum(up\n")
    put(active_path, "broken\n")

    async def refused() -> bool:
        return "broken.yaml" in ((await policy_view(one))["reload_error"] or "")
    await eventually(refused, "the refusal to show in /policy")
    assert await serving_policy(one) == "fast"
    assert await metric_value(one, "balancer_policy_reloads_total", result="error") == 1
    # Fixing the file it names is picked up without touching the active file.
    (policy_dir / "broken.yaml").write_text(FAST.replace("name: fast", "name: broken"))

    async def followed() -> bool:
        return await serving_policy(one) == "broken"
    await eventually(followed, "the fixed policy to serve")


async def test_a_garbled_active_file_is_shown_and_changes_nothing(
        replica: MakeReplica, active_path: Path) -> None:
    one = await replica("fast")
    put(active_path, '{"policy": 7}')

    async def refused() -> bool:
        return "policy: must name a policy file" in \
            ((await policy_view(one))["reload_error"] or "")
    await eventually(refused, "the refusal to show in /policy")
    view = await policy_view(one)
    assert view["policy"] == "fast"
    assert "policy: must name a policy file" in view["active_policy"]["error"]


async def test_removing_the_file_returns_every_replica_to_the_configured_policy(
        replica: MakeReplica, active_path: Path) -> None:
    one = await replica("fast")
    assert (await one.post("/-/reload", json={"policy": "least-load"})).status == 200
    remove(active_path)

    async def back() -> bool:
        return await serving_policy(one) == "fast"
    await eventually(back, "the configured policy to serve again")
