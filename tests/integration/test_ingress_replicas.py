"""Two ingress replicas on one PostgreSQL store (issue 17), with real processes: whatever one
replica answered for a key, the other answers the same (replay, 409, session lookup, stop); a
replica SIGKILLed mid-request leaves nothing the other cannot finish; PostgreSQL itself SIGKILLed
under keyed load costs clear 503s, never a 500, a lost record or a second charge."""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from gridlb.stack import ProcessGroup
from tests.integration.conftest import (
    Cluster,
    KeyLog,
    Postgres,
    StartCluster,
    http_json,
    start_postgres,
    wait_for,
)
from tests.integration.test_fault_matrix import (
    DEFINITE,
    FAST,
    audit,
    in_background,
    preload,
    retry_until_definite,
    send,
)

pytestmark = pytest.mark.integration


def keyed(c: Cluster, key: str, via: int, kw: float = 11.0
          ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST /charge under `key` to replica `via`: status, body, headers."""
    request = urllib.request.Request(
        f"{c.ingress_urls[via]}/charge", method="POST",
        data=json.dumps({"vehicle_id": "ev-r", "requested_kw": kw,
                         "energy_kwh": 30.0}).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": key, **c.auth})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), dict(err.headers)


def session(c: Cluster, session_id: str, via: int, action: str = "") -> tuple[int, Any]:
    method = "POST" if action else "GET"
    return http_json(method, f"{c.ingress_urls[via]}/sessions/{session_id}{action}",
                     headers=c.auth)


def stored(c: Cluster, key: str) -> tuple[Any, ...] | None:
    """The key's record as PostgreSQL holds it: (state, epoch)."""
    assert c.store_url is not None
    with psycopg.connect(c.store_url) as conn:
        return conn.execute("SELECT state, epoch FROM key_records WHERE key = %s",
                            (key,)).fetchone()


def test_a_key_answered_by_one_replica_is_answered_the_same_by_the_other(
        cluster: StartCluster) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], ingresses=2, store="postgresql")
    status, first, _ = keyed(c, "k-1", via=0)
    assert status == 200 and first["status"] == "charging", first
    status, again, headers = keyed(c, "k-1", via=1)          # the retry lands on the other
    assert (status, again, headers.get("Idempotent-Replayed")) == (200, first, "true")
    status, body, _ = keyed(c, "k-1", via=1, kw=22.0)        # reused with another body
    assert (status, body["error"]) == (422, "idempotency_key_reused")
    sid = first["session_id"]
    for via in (0, 1):                                       # the session index is shared
        status, body = session(c, sid, via)
        assert status == 200 and (body["session_id"], body["state"]) == (sid, "charging"), body
    status, body = session(c, sid, 1, "/stop")
    assert status == 200 and body["state"] == "stopped", body
    assert session(c, sid, 0)[1]["state"] == "stopped"
    # Without a key too: started on one, found on the other.
    status, plain = c.charge("ev-plain", 7.4, via=1)
    assert status == 200, plain
    assert session(c, plain["session_id"], 0)[0] == 200
    # One session for k-1 on the whole grid.
    held = [s for sub in c.addresses for s in c.sessions(sub) if s["session_id"] == sid]
    assert len(held) == 1


def test_a_concurrent_pair_on_the_two_replicas_gets_one_200_and_one_409(
        cluster: StartCluster) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], ingresses=2, store="postgresql",
                balancer_args=FAST)
    c.signal("balancer", signal.SIGSTOP)      # whoever takes the key holds it until resumed
    answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []

    def pair(via: int) -> None:
        answers.append(keyed(c, "k-pair", via))
    threads = [in_background(functools.partial(pair, via)) for via in (0, 1)]
    wait_for(lambda: len(answers) == 1, "the replica that lost the race to answer")
    status, body, headers = answers[0]
    assert (status, body["error"], headers.get("Retry-After")) == \
        (409, "request_in_progress", "1"), answers
    # The winner's claim, written before its dispatch; and only one epoch was taken.
    wait_for(lambda: stored(c, "k-pair") == ("pending", 1), "the winner's write-ahead record")
    c.signal("balancer", signal.SIGCONT)
    for thread in threads:
        thread.join(20)
    assert sorted(a[0] for a in answers) == [200, 409], answers
    assert stored(c, "k-pair") == ("done", 1)
    winner = next(body for status, body, _ in answers if status == 200)
    # A retry on either replica replays the winner's answer.
    for via in (0, 1):
        status, body, headers = keyed(c, "k-pair", via)
        assert (status, body, headers.get("Idempotent-Replayed")) == (200, winner, "true")


def test_a_replica_sigkilled_mid_request_leaves_its_keys_to_the_other(
        cluster: StartCluster, keys: Any) -> None:
    """The fault-matrix case of the ingress dying after the substation accepted, before its own
    write; the retry goes to the other replica at once (nothing is restarted): the dead
    replica's key locks went with its connections, its pending records resolve to the sessions
    its charges started."""
    c = cluster([("a", 500.0), ("b", 500.0)], ingresses=2, store="postgresql",
                balancer_args=FAST)
    logs: list[KeyLog] = keys(3)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGSTOP)

    def first_try(log: KeyLog) -> None:
        log.answers.append(send(c, log.key))
    threads = [in_background(functools.partial(first_try, log)) for log in logs]
    wait_for(lambda: c.in_flight(c.balancer_urls[0]) >= 3, "three dispatches in flight")
    c.signal("ingress", signal.SIGKILL)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGCONT)        # admitted; the balancer answers a dead ingress
    for thread in threads:
        thread.join(20)
    assert all(log.final[0] == 0 for log in logs), [log.answers for log in logs]
    assert all(stored(c, log.key) == ("pending", 1) for log in logs)
    retry_until_definite(c, logs, via=1)
    charging = audit(c, logs)
    assert len(charging) == 3
    # No 409 lasted: the dead replica's locks were gone with it.
    assert all(status != 409 for log in logs for status, _, _ in log.answers[1:])


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A PostgreSQL server of this test's own, to kill without disturbing the others'."""
    group = ProcessGroup(tmp_path_factory.mktemp("own-postgres-logs"))
    server = start_postgres(group)
    yield server
    server.remove()


def test_postgres_sigkilled_and_restarted_under_keyed_load(
        cluster: StartCluster, keys: Any, own_postgres: Postgres) -> None:
    c = cluster([("a", 1000.0), ("b", 1000.0)], ingresses=2, store="postgresql",
                postgres=own_postgres, balancer_args=FAST)
    logs: list[KeyLog] = keys(16)
    down = threading.Event()
    seen_while_down: list[tuple[int, dict[str, Any], bool]] = []

    def client(n: int, log: KeyLog) -> None:
        """A careful client: retries its key (on either replica) until a definite answer."""
        deadline = time.monotonic() + 90
        attempt = 0
        while time.monotonic() < deadline:
            answer = send(c, log.key, via=(n + attempt) % 2)
            log.answers.append(answer)
            if down.is_set():
                seen_while_down.append(answer)
            status, body, _ = answer
            if status in DEFINITE or body.get("error") == "no_capacity":
                return
            attempt += 1
            time.sleep(0.1)
    with ThreadPoolExecutor(len(logs)) as pool:
        # Half the keys are answered before the crash ...
        for future in [pool.submit(client, n, log) for n, log in enumerate(logs[:8])]:
            future.result()
        # ... four are being placed as it dies (their answers cannot be recorded) ...
        for sub in ("a", "b"):
            c.signal(sub, signal.SIGSTOP)
        later = [pool.submit(client, n, log) for n, log in enumerate(logs[8:12])]
        wait_for(lambda: c.in_flight(c.balancer_urls[0]) >= 4, "four dispatches in flight")
        own_postgres.kill()
        down.set()
        for sub in ("a", "b"):
            c.signal(sub, signal.SIGCONT)
        # ... and four are sent while it is down.
        later += [pool.submit(client, n, log) for n, log in enumerate(logs[12:])]
        wait_for(lambda: sum(1 for s, b, _ in seen_while_down
                             if (s, b.get("error")) == (503, "store_unavailable")) >= 4,
                 "answers that say the store is unavailable")
        down.clear()
        own_postgres.start()
        for future in later:
            future.result()
    # Placed, but not recorded: the answer says it may have started, and the retry finds it.
    for log in logs[8:12]:
        assert (log.answers[0][0], log.answers[0][1].get("error")) == (503, "outcome_unknown"), \
            log.answers
    every = [a for log in logs for a in log.answers]
    assert all(status != 500 for status, _, _ in every), [a for a in every if a[0] == 500]
    failures = {(status, body.get("error")) for status, body, _ in every if status != 200}
    assert failures <= {(503, "store_unavailable"), (503, "outcome_unknown"),
                        (409, "request_in_progress")}, failures
    unavailable = [body for status, body, _ in seen_while_down if status == 503 and
                   body.get("error") == "store_unavailable"]
    assert all("nothing was sent" in body["detail"] for body in unavailable)
    # Nothing lost: the keys answered before the crash replay their sessions, and every key
    # is charged exactly once (audit: one session id per key, none twice, no orphans).
    for log in logs[:8]:
        status, body, replayed = send(c, log.key, via=1)
        assert (status, replayed) == (200, True) and body == log.answers[-1][1]
    assert len(audit(c, logs)) == 16


def metric_sum(urls: list[str], prefix: str) -> float:
    """The sum over every replica of the samples whose line starts with `prefix`."""
    total = 0.0
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as resp:
            total += sum(float(line.rsplit(" ", 1)[1]) for line in resp.read().decode()
                         .splitlines() if line.startswith(prefix))
    return total


def test_the_reconcilers_of_two_replicas_resolve_each_record_once(
        cluster: StartCluster, keys: Any) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], ingresses=2, store="postgresql",
                balancer_args=FAST, ingress_args=("--reconcile-interval", "0.3"))
    logs: list[KeyLog] = keys(4)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGSTOP)

    def first_try(n: int, log: KeyLog) -> None:
        log.answers.append(send(c, log.key, via=n % 2))
    threads = [in_background(functools.partial(first_try, n, log))
               for n, log in enumerate(logs)]
    for thread in threads:
        thread.join(30)
    assert all(log.final[1].get("error") == "outcome_unknown" for log in logs), \
        [log.answers for log in logs]
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGCONT)        # the queued copies are admitted late
    # Nobody retries: the reconcilers of both replicas settle the keys in the background.
    wait_for(lambda: all((stored(c, log.key) or ("",))[0] == "done" for log in logs),
             "every record resolved", timeout_s=60)
    # Each record was found by one replica, once (a round that ran before the substations
    # resumed may have left it pending at its second epoch: then it was found at a later one).
    found = metric_sum(c.ingress_urls, 'ingress_reconciled_records_total{result="found"}')
    tried = metric_sum(c.ingress_urls, 'ingress_reconciled_records_total{result="pending"}')
    assert found == 4, found
    epochs = [stored(c, log.key)[1] for log in logs]          # type: ignore[index]
    assert sum(epoch - 1 for epoch in epochs) == found + tried, (epochs, found, tried)
    for n, log in enumerate(logs):           # the clients' retries replay what was found
        log.answers.append(send(c, log.key, via=(n + 1) % 2))
        assert (log.final[0], log.final[2]) == (200, True), log.answers
    assert len(audit(c, logs)) == 4


def test_an_ingress_timeout_shorter_than_the_balancers_work_on_two_replicas(
        cluster: StartCluster, keys: Any) -> None:
    """The fault-matrix case, each retry sent to the other replica while the first copy is
    still queued at the balancer."""
    c = cluster([("a", 500.0), ("b", 500.0)], ingresses=2, store="postgresql",
                balancer_args=("--forward-timeout", "5", "--max-snapshot-age", "600"),
                ingress_args=("--request-timeout", "2", "--reconcile-interval", "600"))
    logs: list[KeyLog] = keys(2)
    c.signal("balancer", signal.SIGSTOP)
    for log in logs:
        log.answers.append(send(c, log.key, via=0))
        log.answers.append(send(c, log.key, via=1))
    assert all(status == 504 for log in logs for status, _, _ in log.answers), \
        [log.answers for log in logs]
    assert all(stored(c, log.key) == ("pending", 2) for log in logs)
    c.signal("balancer", signal.SIGCONT)
    retry_until_definite(c, logs, via=0)
    assert len(audit(c, logs)) == 2


def test_unresolved_records_survive_eviction_on_two_replicas(cluster: StartCluster,
                                                             keys: Any) -> None:
    """The fault-matrix case with both replicas pruning the shared store (one at a time)."""
    c = cluster([("a", 500.0), ("b", 500.0)], ingresses=2, store="postgresql",
                balancer_args=FAST,
                ingress_args=("--max-keys", "1", "--prune-interval", "0.2",
                              "--reconcile-interval", "600"))
    preload(c, "b", 200.0)                   # a is preferred
    unresolved, others = keys(1), keys(6)
    c.signal("a", signal.SIGSTOP)
    unresolved[0].answers.append(send(c, unresolved[0].key, via=0))
    assert unresolved[0].final[1].get("error") == "outcome_unknown", unresolved[0].answers
    c.signal("a", signal.SIGCONT)
    retry_until_definite(c, others, via=1)
    assert c.store_url is not None

    def counts() -> dict[str, int]:
        assert c.store_url is not None
        with psycopg.connect(c.store_url) as conn:
            return dict(conn.execute("SELECT state, count(*) FROM key_records "
                                     "GROUP BY state").fetchall())
    wait_for(lambda: counts().get("done", 0) <= 1 and counts().get("pending") == 1,
             "settled records evicted down to the cap, the unresolved one kept")
    retry_until_definite(c, unresolved, via=1)
    audit(c, [*unresolved, *others])
