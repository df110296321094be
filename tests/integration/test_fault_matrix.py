"""The fault matrix: exactly-once placement under real faults, with real processes.

Each case breaks one thing at the worst moment (SIGKILL, SIGSTOP, restarts, timeouts), then the
clients retry every key until a definite answer, as docs/api.md tells them to, and the test reads
every substation's sessions (internal API) and asserts the invariants of docs/design.md:
- each session id is active on at most one substation;
- every `200 charging` that was not a replay names a substation where that session is charging;
- no key ever received two different session ids;
- every session charging anywhere was answered to its client (nothing placed behind its back).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.conftest import Cluster, KeyLog, StartCluster, http_json, wait_for
from tests.integration.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

# Sessions long enough to still be charging when the test reads them (speed factor 1).
KW, KWH = 11.0, 500.0
FAST = ("--forward-timeout", "1", "--max-snapshot-age", "600")
# Answers after which a careful client stops retrying.
DEFINITE = {200, 400, 401, 413, 415, 422}


def send(c: Cluster, key: str, timeout: float = 15.0, via: int = 0
         ) -> tuple[int, dict[str, Any], bool]:
    """POST /charge under `key` to ingress replica `via` (0: the first)."""
    request = urllib.request.Request(
        f"{c.ingress_urls[via]}/charge", method="POST",
        data=json.dumps({"vehicle_id": f"ev-{key}", "requested_kw": KW,
                         "energy_kwh": KWH}).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": key, **c.auth})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), \
                resp.headers.get("Idempotent-Replayed") == "true"
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), False
    except OSError as exc:                   # the ingress itself is down or cut off
        return 0, {"error": type(exc).__name__}, False


def retry_until_definite(c: Cluster, logs: list[KeyLog], attempts: int = 80, via: int = 0
                         ) -> None:
    """Every key until a definite answer (200, a 4xx that is not 409, or no_capacity), sent to
    ingress replica `via`."""
    def one(log: KeyLog) -> None:
        for _ in range(attempts):
            log.answers.append(send(c, log.key, via=via))
            status, body, _ = log.final
            if status in DEFINITE or body.get("error") == "no_capacity":
                return
            time.sleep(0.25)
        pytest.fail(f"{log.key}: no definite answer after {attempts} tries: {log.answers}")
    with ThreadPoolExecutor(len(logs)) as pool:
        list(pool.map(one, logs))


def audit(c: Cluster, logs: list[KeyLog]) -> dict[str, list[str]]:
    """Assert the invariants; return session id -> substations where it charges."""
    charging: dict[str, list[str]] = defaultdict(list)
    for sub in c.addresses:
        for session in c.sessions(sub):
            if session["state"] == "charging" and not session["session_id"].startswith("pre-"):
                charging[session["session_id"]].append(sub)
    doubles = {sid: subs for sid, subs in charging.items() if len(subs) > 1}
    assert not doubles, f"sessions active on two substations: {doubles}"
    answered: set[str] = set()
    for log in logs:
        ids = {body["session_id"] for status, body, _ in log.answers if status == 200}
        assert len(ids) <= 1, f"{log.key} received two session ids: {log.answers}"
        answered |= ids
        for status, body, replayed in log.answers:
            if status == 200 and body["status"] == "charging" and not replayed:
                assert charging.get(body["session_id"]) == [body["substation"]], \
                    f"{log.key}: told charging at {body['substation']}, substations hold " \
                    f"{charging.get(body['session_id'])}"
        assert log.final[0] == 200, f"{log.key} ended without a session: {log.answers}"
    orphans = set(charging) - answered
    assert not orphans, f"sessions charging that no client was told about: {orphans}"
    return charging


def sender(c: Cluster, log: KeyLog) -> Callable[[], None]:
    return lambda: log.answers.append(send(c, log.key))


def in_background(fn: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def preload(c: Cluster, sub: str, kw: float) -> None:
    """Load `sub` directly so the policy prefers the others, and wait until the balancer
    has seen it. (Sessions named pre-* are the test's own: the audit leaves them out.)"""
    status, _ = c.substation(sub, "POST", "/charge", {"session_id": f"pre-{sub}",
                                                      "vehicle_id": "x", "requested_kw": kw,
                                                      "energy_kwh": 1000})
    assert status == 200
    c.wait_scraped(since=time.time())
    assert c.reload()[0] == 200


def test_balancer_sigkilled_mid_dispatch(cluster: StartCluster, keys: Any) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST)
    logs = keys(3)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGSTOP)        # every forward hangs mid-dispatch
    threads = [in_background(sender(c, log)) for log in logs]
    wait_for(lambda: c.in_flight(c.balancer_urls[0]) >= 3, "three dispatches in flight")
    c.signal("balancer", signal.SIGKILL)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGCONT)        # the queued charges are admitted now
    for thread in threads:
        thread.join(20)
    # Case 5 of issue 16: the charge was sent before the balancer died, so the answer says it
    # may have started (outcome_unknown), never "could not be reached" (balancer_unavailable,
    # which a client without a key may safely re-send).
    assert all((log.final[0], log.final[1].get("error")) == (503, "outcome_unknown")
               for log in logs), [log.answers for log in logs]
    c.restart("balancer")
    retry_until_definite(c, logs)
    audit(c, logs)


def test_balancer_restarted_between_an_ambiguous_forward_and_the_retry(
        cluster: StartCluster, keys: Any) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST)
    logs = keys(2)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGSTOP)
    # At once: a moment later Prometheus sees both down and nothing would be forwarded.
    for thread in [in_background(sender(c, log)) for log in logs]:
        thread.join(20)
    assert [log.final[1].get("error") for log in logs] == ["outcome_unknown"] * 2
    c.restart("balancer")                    # it forgets everything about these sessions
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGCONT)
    retry_until_definite(c, logs)
    charging = audit(c, logs)
    assert len(charging) == 2


def test_substation_sigstopped_past_the_forward_timeout_then_resumed(
        cluster: StartCluster, keys: Any) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST)
    preload(c, "b", 200.0)                   # a is preferred
    logs = keys(1)
    c.signal("a", signal.SIGSTOP)
    logs[0].answers.append(send(c, logs[0].key))
    assert logs[0].final[1].get("error") == "outcome_unknown", logs[0].answers
    assert logs[0].final[1]["may_be_at"] == ["a"]
    c.signal("a", signal.SIGCONT)            # it admits the charge that waited in its socket
    retry_until_definite(c, logs)
    charging = audit(c, logs)
    assert list(charging.values()) == [["a"]]


def test_substation_sigkilled_after_admitting_and_before_answering(
        cluster: StartCluster, keys: Any) -> None:
    proxies: dict[str, FaultProxy] = {}

    def front(port: int) -> str:
        proxies["a"] = FaultProxy(port)
        proxies["a"].start()
        return proxies["a"].address
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST, proxies={"a": front})
    try:
        preload(c, "b", 200.0)
        logs = keys(1)
        # a admits (and commits) the charge; it dies before its answer leaves.
        proxies["a"].on_response(b"POST /charge", lambda: c.signal("a", signal.SIGKILL))
        logs[0].answers.append(send(c, logs[0].key))
        assert proxies["a"].dropped == 1
        assert logs[0].final[1].get("error") == "outcome_unknown", logs[0].answers
        c.restart("a")                       # back with its sessions from its state file
        retry_until_definite(c, logs)
        charging = audit(c, logs)
        assert list(charging.values()) == [["a"]]
    finally:
        proxies["a"].stop()


def test_ingress_sigkilled_after_the_substation_accepted_before_its_own_write(
        cluster: StartCluster, keys: Any) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST)
    logs = keys(2)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGSTOP)
    threads = [in_background(sender(c, log)) for log in logs]
    wait_for(lambda: c.in_flight(c.balancer_urls[0]) >= 2, "two dispatches in flight")
    c.signal("ingress", signal.SIGKILL)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGCONT)        # admitted; the balancer answers a dead ingress
    for thread in threads:
        thread.join(20)
    wait_for(lambda: c.in_flight(c.balancer_urls[0]) == 0, "the balancer to finish")
    c.restart("ingress")
    retry_until_definite(c, logs)
    assert len(audit(c, logs)) == 2


def test_an_ingress_timeout_shorter_than_the_balancers_work(cluster: StartCluster,
                                                            keys: Any) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)],
                balancer_args=("--forward-timeout", "5", "--max-snapshot-age", "600"),
                ingress_args=("--request-timeout", "2"))
    logs = keys(2)
    c.signal("balancer", signal.SIGSTOP)     # the ingress gives up; the work is still queued
    for log in logs:
        log.answers.append(send(c, log.key))
        log.answers.append(send(c, log.key))    # a retry while the first is still queued
    assert all(status == 504 for log in logs for status, _, _ in log.answers), \
        [log.answers for log in logs]
    c.signal("balancer", signal.SIGCONT)     # both copies of each now run: one after the other
    retry_until_definite(c, logs)
    assert len(audit(c, logs)) == 2


def ingress_records(c: Cluster) -> dict[str, float]:
    with urllib.request.urlopen(f"{c.grid.ingress_url}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith("ingress_idempotency_records{")}


def test_unresolved_records_survive_eviction_of_settled_ones(cluster: StartCluster,
                                                             keys: Any) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST,
                ingress_args=("--max-keys", "1", "--prune-interval", "0.2"))
    preload(c, "b", 200.0)
    unresolved, others = keys(1), keys(6)
    c.signal("a", signal.SIGSTOP)
    unresolved[0].answers.append(send(c, unresolved[0].key))
    assert unresolved[0].final[1].get("error") == "outcome_unknown"
    c.signal("a", signal.SIGCONT)            # the session may now be charging at a
    retry_until_definite(c, others)          # six settled records: the cap evicts them
    wait_for(lambda: ingress_records(c).get("done", 0) <= 1 and
             ingress_records(c).get("pending") == 1,
             "settled records evicted down to the cap, the unresolved one kept")
    retry_until_definite(c, unresolved)
    audit(c, [*unresolved, *others])


def test_two_balancer_replicas_with_one_sigkilled(cluster: StartCluster, keys: Any) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST, balancers=2)
    logs = keys(12)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGSTOP)
    threads = [in_background(sender(c, log)) for log in logs]
    wait_for(lambda: sum(c.in_flight(u) for u in c.balancer_urls) >= 12,
             "every dispatch in flight")
    victim = "balancer" if c.in_flight(c.balancer_urls[0]) >= 1 else "balancer-2"
    c.signal(victim, signal.SIGKILL)
    for sub in ("a", "b"):
        c.signal(sub, signal.SIGCONT)
    for thread in threads:
        thread.join(20)
    retry_until_definite(c, logs)            # the dead replica's keys go to the other one
    assert len(audit(c, logs)) == 12


def test_the_audit_catches_a_double_booking(cluster: StartCluster, keys: Any) -> None:
    """The invariant check has teeth: book one session id on two substations behind the
    system's back, and the audit fails."""
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST)
    logs = keys(1)
    retry_until_definite(c, logs)
    body = logs[0].final[1]
    other = "b" if body["substation"] == "a" else "a"
    http_json("POST", f"http://{c.addresses[other]}/charge",
              {"session_id": body["session_id"], "vehicle_id": f"ev-{logs[0].key}",
               "requested_kw": KW, "energy_kwh": KWH}, headers=c.internal)
    with pytest.raises(AssertionError, match="sessions active on two substations"):
        audit(c, logs)


# --- Faults that arrive together (issue 16): each failed on the ingress of before. ---------

def substation_holds(c: Cluster, sub: str, session_id: str) -> str | None:
    """The session's state at `sub`, or None when it does not know it."""
    return next((s["state"] for s in c.sessions(sub) if s["session_id"] == session_id), None)


def test_a_retry_while_the_balancer_restarts_keeps_the_record_unresolved(
        cluster: StartCluster, keys: Any) -> None:
    """Case 1: `balancer_unavailable` means nothing was sent this time, not that the session is
    nowhere: the record stays pending and the next retry resolves instead of placing."""
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST,
                ingress_args=("--reconcile-interval", "600"))   # only the client resolves here
    preload(c, "b", 200.0)                   # a is preferred
    logs = keys(1)
    c.signal("a", signal.SIGSTOP)
    logs[0].answers.append(send(c, logs[0].key))
    assert logs[0].final[1].get("error") == "outcome_unknown", logs[0].answers
    c.signal("balancer", signal.SIGKILL)
    c.signal("a", signal.SIGCONT)            # it admits the copy that waited in its socket
    session_id = logs[0].final[1].get("session_id") or ""
    wait_for(lambda: any(s["state"] == "charging" and not s["session_id"].startswith("pre-")
                         for s in c.sessions("a")), "a to admit the queued copy")
    logs[0].answers.append(send(c, logs[0].key))
    assert logs[0].final[0] == 503 and logs[0].final[1]["error"] == "balancer_unavailable"
    assert "nothing was sent" in logs[0].final[1]["detail"]
    assert ingress_records(c).get("pending") == 1, "the record left pending without evidence"
    c.restart("balancer")
    preload(c, "a", 400.0)                   # now b is preferred: a placement would go there
    retry_until_definite(c, logs)
    charging = audit(c, logs)
    assert list(charging.values()) == [["a"]], (session_id, charging)


def test_a_resolve_while_prometheus_lists_no_substation_still_asks_the_recent_ones(
        cluster: StartCluster, keys: Any) -> None:
    """Case 2: with the substation list empty (a fresh Prometheus, an empty discovery), a resolve
    asks every substation seen within the roster window; it never answers a refusal it has no
    evidence for."""
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST,
                ingress_args=("--reconcile-interval", "600"))
    preload(c, "b", 200.0)
    logs = keys(1)
    c.signal("a", signal.SIGSTOP)
    logs[0].answers.append(send(c, logs[0].key))
    assert logs[0].final[1].get("error") == "outcome_unknown", logs[0].answers
    c.signal("a", signal.SIGCONT)
    c.prometheus.set_targets("substation", [])
    wait_for(lambda: c.policy()["substations"] == [] or (c.reload() and False),
             "the balancer to see no substation listed")
    logs[0].answers.append(send(c, logs[0].key))
    status, body, _ = logs[0].final
    assert (status, body.get("status"), body.get("substation")) == (200, "charging", "a"), \
        logs[0].answers
    c.prometheus.set_targets("substation", list(c.addresses.values()))
    charging = audit(c, logs)
    assert list(charging.values()) == [["a"]]


def test_an_unresolved_key_is_resolved_before_its_ended_session_is_forgotten(
        cluster: StartCluster, keys: Any) -> None:
    """Case 3: the reconciler resolves a pending record within seconds, so a retry long after
    the session ended (and its substation forgot it) answers what was found, never a second
    charge."""
    c = cluster([("a", 500.0), ("b", 500.0)], balancer_args=FAST,
                substation_args=("--ended-retention", "6"))
    preload(c, "b", 200.0)
    key = keys(1)[0].key
    body = {"vehicle_id": f"ev-{key}", "requested_kw": KW, "energy_kwh": 0.01}  # ~3 s

    def post() -> tuple[int, dict[str, Any], bool]:
        return http_json_with_headers(c, body, key)
    c.signal("a", signal.SIGSTOP)
    first = post()
    assert first[1].get("error") == "outcome_unknown", first
    c.signal("a", signal.SIGCONT)
    wait_for(lambda: ingress_records(c).get("pending", 0) == 0,
             "the reconciler to resolve the record", timeout_s=20)
    ids = [s["session_id"] for s in c.sessions("a") if not s["session_id"].startswith("pre-")]
    assert len(ids) == 1
    wait_for(lambda: substation_holds(c, "a", ids[0]) is None,
             "a to complete the session and forget it", timeout_s=30)
    status, answer, replayed = post()
    assert status == 200 and replayed and answer["session_id"] == ids[0], answer
    for sub in ("a", "b"):
        assert substation_holds(c, sub, ids[0]) is None, f"charged again at {sub}"


def http_json_with_headers(c: Cluster, body: dict[str, Any], key: str
                           ) -> tuple[int, dict[str, Any], bool]:
    request = urllib.request.Request(
        f"{c.grid.ingress_url}/charge", method="POST", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": key, **c.auth})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, json.loads(resp.read()), \
                resp.headers.get("Idempotent-Replayed") == "true"
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), False
