"""A real substation on a slow disk, killed mid-save; stopped by SIGTERM at its last tick."""

from __future__ import annotations

import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gridlb.stack import ProcessGroup, ServiceSpec, free_port, wait_ready
from tests.integration.conftest import TOKEN, http_json, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Substation:
    base: str
    spec: ServiceSpec
    group: ProcessGroup
    fault_file: Path

    def start(self) -> None:
        wait_ready(self.spec.ready_url, self.group.start(self.spec))

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0
             ) -> tuple[int, Any]:
        return http_json(method, f"{self.base}{path}", body, timeout=timeout,
                         headers={"Authorization": f"Bearer {TOKEN}"})

    def metric(self, name: str) -> float | None:
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture
def substation(tmp_path: Path) -> Iterator[Substation]:
    port = free_port()
    fault_file = tmp_path / "slow-disk-ms"
    argv = [sys.executable, "-m", "substation", "--id", "s1", "--port", str(port),
            "--capacity-kw", "100", "--speed-factor", "3600", "--history",
            "--state-path", str(tmp_path / "state.sqlite3"), "--fault-file", str(fault_file),
            # A tick every 30 s: the shutdown's own tick is the one that completes a session.
            "--tick-interval", "30"]
    group = ProcessGroup(tmp_path / "logs")
    base = f"http://127.0.0.1:{port}"
    # Services refuse to start without their keys (tests/integration/conftest.py).
    sub = Substation(base, ServiceSpec("s1", argv, f"{base}/healthz",
                                       {"GRID_INTERNAL_TOKEN": TOKEN}), group, fault_file)
    try:
        sub.start()
        yield sub
    finally:
        group.stop_all()


CHARGE = {"session_id": "s-1", "vehicle_id": "ev-1", "epoch": 1, "requested_kw": 10.0,
          "energy_kwh": 50.0}


class Call(threading.Thread):
    """One request on its own thread: its answer (status, body) or the exception, and when."""

    def __init__(self, sub: Substation, method: str, path: str, body: Any) -> None:
        super().__init__(daemon=True)
        self.args_ = (sub, method, path, body)
        self.answer: tuple[int, Any] | BaseException | None = None
        self.answered_at = 0.0
        self.start()

    def run(self) -> None:
        sub, method, path, body = self.args_
        try:
            self.answer = sub.call(method, path, body, timeout=20)
        except Exception as exc:
            self.answer = exc
        self.answered_at = time.monotonic()


def test_on_a_slow_disk_nothing_confirms_a_session_before_its_commit_and_a_crash_loses_it_unseen(
        substation: Substation) -> None:
    substation.fault_file.write_text("4000")      # every commit takes 4 s more
    charge = Call(substation, "POST", "/charge", CHARGE)
    wait_for(lambda: substation.metric("substation_sessions_saving") == 1,
             "the admission to be on its way to the disk")
    # While it is: a repeat (the balancer's retry) and a fence (a newer dispatch's resolve).
    repeat = Call(substation, "POST", "/charge", CHARGE)
    fence = Call(substation, "POST", "/sessions/s-1/fence", {"epoch": 2})
    status, body = substation.call("GET", "/status")
    assert (status, body["active_sessions"], body["load_kw"]) == (200, 0, 0.0)
    # Neither may confirm it within a second (on the old code the fence said "charging" at once).
    for call in (repeat, fence):
        call.join(1.0)
    assert (charge.answer, repeat.answer, fence.answer) == (None, None, None)
    substation.group.kill("s1")                    # a crash before the commit
    for call in (charge, repeat, fence):
        call.join(10)
        assert isinstance(call.answer, OSError), call.answer
    substation.fault_file.write_text("0")
    substation.start()
    # It was never on disk, and nobody was told it was.
    assert substation.call("GET", "/sessions/s-1")[0] == 404
    status, body = substation.call("POST", "/sessions/s-1/fence", {"epoch": 2})
    assert (status, body["state"]) == (200, "absent")


def test_a_slow_disk_set_while_running_delays_each_confirmation(substation: Substation) -> None:
    started = time.monotonic()
    assert substation.call("POST", "/charge", CHARGE)[0] == 200
    fast = time.monotonic() - started
    substation.fault_file.write_text("500")
    started = time.monotonic()
    status, body = substation.call("POST", "/charge", {**CHARGE, "session_id": "s-2"})
    slow = time.monotonic() - started
    assert status == 200 and body["state"] == "charging"
    assert slow >= 0.5 > fast


def test_sigterm_saves_the_sessions_its_last_tick_completed(substation: Substation) -> None:
    # 10 kW for 0.001 kWh at 3600x is done in 0.4 ms, but the next tick is 30 s away: the
    # shutdown's tick completes it.
    assert substation.call("POST", "/charge", {**CHARGE, "energy_kwh": 0.001})[0] == 200
    assert substation.call("GET", "/sessions/s-1")[1]["state"] == "charging"
    proc = substation.group.procs["s1"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    del substation.group.procs["s1"]
    substation.start()
    status, body = substation.call("GET", "/sessions/s-1")
    # Completed once, with its energy, not charging again from an older save.
    assert (status, body["state"], body["delivered_kwh"]) == (200, "completed", 0.001)
    status, body = substation.call("GET", "/status")
    assert (body["active_sessions"], body["load_kw"]) == (0, 0.0)
