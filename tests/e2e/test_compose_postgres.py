"""`docker compose -f docker-compose.yml -f docker-compose.postgres.yml up --scale ingress=2`, for
real: two ingress replicas on one PostgreSQL, each publishing a loopback port of its own
(GRID_INGRESS_PORT empty). A key answered by one replica is replayed by the other; one replica
SIGKILLed under keyed load (with charges in flight to it) loses no key and charges none twice.

Same engine and images as tests/e2e/test_compose_stack.py (a registry's where one answers, else
made from Debian's packages, PostgreSQL included: container/postgres.Dockerfile).
"""

from __future__ import annotations

import http.client
import itertools
import os
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

docker = pytest.importorskip("docker", reason="the Python docker package is not installed")

from gridlb.stack import free_port  # noqa: E402
from tests.e2e import engine as engines  # noqa: E402
from tests.e2e.lifecycle import Prepared, compose_stack  # noqa: E402
from tests.e2e.stack import (  # noqa: E402
    COMPOSE_FILE,
    POSTGRES_FILE,
    ComposeStack,
    Response,
    wait_for,
)
from tests.e2e.stack import http as request  # noqa: E402

pytestmark = pytest.mark.e2e

SERVICES = ("prometheus", "postgres", "substation", "balancer", "ingress")
HEALTHY_TIMEOUT_S = 180.0
KW, KWH = 2.0, 500.0
MAX_KEYS = 200
CLIENTS = 6
BURST = 12                # keyed charges sent to the replica while it is frozen
FROZEN_S = 1.0


@pytest.fixture(scope="module")
def stack(engine: tuple[engines.Engine, str], tmp_path_factory: pytest.TempPathFactory,
          say: Callable[[str], None]) -> Iterator[ComposeStack]:
    def configure(ready: Prepared) -> ComposeStack:
        values = {**ready.images.env, "GRID_INGRESS_PORT": "",
                  "GRID_PROMETHEUS_PORT": str(free_port()),
                  "GRID_GRAFANA_PORT": str(free_port()), "GRID_IMAGE": ready.app_image,
                  "GRID_API_KEYS": secrets.token_urlsafe(24),
                  "GRID_INTERNAL_TOKEN": secrets.token_urlsafe(24),
                  "GRID_POSTGRES_PASSWORD": secrets.token_urlsafe(24),
                  "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(24)}
        env_file = tmp_path_factory.mktemp("compose-pg") / "stack.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        env_file.chmod(0o600)
        return ComposeStack(
            command=ready.command, project=ready.project, client=ready.client,
            env={**ready.base_env, **values}, env_file=env_file, services=SERVICES,
            ingress_port=0, prometheus_port=int(values["GRID_PROMETHEUS_PORT"]),
            api_key=values["GRID_API_KEYS"], internal_token=values["GRID_INTERNAL_TOKEN"],
            files=(COMPOSE_FILE, POSTGRES_FILE))

    with compose_stack(engine, say, configure) as built:
        built.up(substations=2, ingresses=2)
        built.timings["up to healthy"] = built.wait_healthy(2, HEALTHY_TIMEOUT_S, ingresses=2)
        say(f"two ingress replicas on PostgreSQL healthy "
            f"{built.timings['up to healthy']:.0f} s after `up`")
        yield built


def replica_urls(stack: ComposeStack) -> dict[str, str]:
    urls = stack.ingress_urls()
    assert len(urls) == 2, urls
    return urls


def charge(stack: ComposeStack, url: str, vehicle: str, key: str) -> Response | None:
    """None when the replica cannot be reached (killed, restarting, or dying mid-request)."""
    try:
        return request("POST", f"{url}/charge",
                    {"vehicle_id": vehicle, "requested_kw": KW, "energy_kwh": KWH},
                    {**stack.auth(), "Idempotency-Key": key}, timeout_s=15)
    except (OSError, http.client.HTTPException):
        return None


def test_a_key_answered_by_one_replica_is_replayed_by_the_other(stack: ComposeStack) -> None:
    urls = sorted(replica_urls(stack).values())
    assert len(urls) == 2 and len(set(urls)) == 2, urls
    first = charge(stack, urls[0], "ev-pg-1", "pg-k-1")
    assert first is not None and first.status == 200, first
    again = charge(stack, urls[1], "ev-pg-1", "pg-k-1")
    assert again is not None and (again.status, again.body) == (200, first.body), again
    assert again.headers.get("Idempotent-Replayed") == "true"
    for url in urls:                       # the session index is shared too
        got = request("GET", f"{url}/sessions/{first.body['session_id']}", headers=stack.auth())
        assert got.status == 200 and got.body["state"] == "charging", got
    stack.sessions[first.body["session_id"]] = first.body["substation"]


def test_a_replica_killed_under_keyed_load_loses_no_key_and_charges_none_twice(
        stack: ComposeStack, engine: tuple[engines.Engine, str],
        say: Callable[[str], None]) -> None:
    if not engine[0].local:
        pytest.skip("the engine is remote: its processes cannot be crashed from here")
    urls = replica_urls(stack)
    victim = stack.containers("ingress")[0]
    victim_url, other_url = urls[str(victim.name)], next(
        u for name, u in urls.items() if name != victim.name)
    restarts = victim.attrs["RestartCount"]
    keys = itertools.count()
    stop = threading.Event()
    results: list[tuple[str, str, float, Response, list[str]]] = []

    def one_key(prefer: str | None = None) -> bool:
        """A careful client: the same key, alternating replicas, until a 200."""
        n = next(keys)
        if n >= MAX_KEYS:
            return False
        key, vehicle, sent = f"pg-kill-{secrets.token_hex(8)}", f"pg-kill-{n}", time.monotonic()
        start = prefer or (victim_url if n % 2 else other_url)
        order = [start, other_url if start == victim_url else victim_url]
        seen: list[str] = []
        deadline = time.monotonic() + 60
        for attempt in itertools.count():
            answer = charge(stack, order[attempt % 2], vehicle, key)
            error = answer.body.get("error") if answer and isinstance(answer.body, dict) else None
            seen.append("unreachable" if answer is None else
                        f"{answer.status} {error}" if error else str(answer.status))
            if answer is not None and answer.status == 200:
                results.append((key, vehicle, sent, answer, seen))
                return True
            assert answer is None or answer.status != 500, answer
            if time.monotonic() > deadline:
                pytest.fail(f"{key}: no 200 within 60 s: {seen}")
            time.sleep(0.2)
        return True

    def client() -> None:
        while not stop.is_set() and one_key():
            stop.wait(0.25)

    with ThreadPoolExecutor(max_workers=CLIENTS + BURST) as pool:
        clients = [pool.submit(client) for _ in range(CLIENTS)]
        wait_for("keyed charges flowing before the kill",
                 lambda: True if len(results) >= 12 else None, 60, period_s=0.1)
        pid = victim.attrs["State"]["Pid"]
        os.kill(pid, signal.SIGSTOP)       # frozen with requests in flight, then killed
        try:
            burst = [pool.submit(one_key, victim_url) for _ in range(BURST)]
            time.sleep(FROZEN_S)
        finally:
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)

        def restarted() -> bool | None:
            victim.reload()
            ok = victim.attrs["RestartCount"] > restarts and victim.status == "running"
            return True if ok else None
        wait_for(f"{victim.name} restarted by its restart policy", restarted, 60)
        stack.wait_healthy(2, HEALTHY_TIMEOUT_S, ingresses=2)
        back_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for client_done in clients:
            client_done.result(timeout=120)
        for burst_done in burst:
            burst_done.result(timeout=120)

    in_flight = [seen for _, _, sent, _, seen in results
                 if killed_at - FROZEN_S <= sent < killed_at and seen[0] != "200"]
    assert in_flight, "no charge was in flight at the killed replica: the kill proved nothing"
    sessions = {r.body["session_id"] for _, _, _, r, _ in results}
    assert len(sessions) == len(results), "two keys got the same session"
    for key, vehicle, _, r, _ in results:         # each key replays its one session, anywhere
        for url in (victim_url, other_url):
            replay = charge(stack, url, vehicle, key)
            assert replay is not None and replay.status == 200 and \
                replay.headers.get("Idempotent-Replayed") == "true" and \
                replay.body["session_id"] == r.body["session_id"], (key, r.body, replay)
        stack.sessions[r.body["session_id"]] = r.body["substation"]
    # Every session charging once: Prometheus counts exactly the sessions the clients were told.
    told = Counter(stack.sessions.values())
    since = time.time()

    def scraped() -> dict[str, float] | None:
        stamps = stack.by_label("timestamp(substation_active_sessions)")
        if len(stamps) != 2 or min(stamps.values()) < since:
            return None
        return stack.by_label("substation_active_sessions")
    counted = wait_for("Prometheus scraping both substations after the kill", scraped, 30)
    assert counted == {sub: float(told.get(sub, 0)) for sub in counted}, (counted, told)
    assert set(told) <= set(counted)
    retried = Counter(answer for _, _, _, _, seen in results for answer in seen[:-1])
    say(f"{victim.name} SIGKILLed under keyed load: {len(results)} keys, all charged once, "
        f"{len(in_flight)} in flight at the kill ({dict(retried)} answers retried); healthy "
        f"again after {back_at - killed_at:.0f} s")
