"""SIGTERM lets in-flight requests finish, then the service exits cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gridlb.promconfig import REPO_ROOT
from gridlb.stack import ProcessGroup, ServiceSpec, free_port, wait_ready
from tests.integration.conftest import StartCluster, wait_for

pytestmark = pytest.mark.integration


async def test_sigterm_lets_an_in_flight_charge_finish(aiohttp_server: Any,
                                                       tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow_dispatch(request: web.Request) -> web.Response:
        body = await request.json()
        started.set()
        await asyncio.sleep(1.0)
        return web.json_response({"status": "charging", "session_id": body["session_id"],
                                  "substation": "s1", "routed_to": "127.0.0.1:1",
                                  "policy": "least-load"})
    balancer = web.Application()
    balancer.router.add_post("/dispatch", slow_dispatch)
    server = await aiohttp_server(balancer, host="127.0.0.1")
    port = free_port()
    log = (tmp_path / "ingress.log").open("wb")
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "ingress", "--port", str(port),
         "--balancer-url", f"http://127.0.0.1:{server.port}",
         "--store-path", str(tmp_path / "ingress.sqlite3"), "--insecure-no-auth"],
        stdout=log, stderr=subprocess.STDOUT, env=without_keys())
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/healthz", proc)
        async with aiohttp.ClientSession() as http:
            request = asyncio.create_task(http.post(
                f"http://127.0.0.1:{port}/charge",
                json={"vehicle_id": "ev", "requested_kw": 7, "energy_kwh": 7}))
            await asyncio.wait_for(started.wait(), 5)
            proc.send_signal(signal.SIGTERM)
            resp = await asyncio.wait_for(request, 10)
            assert resp.status == 200 and (await resp.json())["status"] == "charging"
            resp.release()
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def without_keys() -> dict[str, str]:
    """This environment without keys: these tests call the service without any, on purpose
    (`--insecure-no-auth`), which a key set in the environment would contradict."""
    return {k: v for k, v in os.environ.items()
            if k not in ("GRID_API_KEYS", "GRID_INTERNAL_TOKEN")}


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def http_get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def post_json(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return int(resp.status)


def test_sigterm_stops_a_substation_cleanly_with_its_sessions_and_energy_saved(
        tmp_path: Path) -> None:
    """A substation's handlers take microseconds, so no request of its can be held in flight
    from outside (a client still sending its body is not one: aiohttp stops reading at
    SIGTERM); what its graceful stop must do besides is save what it holds."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "substation", "--id", "s1", "--port", str(port),
            "--capacity-kw", "100", "--speed-factor", "3600",
            "--state-path", str(tmp_path / "state.sqlite3"), "--insecure-no-auth"]
    group = ProcessGroup(tmp_path / "logs")
    spec = ServiceSpec("s1", argv, f"{base}/healthz", env={"GRID_INTERNAL_TOKEN": ""})
    proc = group.start(spec)
    try:
        wait_ready(spec.ready_url, proc)
        assert post_json(f"{base}/charge", {"session_id": "long", "vehicle_id": "ev",
                                            "requested_kw": 10, "energy_kwh": 1000}) == 200
        assert post_json(f"{base}/sessions/late/fence", {"epoch": 5}) == 200
        # 10 kW at 3600x: 10 kWh per second; wait until the tick has credited some.
        delivered = wait_for(lambda: http_get(f"{base}/sessions/long")["delivered_kwh"],
                             "energy to be delivered")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses(port), "the substation to stop accepting")
        assert proc.wait(15) == 0
        # Restarted: the session is back with the energy delivered up to the shutdown (more
        # than was read before SIGTERM, which any periodic save before it held at most), and
        # the fence still refuses older copies.
        proc = group.start(spec)
        wait_ready(spec.ready_url, proc)
        session = http_get(f"{base}/sessions/long")
        assert session["state"] == "charging" and session["delivered_kwh"] > delivered
        with pytest.raises(urllib.error.HTTPError, match="409"):
            post_json(f"{base}/charge", {"session_id": "late", "epoch": 4, "vehicle_id": "ev",
                                         "requested_kw": 10, "energy_kwh": 1})
    finally:
        group.stop_all()


def test_sigterm_lets_the_balancer_finish_placing_an_in_flight_charge(
        cluster: StartCluster) -> None:
    c = cluster([("a", 100.0)], balancer_args=("--forward-timeout", "8"))
    c.signal("a", signal.SIGSTOP)         # the forward waits on the substation
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(c.charge, "ev-1", 11.0)
            wait_for(lambda: c.in_flight(c.grid.balancer_url) >= 1,
                     "the balancer to be placing the charge")
            balancer = c.group.procs["balancer"]
            balancer.send_signal(signal.SIGTERM)
            wait_for(lambda: refuses(c.grid.balancer_port), "the balancer to stop accepting")
            # The charge in flight needs another second (its substation is still stopped):
            # the balancer must wait for it, not cut it off.
            time.sleep(1.0)
            assert balancer.poll() is None
            c.signal("a", signal.SIGCONT)
            status, body = answer.result(timeout=20)
        assert status == 200 and body["substation"] == "a", body
        assert balancer.wait(15) == 0
    finally:
        c.signal("a", signal.SIGCONT)


def children(pid: int) -> dict[int, str]:
    """The direct child processes of `pid`, with their command lines (Linux /proc)."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = cmdline_of(int(child))
        if cmdline is not None:
            found[int(child)] = cmdline
    return found


def cmdline_of(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return " ".join(a.decode() for a in argv if a)


def service_name(cmdline: str) -> str:
    for name in ("ingress", "balancer", "substation"):
        if f"-m {name}" in cmdline:
            return name
    return "prometheus" if "prometheus" in cmdline else cmdline


def test_make_up_stops_the_ingress_first_then_balancer_substations_prometheus(
        tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("ingress", "balancer", "prometheus", "s1", "s2")}
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(f"""\
policy: least-utilization
policy_dir: {REPO_ROOT / "policies"}
ports: {{ingress: {ports["ingress"]}, balancer: {ports["balancer"]},
        prometheus: {ports["prometheus"]}}}
scrape_interval_s: 0.5
substations:
  - {{id: s1, port: {ports["s1"]}, capacity_kw: 100}}
  - {{id: s2, port: {ports["s2"]}, capacity_kw: 100}}
""")
    # What `make up` runs (gridlb.stack.main), with its state in a temporary directory.
    script = ("import sys; from pathlib import Path; from gridlb.grid import load_grid; "
              "from gridlb.stack import run; "
              f"sys.exit(run(load_grid({str(grid_file)!r}), Path({str(tmp_path / 'run')!r})))")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=log,
                          stderr=subprocess.STDOUT)
    running: dict[int, str] = {}
    try:
        wait_for(lambda: "is up" in (tmp_path / "up.log").read_text(), "make up's banner",
                 timeout_s=60)
        running = children(up.pid)
        assert sorted(service_name(c) for c in running.values()) == \
            ["balancer", "ingress", "prometheus", "substation", "substation"], running
        up.send_signal(signal.SIGTERM)
        # Each service is stopped (and reaped) before the next is told to stop: the order in
        # which they disappear is the order make up stops them in.
        order: list[str] = []
        alive = dict(running)
        deadline = time.monotonic() + 60
        while alive and time.monotonic() < deadline:
            for pid in [p for p in alive if not Path(f"/proc/{p}").exists()]:
                order.append(service_name(alive.pop(pid)))
            time.sleep(0.005)
        assert order == ["ingress", "balancer", "substation", "substation", "prometheus"]
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid, cmdline in running.items():     # only what this test's stack started
            if cmdline_of(pid) == cmdline:
                os.kill(pid, signal.SIGKILL)
        log.close()
