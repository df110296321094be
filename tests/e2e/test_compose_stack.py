"""The Compose stack end to end, driven through the Docker engine.

Skipped, with the reason, where no Docker engine is reachable (as on the development machines,
which have only the client). Where one is, it builds the images, brings the stack up, runs the
rush hour, scales to three substations and checks the third receives traffic, stops one
substation and checks requests still succeed, and tears everything down.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest

from gridlb.promconfig import REPO_ROOT

pytestmark = pytest.mark.e2e
PROJECT = "sglb-e2e"
API_KEY = "e2e-key"


def _engine_or_skip() -> Any:
    docker = pytest.importorskip("docker", reason="the Python docker package is not installed")
    # Checked first because the client leaks its socket when the engine is absent.
    sock = "/var/run/docker.sock"
    if not os.environ.get("DOCKER_HOST") and not os.path.exists(sock):
        pytest.skip(f"no Docker engine reachable: {sock} does not exist and DOCKER_HOST is unset")
    try:
        client = docker.from_env()
    except Exception as exc:   # any failure to reach the engine means: cannot run here
        pytest.skip(f"no Docker engine reachable: {type(exc).__name__}: {exc}")
    try:
        client.ping()
    except Exception as exc:
        client.close()
        pytest.skip(f"no Docker engine reachable: {type(exc).__name__}: {exc}")
    return client


def compose(*args: str) -> None:
    subprocess.run(["docker", "compose", "-p", PROJECT, *args], cwd=REPO_ROOT, check=True,
                   timeout=900, env={"GRID_API_KEYS": API_KEY, "PATH": "/usr/bin:/bin"})


def charge(i: int) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        "http://127.0.0.1:8080/charge", method="POST",
        data=json.dumps({"vehicle_id": f"ev-{i}", "requested_kw": 7.4,
                         "energy_kwh": 20}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def rush(n: int) -> Counter[str]:
    results = [charge(i) for i in range(n)]
    assert all(status == 200 for status, _ in results), results
    return Counter(body["substation"] for _, body in results)


def test_compose_stack_end_to_end() -> None:
    engine = _engine_or_skip()
    try:
        compose("up", "--build", "--detach", "--wait")
        assert len(rush(50)) == 2
        compose("up", "--detach", "--wait", "--scale", "substation=3")
        # --wait returns once healthy; Prometheus's DNS discovery and the balancer's refresh
        # follow within seconds: poll (bounded) until the third substation takes traffic.
        for _ in range(20):
            if len(rush(30)) == 3:
                break
        else:
            pytest.fail("the third substation received no traffic")
        replicas = engine.containers.list(filters={"label": [
            f"com.docker.compose.project={PROJECT}", "com.docker.compose.service=substation"]})
        replicas[0].stop()
        # Right away: the balancer moves refused connections to the next substation.
        assert len(rush(20)) >= 1   # rush() asserts every request succeeded
    finally:
        compose("down", "--volumes", "--remove-orphans")
