"""SIGTERM lets in-flight requests finish, then the service exits cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gridlb.stack import free_port, wait_ready

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
         "--store-path", str(tmp_path / "ingress.sqlite3")],
        stdout=log, stderr=subprocess.STDOUT)
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
