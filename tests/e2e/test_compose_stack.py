"""`docker compose up`, for real: the Compose stack of docker-compose.yml end to end.

One stack for the module, on a real Docker engine when one answers, else on podman's Docker API
(scripts/ensure-container-engine.sh installs and starts it as root on Debian). Skipped, saying
why, only where no engine can be had; once one has answered, every problem is a failure.
Everything is asserted through the published ports (the ingress and Prometheus, on free ports
on 127.0.0.1); the engine API is used to scale, crash and list containers, and to send requests
from inside the Compose network for the internal token. The tests run in order on one stack:
healthy, rush hour, scale to 4, crash a substation, down + up.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from docker.models.containers import Container

docker = pytest.importorskip("docker", reason="the Python docker package is not installed")

from gridlb.promconfig import REPO_ROOT  # noqa: E402
from gridlb.stack import free_port  # noqa: E402
from tests.e2e import engine as engines  # noqa: E402
from tests.e2e.images import (  # noqa: E402
    OFFICIAL_GRAFANA,
    registry_images_present,
)
from tests.e2e.lifecycle import Prepared, compose_stack  # noqa: E402
from tests.e2e.stack import (  # noqa: E402
    APP_SERVICES,
    SERVICE_LABEL,
    ComposeStack,
    Response,
    http,
    repository_files,
    secret_candidates,
    wait_for,
)

pytestmark = pytest.mark.e2e

RUSH = 50
RUSH_KW = 11.0
SESSION_KWH = 500.0      # 45 real minutes at the stack's speed factor 60: none ends mid-test
SCALE_DEADLINE_S = 30.0
HEALTHY_TIMEOUT_S = 180.0
SPEED_FACTOR = 60.0       # docker-compose.yml's --speed-factor
SAVE_LAG_KWH = RUSH_KW * SPEED_FACTOR * 6.0 / 3600   # the substation saves every 5 s (+1 s)
FOUR = ("substation-1", "substation-2", "substation-3", "substation-4")
GRAFANA_LEFT_OUT = (
    "Grafana is left out of this run: no Grafana image can be pulled here or built from "
    "Debian's packages. Its provisioning is checked on its own: dashboard uid/title/panels and "
    "provider path (tests/unit/test_dashboard.py, tests/unit/test_compose.py), every panel's "
    "PromQL against a live Prometheus (tests/integration/test_dashboard_live.py), and its "
    "datasource URL from inside this stack's network "
    "(test_grafana_datasource_url_reaches_this_stacks_prometheus)")


@pytest.fixture(scope="module")
def stack(engine: tuple[engines.Engine, str], tmp_path_factory: pytest.TempPathFactory,
          say: Callable[[str], None]) -> Iterator[ComposeStack]:
    ports = {"GRID_INGRESS_PORT": free_port(), "GRID_PROMETHEUS_PORT": free_port(),
             "GRID_GRAFANA_PORT": free_port()}
    def configure(ready: Prepared) -> ComposeStack:
        with_grafana = not ready.images.env and \
            registry_images_present(ready.client, say, [OFFICIAL_GRAFANA])
        if not with_grafana:
            say(GRAFANA_LEFT_OUT)
        settings = {**ready.images.env, **{k: str(v) for k, v in ports.items()},
                    "GRID_IMAGE": ready.app_image}
        env_file = tmp_path_factory.mktemp("compose") / "stack.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        # The secrets as a user gets them: the README's script adds every one the file needs.
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "compose-env.sh"), str(env_file)],
                       check=True, capture_output=True, timeout=30)
        values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        return ComposeStack(
            command=ready.command, project=ready.project, client=ready.client,
            env={**ready.base_env, **values}, env_file=env_file,
            services=APP_SERVICES + (("grafana",) if with_grafana else ()),
            ingress_port=ports["GRID_INGRESS_PORT"],
            prometheus_port=ports["GRID_PROMETHEUS_PORT"],
            api_key=values["GRID_API_KEYS"], internal_token=values["GRID_INTERNAL_TOKEN"])

    with compose_stack(engine, say, configure) as built:
        up_started = time.monotonic()
        built.up(substations=2)
        built.timings["up"] = time.monotonic() - up_started
        yield built


def substation_counts(results: list[Response]) -> Counter[str]:
    return Counter(r.body["substation"] for r in results)


def charge_many(stack: ComposeStack, n: int, prefix: str, workers: int = 10) -> list[Response]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(
            lambda i: stack.charge(f"{prefix}-{i}", RUSH_KW, SESSION_KWH), range(n)))
    failed = [r for r in results if r.status != 200]
    assert not failed, f"{len(failed)} of {n} requests failed: {failed[:3]}"
    for r in results:
        stack.sessions[r.body["session_id"]] = r.body["substation"]
    return results


def sessions_in_prometheus(stack: ComposeStack, substations: Iterable[str],
                           since: float = 0.0) -> dict[str, float] | None:
    """Active sessions per substation as Prometheus scraped them, once each of `substations`
    (and no other) has been scraped after `since` (epoch seconds); else None."""
    stamps = stack.by_label("timestamp(substation_active_sessions)")
    if set(stamps) != set(substations) or min(stamps.values()) < since:
        return None
    return stack.by_label("substation_active_sessions")


def containers_but(stack: ComposeStack, *services: str) -> dict[str, str]:
    """Name -> id of the stack's containers except those of `services`."""
    return {str(c.name): str(c.id) for c in stack.containers()
            if c.labels[SERVICE_LABEL] not in services}


def expected_sessions(stack: ComposeStack) -> dict[str, float]:
    return {k: float(v) for k, v in Counter(stack.sessions.values()).items()}


def test_stack_becomes_healthy(stack: ComposeStack, say: Callable[[str], None]) -> None:
    stack.timings["up to healthy"] = stack.wait_healthy(2, HEALTHY_TIMEOUT_S)
    say(f"healthy {stack.timings['up to healthy']:.0f} s after `up`")
    published = {}
    for container in stack.containers():
        for bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).values():
            for binding in bindings or []:
                published[container.labels[SERVICE_LABEL]] = binding["HostIp"]
    assert set(published) == {"ingress", "prometheus"} | (
        {"grafana"} if "grafana" in stack.services else set())
    assert set(published.values()) == {"127.0.0.1"}, f"published beyond loopback: {published}"


def log_max_size(stack: ComposeStack, container: Container) -> str | None:
    """The engine's cap on the container's log file, as it reports it."""
    options = container.attrs["HostConfig"]["LogConfig"].get("Config") or {}
    if "max-size" in options:
        return str(options["max-size"])                      # Docker: the options as given
    # podman's Docker API leaves the options out; its own API has the cap as "Size".
    answer = stack.client.api.get(
        f"{stack.client.api.base_url}/v4.0.0/libpod/containers/{container.id}/json")
    return str(answer.json()["HostConfig"]["LogConfig"].get("Size")) if answer.ok else None


def test_every_container_caps_its_logs_and_has_time_to_drain(stack: ComposeStack) -> None:
    """What docker-compose.yml asks for reached the engine: json-file logs of at most 10 MB
    (Docker keeps 3 such files; podman, which has no max-file, one) and 20 s before SIGKILL."""
    for container in stack.containers():
        name = container.labels[SERVICE_LABEL]
        log_config = container.attrs["HostConfig"]["LogConfig"]
        assert log_config["Type"] in ("json-file", "k8s-file"), (name, log_config)
        assert log_max_size(stack, container) in ("10m", "10MB"), (name, log_config)
        assert container.attrs["Config"].get("StopTimeout") == 20, (name, container.attrs["Config"])


def test_rush_hour_splits_evenly_and_prometheus_agrees(stack: ComposeStack) -> None:
    counts = substation_counts(charge_many(stack, RUSH, "rush"))
    assert sorted(counts) == ["substation-1", "substation-2"], counts
    assert all(abs(n - RUSH / 2) <= 2 for n in counts.values()), counts
    # Prometheus agrees: the same sessions and the same kW per substation.
    since = time.time()
    scraped = wait_for("Prometheus scraping the substations after the rush",
                       lambda: sessions_in_prometheus(stack, counts, since), 20)
    assert scraped == {k: float(n) for k, n in counts.items()}
    load = stack.by_label("substation_load")
    assert load == pytest.approx({k: n * RUSH_KW for k, n in counts.items()})


def test_scaled_substations_are_discovered_and_used_within_30s(
        stack: ComposeStack, say: Callable[[str], None]) -> None:
    others = containers_but(stack, "substation")
    scaled_at = time.monotonic()
    stack.up(substations=4)
    new = {"substation-3", "substation-4"}
    used: set[str] = set()
    discovered_s: float | None = None
    rounds = itertools.count()
    while time.monotonic() - scaled_at < SCALE_DEADLINE_S and not new <= used:
        if discovered_s is None and len(stack.query('up{job="substation"} == 1')) == 4:
            discovered_s = time.monotonic() - scaled_at
        used |= {r.body["substation"] for r in charge_many(stack, 2, f"scale-{next(rounds)}")}
        time.sleep(0.5)
    used_s = time.monotonic() - scaled_at
    if discovered_s is None and len(stack.query('up{job="substation"} == 1')) == 4:
        discovered_s = used_s   # seen in the same round as the first use
    assert discovered_s is not None, "Prometheus did not discover 4 substations within 30 s"
    assert new <= used, f"the balancer used {sorted(used)} within 30 s; never {sorted(new - used)}"
    stack.timings["scale: discovered"], stack.timings["scale: used"] = discovered_s, used_s
    say(f"--scale substation=4: Prometheus saw 4 after {discovered_s:.0f} s, "
        f"the balancer used both new ones after {used_s:.0f} s")
    assert containers_but(stack, "substation") == others, "scaling recreated other services"


def test_killed_substation_comes_back_with_its_sessions(
        stack: ComposeStack, engine: tuple[engines.Engine, str],
        say: Callable[[str], None]) -> None:
    if not engine[0].local:
        pytest.skip("the engine is remote: its processes cannot be crashed from here")
    victim = Counter(stack.sessions.values()).most_common(1)[0][0]
    instance = next(s["metric"]["instance"] for s in stack.query("substation_active_sessions")
                    if s["metric"]["substation"] == victim)
    container = next(c for c in stack.containers("substation")
                     if f"{stack.ip_of(c)}:9100" == instance)
    mine = [sid for sid, sub in stack.sessions.items() if sub == victim]
    before = {sid: http("GET", f"{stack.ingress}/sessions/{sid}", headers=stack.auth()).body
              for sid in mine}
    assert all(b["state"] == "charging" for b in before.values()), before
    restarts = container.attrs["RestartCount"]

    killed_at = time.time()
    os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)   # a crash, not a stop

    def restarted() -> bool | None:
        container.reload()
        ok = container.attrs["RestartCount"] > restarts and container.status == "running"
        return True if ok else None
    wait_for(f"{container.name} restarted by its restart policy", restarted, 30)
    back = wait_for(f"{victim} scraped again after its restart",
                    lambda: sessions_in_prometheus(stack, FOUR, killed_at), 30)
    assert back == expected_sessions(stack)
    stack.timings["crash: back in Prometheus"] = time.time() - killed_at
    say(f"{victim} SIGKILLed: restarted and scraped with its {len(mine)} sessions "
        f"after {time.time() - killed_at:.0f} s")
    for sid in mine:
        after = http("GET", f"{stack.ingress}/sessions/{sid}", headers=stack.auth())
        assert after.status == 200 and after.body["state"] == "charging", after
        assert after.body["substation"] == victim
        # Energy delivered reaches disk every few seconds: a crash may lose that much, no more.
        assert after.body["delivered_kwh"] >= before[sid]["delivered_kwh"] - SAVE_LAG_KWH, \
            (before[sid], after.body)


def test_down_and_up_keep_sessions_and_idempotency_replays(
        stack: ComposeStack, say: Callable[[str], None]) -> None:
    key = f"e2e-{secrets.token_hex(8)}"
    first = stack.charge("replayed", RUSH_KW, SESSION_KWH, idempotency_key=key)
    assert first.status == 200, first
    stack.sessions[first.body["session_id"]] = first.body["substation"]

    down_at = time.time()
    stack.down()                      # no --volumes: the named volumes stay
    stack.up(substations=4)           # the same scale brings every substation's slot back
    stack.timings["down + up to healthy"] = stack.wait_healthy(4, HEALTHY_TIMEOUT_S)
    say(f"down + up: healthy after {stack.timings['down + up to healthy']:.0f} s")

    scraped = wait_for("Prometheus scraping every substation after down + up",
                       lambda: sessions_in_prometheus(stack, FOUR, down_at), 30)
    assert scraped == expected_sessions(stack)
    # Prometheus's data is in a named volume: what it had before `down` is still there.
    lowest = stack.by_label("prometheus_tsdb_lowest_timestamp_seconds", "job")["prometheus"]
    assert lowest < down_at - 5, (lowest, down_at)
    # The series of the old containers' addresses (no staleness marker when Prometheus stops)
    # are gone within its 30 s lookback: Prometheus, so the balancer, sees only four substations.
    up_at = time.monotonic()
    wait_for("only the four recreated substations in `up`",
             lambda: True if stack.by_label('count(up{job="substation"})', "job") == {
                 "": 4.0} else None, 45)
    stack.timings["down + up: old series gone"] = time.monotonic() - up_at

    replay = stack.charge("replayed", RUSH_KW, SESSION_KWH, idempotency_key=key)
    assert replay.status == 200 and replay.headers.get("Idempotent-Replayed") == "true", replay
    assert replay.body["session_id"] == first.body["session_id"]
    reused = stack.charge("replayed", RUSH_KW + 1, SESSION_KWH, idempotency_key=key)
    assert reused.status == 422 and reused.body["error"] == "idempotency_key_reused", reused


def test_sessions_are_readable_through_the_ingress_after_down_and_up(
        stack: ComposeStack) -> None:
    for sid, substation in stack.sessions.items():
        answer = http("GET", f"{stack.ingress}/sessions/{sid}", headers=stack.auth())
        assert answer.status == 200, (sid, answer)
        assert answer.body["substation"] == substation and answer.body["state"] == "charging"


def test_prometheus_lifecycle_api_is_not_reachable_from_the_host(stack: ComposeStack) -> None:
    for method in ("POST", "PUT"):
        for path in ("/-/quit", "/-/reload"):
            answer = http(method, f"{stack.prometheus}{path}")
            assert answer.status == 403, (method, path, answer)
            assert "Lifecycle API is not enabled" in str(answer.body)
    assert http("GET", f"{stack.prometheus}/-/ready").status == 200


def test_grafana_datasource_url_reaches_this_stacks_prometheus(stack: ComposeStack) -> None:
    provisioning = REPO_ROOT / "grafana" / "provisioning" / "datasources"
    url = yaml.safe_load((provisioning / "prometheus.yml").read_text())["datasources"][0]["url"]
    # From inside the Compose network, where Grafana would be: the URL answers as Prometheus.
    probe = ("import json, sys, urllib.request; "
             "print(json.load(urllib.request.urlopen(sys.argv[1] + '/api/v1/query?query=up', "
             "timeout=5))['status'])")
    code, output = stack.run_inside("ingress", ["python", "-c", probe, url], {})
    assert (code, output.strip()) == (0, "success"), output


def test_no_secret_in_the_repository_is_accepted(stack: ComposeStack) -> None:
    candidates = sorted(secret_candidates(repository_files()))
    assert len(candidates) > 50, "the scan found almost nothing: is the repository there?"
    assert stack.api_key not in candidates and stack.internal_token not in candidates
    # The public API: a repository string as the API key is refused, the generated key works.
    probe = f"{stack.ingress}/sessions/no-such-session"
    assert http("GET", probe, headers=stack.auth()).status == 404

    def status(key: str) -> tuple[str, int]:
        return key, http("GET", probe, headers=stack.auth(key)).status
    with ThreadPoolExecutor(max_workers=8) as pool:
        accepted = [key for key, code in pool.map(status, candidates) if code != 401]
    assert not accepted, f"the ingress accepted repository strings as API keys: {accepted}"
    # The internal token, from inside the network (the balancer and substations are not
    # published): every candidate is refused by both, the generated token is accepted.
    program = """
import json, os, urllib.error, urllib.request
def status(url, token, body):
    req = urllib.request.Request(url, method="POST" if body else "GET", data=body,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
targets = [("http://balancer:8081/dispatch", b"{}"),
           ("http://substation:9100/sessions/no-such-session", None)]
out = {"good": [status(u, os.environ["GOOD"], b) for u, b in targets], "accepted": []}
for token in json.loads(os.environ["CANDIDATES"]):
    codes = [status(u, token, b) for u, b in targets]
    if any(code != 401 for code in codes):
        out["accepted"].append([token, codes])
print(json.dumps(out))
"""
    code, output = stack.run_inside("ingress", ["python", "-c", program], {
        "CANDIDATES": json.dumps(candidates), "GOOD": stack.internal_token})
    assert code == 0, output
    out = json.loads(output.strip().splitlines()[-1])
    assert all(code != 401 for code in out["good"]), out["good"]
    assert out["accepted"] == [], f"repository strings accepted as the internal token: {out}"


REPLICA_KW = 2.0          # small: these sessions must fit beside the rush's on four substations
MAX_KILL_KEYS = 300       # 600 kW at most, whatever the speed of the machine
CLIENT_PAUSE_S = 0.25     # between one client's requests: the traffic spans the kill and restart
KILL_BURST = 20           # concurrent charges sent to the replicas while one is frozen
FROZEN_S = 1.0            # how long it stays frozen before it is killed


def charge_until_definite(stack: ComposeStack, vehicle: str, key: str,
                          deadline_s: float = 30.0) -> tuple[Response, list[str]]:
    """What a careful client does: the same request with the same Idempotency-Key until it is
    answered 200 (or the deadline passes); returns the last answer and every answer's status
    and error code."""
    seen: list[str] = []
    until = time.monotonic() + deadline_s
    while True:
        answer = stack.charge(vehicle, REPLICA_KW, SESSION_KWH, idempotency_key=key)
        error = answer.body.get("error") if isinstance(answer.body, dict) else None
        seen.append(f"{answer.status} {error}" if error else str(answer.status))
        if answer.status == 200 or time.monotonic() > until:
            return answer, seen
        time.sleep(0.2)


def dispatches_by_replica(stack: ComposeStack) -> dict[str, float]:
    return stack.by_label("sum by (instance) (balancer_dispatch_duration_seconds_count)",
                          "instance")


def test_two_balancer_replicas_share_the_charges_and_a_killed_one_loses_no_retried_request(
        stack: ComposeStack, engine: tuple[engines.Engine, str],
        say: Callable[[str], None]) -> None:
    if not engine[0].local:
        pytest.skip("the engine is remote: its processes cannot be crashed from here")
    others = containers_but(stack, "balancer")
    before = dispatches_by_replica(stack)
    assert len(before) == 1, before
    scaled_at = time.monotonic()
    stack.up(substations=4, balancers=2)
    stack.wait_healthy(4, HEALTHY_TIMEOUT_S, balancers=2)
    assert containers_but(stack, "balancer") == others, \
        "scaling the balancer recreated other services"

    # Both replicas serve: the ingress finds the new one by DNS (every 5 s), Prometheus counts.
    rounds = itertools.count()

    def both_served() -> dict[str, float] | None:
        charged = [charge_until_definite(stack, f"replicas-{next(rounds)}",
                                         f"replicas-{secrets.token_hex(8)}", 10)[0]
                   for _ in range(4)]
        assert all(r.status == 200 for r in charged), charged
        for r in charged:
            stack.sessions[r.body["session_id"]] = r.body["substation"]
        now = dispatches_by_replica(stack)
        grown = {i: n for i, n in now.items() if n > before.get(i, 0)}
        return grown if len(grown) == 2 else None
    served = wait_for("both balancer replicas serving charges (their dispatch counts in "
                      "Prometheus)", both_served, SCALE_DEADLINE_S, period_s=0.5)
    stack.timings["balancer=2: both serving"] = time.monotonic() - scaled_at
    say(f"--scale balancer=2: both replicas served charges after "
        f"{stack.timings['balancer=2: both serving']:.0f} s ({served})")

    # Kill one replica (its process, a crash) while clients keep charging and retrying.
    victim = stack.containers("balancer")[0]
    restarts = victim.attrs["RestartCount"]
    keys = itertools.count()
    stop = threading.Event()
    # key, vehicle, when the first attempt was sent, the last answer, every answer
    results: list[tuple[str, str, float, Response, list[str]]] = []

    def one_key() -> bool:
        n = next(keys)
        if n >= MAX_KILL_KEYS:
            return False
        key, vehicle, sent = f"kill-{secrets.token_hex(8)}", f"kill-{n}", time.monotonic()
        answer, seen = charge_until_definite(stack, vehicle, key)
        results.append((key, vehicle, sent, answer, seen))
        return True

    def client() -> None:
        while not stop.is_set() and one_key():
            stop.wait(CLIENT_PAUSE_S)

    with ThreadPoolExecutor(max_workers=6 + KILL_BURST) as pool:
        clients = [pool.submit(client) for _ in range(6)]
        wait_for("charges flowing before the kill", lambda: True if len(results) >= 12 else None,
                 30, period_s=0.1)
        ip_before, pid = stack.ip_of(victim), victim.attrs["State"]["Pid"]
        # Frozen first, so that it dies with dispatches in flight: of a burst of charges, the
        # ones whose sessions hash to it are sent to it and stay unanswered until the kill.
        os.kill(pid, signal.SIGSTOP)
        try:
            burst = [pool.submit(one_key) for _ in range(KILL_BURST)]
            time.sleep(FROZEN_S)
        finally:
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)

        def restarted() -> bool | None:
            victim.reload()
            ok = victim.attrs["RestartCount"] > restarts and victim.status == "running"
            return True if ok else None
        wait_for(f"{victim.name} restarted by its restart policy", restarted, 30)
        stack.wait_healthy(4, HEALTHY_TIMEOUT_S, balancers=2)
        back_at = time.monotonic()
        time.sleep(2.0)              # and charging goes on with both replicas back
        stop.set()
        for client_done in clients:
            client_done.result(timeout=60)
        for burst_done in burst:
            burst_done.result(timeout=60)

    assert any(sent > back_at for _, _, sent, _, _ in results), \
        f"the clients stopped ({len(results)} keys) before the killed replica was back"
    in_flight = [seen for key, _, sent, _, seen in results
                 if killed_at - FROZEN_S <= sent < killed_at and seen[0] != "200"]
    assert in_flight, "no charge was in flight at the killed replica: the kill proved nothing"
    failed = [(key, r, seen) for key, _, _, r, seen in results if r.status != 200]
    assert not failed, f"{len(failed)} of {len(results)} keys never charged: {failed[:3]}"
    sessions = {r.body["session_id"] for _, _, _, r, _ in results}
    assert len(sessions) == len(results), "two keys got the same session"
    retried = Counter(answer for _, _, _, _, seen in results for answer in seen[:-1])
    for _, _, _, r, _ in results:
        stack.sessions[r.body["session_id"]] = r.body["substation"]
    # Each key replays its one session; every session is charging on exactly one substation.
    for key, vehicle, _, r, _ in results:
        replay = stack.charge(vehicle, REPLICA_KW, SESSION_KWH, idempotency_key=key)
        assert replay.status == 200 and replay.headers.get("Idempotent-Replayed") == "true" \
            and replay.body["session_id"] == r.body["session_id"], (key, r.body, replay)
    since = time.time()
    scraped = wait_for("Prometheus scraping every substation after the kill",
                       lambda: sessions_in_prometheus(stack, FOUR, since), 30)
    assert scraped == expected_sessions(stack)
    stack.timings["balancer kill: back"] = back_at - killed_at
    say(f"{victim.name} ({ip_before}, then {stack.ip_of(victim)}) SIGKILLed under load: "
        f"{len(results)} keys, all charged once, {len(in_flight)} of them in flight at the "
        f"kill ({sum(retried.values())} answers retried: {dict(retried)}); healthy again after "
        f"{back_at - killed_at:.0f} s")
