"""One policy for the whole fleet: two real balancer replicas sharing an active-policy file, real
substations, the session's real Prometheus. A switch on one replica reaches the other, survives a
restart, and the old policy's series leave /metrics and Prometheus."""

from __future__ import annotations

import signal
import urllib.request
from functools import partial
from pathlib import Path

from tests.integration.conftest import Prometheus, StartCluster, http_json, wait_for

OLD, NEW = "least-utilization", "least-forecast-utilization"


def policy_series(url: str) -> list[str]:
    """The balancer_policy_* lines of one replica's /metrics (info and scores)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [line for line in text.splitlines()
            if line.startswith(("balancer_policy_info{", "balancer_policy_score{"))]


def serving(url: str) -> str:
    status, body = http_json("GET", f"{url}/policy")
    return str(body["policy"]) if status == 200 else ""


def test_a_switch_on_one_replica_reaches_the_other_and_survives_its_restart(
        cluster: StartCluster, prometheus: Prometheus, tmp_path: Path) -> None:
    active = tmp_path / "state" / "active-policy"
    c = cluster([("a", 100.0), ("b", 100.0)], policy=OLD, balancers=2,
                balancer_args=("--active-policy-file", str(active)))
    one, other = c.balancer_urls
    wait_for(lambda: any(f'policy="{OLD}"' in line for line in policy_series(other)
                         if line.startswith("balancer_policy_score")),
             "the other replica's scores under the old policy")

    status, body = http_json("POST", f"{one}/-/reload", {"policy": NEW}, headers=c.internal)
    assert status == 200 and body["fleet_wide"] is True, body
    assert body["active_policy_file"] == str(active)
    wait_for(lambda: serving(other) == NEW, "the other replica to follow", timeout_s=15.0)

    # Exactly one info series per replica, and the old policy's scores gone, not frozen.
    def only_new(url: str) -> bool:
        lines = policy_series(url)
        info = [line for line in lines if line.startswith("balancer_policy_info{")]
        scores = [line for line in lines if line.startswith("balancer_policy_score{")]
        return info == [f'balancer_policy_info{{policy="{NEW}"}} 1.0'] and len(scores) == 2 \
            and all(f'policy="{NEW}"' in line for line in scores)
    for url in (one, other):
        wait_for(partial(only_new, url), f"{url} to export only {NEW}'s series")

    # Prometheus sees the same: each replica reports the new policy, the old one's series
    # went stale when the replicas stopped exposing them.
    replicas = {u.removeprefix("http://") for u in c.balancer_urls}
    wait_for(lambda: set(prometheus.values(
        f'balancer_policy_info{{job="balancer", policy="{NEW}"}} == 1')) == replicas
        and not prometheus.query(f'balancer_policy_score{{job="balancer", policy="{OLD}"}}')
        and not prometheus.query(f'balancer_policy_info{{job="balancer", policy="{OLD}"}}'),
        "Prometheus to see only the new policy's series")

    # A replica that restarts (same configuration, as after a crash) starts on the choice.
    c.signal("balancer-2", signal.SIGKILL)
    c.restart("balancer-2")
    assert serving(other) == NEW
    assert http_json("GET", f"{other}/policy")[1]["active_policy"]["policy"] == NEW
