"""`python -m gridlb.peek`: the runbook's way to read the balancer's /policy where no port is
published (Compose). Real aiohttp apps on loopback; peek itself is synchronous, so it runs in a
thread beside them."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from balancer.app import create_app
from balancer.config import BalancerConfig
from gridlb.peek import main
from tests.unit.test_refresh import FAST, REPO, A, Client, eventually, fake, policy_view


async def test_peek_prints_the_balancers_policy_view(
        aiohttp_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    (tmp_path / "policies" / "fast.yaml").write_text(FAST)
    config = BalancerConfig(policy_dir=str(tmp_path / "policies"), policy="fast", seed=1)
    client: Client = await aiohttp_client(create_app(config, client=fake({A: (10.0, 100.0)})))

    async def evaluated() -> bool:
        return bool((await policy_view(client))["substations"])
    await eventually(evaluated, "the first snapshot")
    url = str(client.make_url("/policy"))
    assert await asyncio.to_thread(main, [url]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["policy"] == "fast" and view["mode"] == "normal"
    assert [s["instance"] for s in view["substations"]] == [A]


async def test_peek_sends_the_internal_token_and_fails_on_a_refusal(
        aiohttp_server: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def guarded(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.json_response({"error": "unauthorized", "detail": "no token"}, status=401)
        return web.json_response({"sessions": 3})
    app = web.Application()
    app.router.add_get("/status", guarded)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = str(server.make_url("/status"))
    monkeypatch.delenv("GRID_INTERNAL_TOKEN", raising=False)
    assert await asyncio.to_thread(main, [url]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["error"] == "unauthorized" and "answered HTTP 401" in err
    monkeypatch.setenv("GRID_INTERNAL_TOKEN", "s3cret")
    assert await asyncio.to_thread(main, [url]) == 0
    assert json.loads(capsys.readouterr().out) == {"sessions": 3}


def test_peek_says_when_nothing_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "gridlb.peek",
                             f"http://127.0.0.1:{port}/policy", "--timeout", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"peek: http://127.0.0.1:{port}/policy: no answer" in result.stderr
