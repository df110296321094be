"""`make up` itself (gridlb/stack.py run as a process, with a grid file on free ports and its
own Prometheus): supervision of a killed substation, ordered shutdown, a restart with a
renamed grid on the same Prometheus database, `balancer_replicas: 2` with one replica
killed, and two ingress replicas on the PostgreSQL that make up runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridlb.promconfig import REPO_ROOT
from gridlb.stack import free_port
from tests.integration.conftest import http_json, wait_for

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL_S = 0.5
# Answers that leave open whether a charge started: a careful client retries the same key.
_OPEN_OUTCOMES = {"balancer_unavailable", "balancer_timeout", "outcome_unknown",
                  "dispatch_in_progress", "request_in_progress"}
BANNER = "Smart Grid Load Balancer is up"


class StackRunner:
    """`python -m gridlb.stack` on a grid file and a run directory, its output in a file."""

    def __init__(self, tmp_path: Path, run_dir: Path) -> None:
        self.tmp_path = tmp_path
        self.run_dir = run_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.output_file = tmp_path / "make-up.out"
        self.grid: dict[str, Any] = {}

    def start(self, grid: dict[str, Any]) -> None:
        self.grid = grid
        grid_file = self.tmp_path / "grid.yaml"
        grid_file.write_text(yaml.safe_dump(grid))
        self.output_file.write_text("")
        with self.output_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gridlb.stack", "--run-dir", str(self.run_dir)],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                env={**os.environ, "GRID_CONFIG": str(grid_file)})

    @property
    def output(self) -> str:
        return self.output_file.read_text(errors="replace")

    def wait_output(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"make up exited with {self.proc.returncode}:\n{self.output}")
            return re.search(pattern, self.output)
        match: re.Match[str] = wait_for(found, f"make up to print {pattern!r}", timeout_s)
        return match

    def pids(self) -> dict[str, int]:
        return {name: int(pid)
                for name, pid in re.findall(r"make up: started (\S+) \(pid (\d+)\)", self.output)}

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.grid['ports'][service]}"

    def token(self, name: str) -> str:
        return (self.run_dir / name).read_text().strip()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()   # its children follow: they die with their parent
                self.proc.wait()


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[StackRunner]:
    stack = StackRunner(tmp_path, tmp_path / "run")
    yield stack
    stack.kill()


def grid_file(substations: list[tuple[str, int]], ports: dict[str, int] | None = None
              ) -> dict[str, Any]:
    return {
        "policy": "least-utilization", "host": "127.0.0.1",
        "ports": ports or {"ingress": free_port(), "balancer": free_port(),
                           "prometheus": free_port()},
        "scrape_interval_s": SCRAPE_INTERVAL_S, "speed_factor": 1,
        "substations": [{"id": sid, "port": port, "capacity_kw": 100}
                        for sid, port in substations],
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_substation_is_back_with_its_sessions_and_nothing_else_stopped(
        runner: StackRunner) -> None:
    port_a = free_port()
    runner.start(grid_file([("sub-a", port_a), ("sub-b", free_port())]))
    runner.wait_output(BANNER)
    assert "make up: starting empty" in runner.output
    before = runner.pids()
    assert set(before) == {"prometheus", "sub-a", "sub-b", "balancer", "ingress"}
    internal = {"Authorization": f"Bearer {runner.token('internal-token')}"}
    status, body = http_json("POST", f"http://127.0.0.1:{port_a}/charge",
                             {"session_id": "keep-me", "vehicle_id": "ev-1", "requested_kw": 11,
                              "energy_kwh": 50}, headers=internal)
    assert status == 200, body

    os.kill(before["sub-a"], signal.SIGKILL)
    killed = time.monotonic()
    runner.wait_output(rf"sub-a \(pid {before['sub-a']}\) was killed by SIGKILL; restarting it "
                       r"in 0\.5 s", timeout_s=10)
    back = runner.wait_output(r"sub-a is back \(pid (\d+)", timeout_s=15)
    took = time.monotonic() - killed
    assert took < 10, f"sub-a took {took:.1f} s to come back"
    assert int(back.group(1)) != before["sub-a"] and alive(int(back.group(1)))
    status, session = http_json("GET", f"http://127.0.0.1:{port_a}/sessions/keep-me",
                                headers=internal)
    assert status == 200 and session["state"] == "charging", session

    for name in ("prometheus", "sub-b", "balancer", "ingress"):
        assert alive(before[name]), f"{name} (pid {before[name]}) stopped"
    assert runner.pids() == before                 # nothing else was (re)started
    assert "stopping" not in runner.output
    api = {"Authorization": f"Bearer {runner.token('dev-api-key')}"}
    status, body = http_json("POST", f"{runner.url('ingress')}/charge",
                             {"vehicle_id": "ev-2", "requested_kw": 7.4, "energy_kwh": 10},
                             headers=api)
    assert status == 200, body

    assert runner.stop() == 0
    stops = re.findall(r"make up: stopping (\S+) \(pid", runner.output)
    assert stops == ["ingress", "balancer", "sub-b", "sub-a", "prometheus"]
    assert not any(alive(pid) for pid in [*before.values(), int(back.group(1))])


def test_a_restart_resumes_sessions_and_says_so(runner: StackRunner) -> None:
    port_a = free_port()
    grid = grid_file([("sub-a", port_a)])
    runner.start(grid)
    runner.wait_output(BANNER)
    internal = {"Authorization": f"Bearer {runner.token('internal-token')}"}
    for i, kw in enumerate((11, 22)):
        status, _ = http_json("POST", f"http://127.0.0.1:{port_a}/charge",
                              {"session_id": f"s{i}", "vehicle_id": "ev", "requested_kw": kw,
                               "energy_kwh": 80}, headers=internal)
        assert status == 200
    assert runner.stop() == 0
    runner.start(grid)
    runner.wait_output(BANNER)
    assert re.search(r"make up: resumed from .*\n  sub-a +2 sessions, 33 kW", runner.output), \
        runner.output
    assert runner.stop() == 0
    reset = subprocess.run([sys.executable, "-m", "gridlb.stack", "--reset", "--run-dir",
                            str(runner.run_dir)], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=30, check=False)
    assert reset.returncode == 0, reset.stderr
    runner.start(grid)
    runner.wait_output(BANNER)
    assert "make up: starting empty" in runner.output


def test_a_renamed_grid_on_the_same_prometheus_data_is_scored_and_routed_at_once(
        runner: StackRunner) -> None:
    """The same addresses under new ids: the previous run's series stay visible for the 5-minute
    lookback, and must neither fail the policy (422 many-to-many) nor pass for the new ids."""
    ports = [free_port(), free_port()]
    services = {"ingress": free_port(), "balancer": free_port(), "prometheus": free_port()}
    runner.start(grid_file(list(zip(["substation1", "substation2"], ports, strict=True)),
                 services))
    runner.wait_output(BANNER)
    api = {"Authorization": f"Bearer {runner.token('dev-api-key')}"}
    for i in range(2):   # load on both, so that a left-over score could not pass for 0
        status, body = http_json("POST", f"{runner.url('ingress')}/charge",
                                 {"vehicle_id": f"ev-{i}", "requested_kw": 22,
                                  "energy_kwh": 100}, headers=api)
        assert status == 200, body

    def old_load_scraped() -> bool:
        status, body = http_json("GET", f"{runner.url('balancer')}/policy")
        return status == 200 and all(r["load_kw"] == 22 for r in body["substations"])
    wait_for(old_load_scraped, "Prometheus to scrape the old run's load")
    assert runner.stop() == 0

    runner.start(grid_file(list(zip(["north", "harbor"], ports, strict=True)), services))
    runner.wait_output(BANNER, timeout_s=60)
    ready = time.monotonic()
    assert "does not see" not in runner.output, runner.output
    time.sleep(2 * SCRAPE_INTERVAL_S)   # the bound: two scrape intervals after ready
    status, view = http_json("GET", f"{runner.url('balancer')}/policy")
    assert status == 200
    rows = {r["substation"]: r for r in view["substations"]}
    assert set(rows) == {"north", "harbor"}, view
    assert all(r["score"] == 0.0 and r["load_kw"] == 0.0 for r in rows.values()), view
    assert view["mode"] == "normal" and view["last_error"] is None, view
    status, body = http_json("POST", f"{runner.url('ingress')}/charge",
                             {"vehicle_id": "ev-new", "requested_kw": 11, "energy_kwh": 10},
                             headers=api)
    assert status == 200 and body["substation"] in {"north", "harbor"}, body
    assert time.monotonic() - ready < 10


def consecutive_free_ports(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive ports free right now (replicas take consecutive ports)."""
    for _ in range(attempts):
        first = free_port()
        if first + count - 1 > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    pytest.fail(f"no {count} consecutive free ports in {attempts} attempts")


def test_balancer_replicas_are_supervised_and_charges_keep_succeeding_when_one_is_killed(
        runner: StackRunner) -> None:
    services = {"ingress": free_port(), "balancer": consecutive_free_ports(2),
                "prometheus": free_port()}
    grid = {**grid_file([("sub-a", free_port()), ("sub-b", free_port())], services),
            "balancer_replicas": 2}
    for sub in grid["substations"]:
        sub["capacity_kw"] = 1000       # room for every charge below
    runner.start(grid)
    runner.wait_output(BANNER)
    pids = runner.pids()
    assert set(pids) == {"prometheus", "sub-a", "sub-b", "balancer", "balancer-2", "ingress"}
    replica_urls = [f"http://127.0.0.1:{services['balancer'] + n}" for n in range(2)]
    assert all(f"{url}/policy" in runner.output for url in replica_urls), runner.output
    prometheus = runner.url("prometheus")

    def balancer_targets_up() -> dict[str, float]:
        status, body = http_json("GET", f"{prometheus}/api/v1/query?query="
                                 + urllib.parse.quote('up{job="balancer"}'))
        assert status == 200, body
        return {s["metric"]["instance"]: float(s["value"][1]) for s in body["data"]["result"]}
    instances = {url.removeprefix("http://") for url in replica_urls}
    wait_for(lambda: balancer_targets_up() == dict.fromkeys(instances, 1.0),
             "Prometheus to scrape both replicas under the balancer job")

    def replicas_seen(url: str) -> object:
        status, body = http_json("GET", f"{url}/policy")
        return body.get("balancer_replicas") if status == 200 else None
    # Each replica learns from Prometheus that it is one of two (and spreads its choices).
    wait_for(lambda: all(replicas_seen(url) == 2 for url in replica_urls),
             "each replica to see two balancer replicas up")

    api = {"Authorization": f"Bearer {runner.token('dev-api-key')}"}
    finals: dict[str, tuple[int, Any]] = {}
    retried: list[str] = []

    def charge(key: str) -> int:
        """As a careful client: retried with the same key while the outcome is open (a
        request sent on a connection to the replica as it died cannot be moved to another)."""
        for _ in range(10):
            status, body = http_json("POST", f"{runner.url('ingress')}/charge",
                                     {"vehicle_id": f"ev-{key}", "requested_kw": 7.4,
                                      "energy_kwh": 1}, headers={**api, "Idempotency-Key": key})
            if status == 200 or body.get("error") not in _OPEN_OUTCOMES:
                break
            retried.append(body["error"])
            time.sleep(0.2)
        finals[key] = (status, body)
        return status

    for i in range(4):
        charge(f"before-{i}")
    os.kill(pids["balancer"], signal.SIGKILL)
    # Sequential charges while it is down or restarting (none was in flight when it died):
    # the ingress sends the dead replica's keys to the other one at once.
    deadline = time.monotonic() + 20
    during = 0
    while not re.search(r"make up: balancer is back", runner.output) and \
            time.monotonic() < deadline:
        charge(f"during-{during}")
        during += 1
        time.sleep(0.05)
    back = runner.wait_output(r"make up: balancer is back \(pid (\d+)", timeout_s=1)
    assert re.search(rf"make up: balancer \(pid {pids['balancer']}\) was killed by SIGKILL; "
                     r"restarting it in 0\.5 s", runner.output), runner.output
    assert during >= 1
    assert {key: body for key, (status, body) in finals.items() if status != 200} == {}
    assert len(retried) <= 2, retried    # only requests on connections opened before it died
    new_pid = int(back.group(1))
    assert new_pid != pids["balancer"] and alive(new_pid)
    for name in ("prometheus", "sub-a", "sub-b", "balancer-2", "ingress"):
        assert alive(pids[name]), f"{name} (pid {pids[name]}) stopped"
    assert runner.pids() == pids                     # nothing else was (re)started

    # Back in service: it sees the grid again and gets its share of the keys.
    def restarted_decisions() -> float:
        with urllib.request.urlopen(f"{replica_urls[0]}/metrics", timeout=2) as resp:
            text = resp.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("balancer_decisions_total{")
                   and 'outcome="routed"' in line)
    wait_for(lambda: http_json("GET", f"{replica_urls[0]}/readyz")[0] == 200,
             "the restarted replica to be ready")
    after = 0
    while restarted_decisions() == 0 and after < 40:
        assert charge(f"after-{after}") == 200, finals[f"after-{after}"]
        after += 1
    assert restarted_decisions() > 0, f"no charge reached the restarted replica in {after}"
    wait_for(lambda: balancer_targets_up() == dict.fromkeys(instances, 1.0),
             "Prometheus to scrape the restarted replica")

    assert runner.stop() == 0
    stops = re.findall(r"make up: stopping (\S+) \(pid", runner.output)
    assert stops == ["ingress", "balancer-2", "balancer", "sub-b", "sub-a", "prometheus"]
    assert not any(alive(pid) for pid in [*pids.values(), new_pid])


def test_ingress_replicas_on_postgresql_share_keys_and_survive_a_killed_database(
        tmp_path: Path) -> None:
    """`ingress_replicas: 2` with `ingress_store: postgresql`: make up creates the database
    once, supervises PostgreSQL like the other services, keeps its data across restarts, and
    `make reset` drops it."""
    # The server runs as `postgres` when we are root: its run directory must be reachable by
    # that user (pytest's own temporary directories are not).
    run_dir = Path(tempfile.mkdtemp(prefix="gridlb-stack-pg-"))
    run_dir.chmod(0o755)
    stack = StackRunner(tmp_path, run_dir)
    try:
        first = consecutive_free_ports(2)
        services = {"ingress": first, "balancer": free_port(), "prometheus": free_port(),
                    "postgres": free_port()}
        grid = {**grid_file([("sub-a", free_port())], services), "ingress_replicas": 2,
                "ingress_store": "postgresql"}
        grid["substations"][0]["capacity_kw"] = 1000
        stack.start(grid)
        stack.wait_output(BANNER, timeout_s=90)
        assert "created the PostgreSQL database in" in stack.output
        pids = stack.pids()
        assert set(pids) == {"prometheus", "postgres", "sub-a", "balancer", "ingress",
                             "ingress-2"}
        replicas = [f"http://127.0.0.1:{first + n}" for n in range(2)]
        api = {"Authorization": f"Bearer {stack.token('dev-api-key')}"}

        def charge(key: str, via: int) -> tuple[int, Any]:
            return http_json("POST", f"{replicas[via]}/charge",
                             {"vehicle_id": f"ev-{key}", "requested_kw": 7.4, "energy_kwh": 1},
                             headers={**api, "Idempotency-Key": key})
        status, placed = charge("k-1", 0)
        assert status == 200, placed
        assert charge("k-1", 1) == (200, placed)

        os.kill(pids["postgres"], signal.SIGKILL)
        stack.wait_output(rf"make up: postgres \(pid {pids['postgres']}\) was killed by SIGKILL")
        stack.wait_output(r"make up: postgres is back", timeout_s=60)

        def settled(key: str, via: int) -> tuple[int, Any] | None:
            status, body = charge(key, via)
            assert status != 500, body
            return (status, body) if status == 200 else None
        status, after = wait_for(lambda: settled("k-2", 1), "a charge after the restart")
        assert charge("k-2", 0) == (200, after)
        assert charge("k-1", 1) == (200, placed)        # nothing was lost with the crash

        assert stack.stop() == 0
        stops = re.findall(r"make up: stopping (\S+) \(pid", stack.output)
        assert stops == ["ingress-2", "ingress", "balancer", "sub-a", "postgres", "prometheus"]
        stack.start(grid)                               # kept across restarts
        stack.wait_output(BANNER, timeout_s=90)
        assert "created the PostgreSQL database" not in stack.output
        assert charge("k-1", 1) == (200, placed)
        assert stack.stop() == 0
        reset = subprocess.run([sys.executable, "-m", "gridlb.stack", "--reset", "--run-dir",
                                str(run_dir)], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=30, check=False)
        assert reset.returncode == 0 and "postgres/" in reset.stdout, reset
        assert not (run_dir / "postgres").exists()
    finally:
        stack.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
