"""Operating the real services: one request id through ingress, balancer and substation and in
their logs (JSON lines), and how each service starts with and without its keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from gridlb.stack import ProcessGroup, ServiceSpec, free_port, wait_ready
from tests.integration.conftest import API_KEY, Cluster, StartCluster, wait_for

pytestmark = pytest.mark.integration

JSON_LOGS = ("--log-format", "json")
GENERATED = re.compile(r"[0-9a-f]{32}")


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}",
        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def log_records(c: Cluster, name: str) -> list[dict[str, Any]]:
    """Every line the service wrote, each of which must be one JSON object."""
    path = c.group.log_dir / f"{name}.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def access_lines(c: Cluster, name: str, rid: str) -> list[tuple[str, str, int]]:
    return [(r["method"], r["route"], r["status"]) for r in log_records(c, name)
            if r.get("request_id") == rid and r["logger"] == "gridlb.access"]


def test_one_request_id_runs_through_all_three_services_and_their_logs(
        cluster: StartCluster) -> None:
    c = cluster([("a", 100.0)], ingress_args=JSON_LOGS, balancer_args=JSON_LOGS,
                substation_args=JSON_LOGS)
    rid = f"it-{uuid.uuid4().hex[:12]}"
    body = {"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30}
    status, answer, headers = call("POST", f"{c.grid.ingress_url}/charge", body,
                                   {"X-Request-Id": rid})
    assert status == 200 and headers["X-Request-Id"] == rid, answer
    # The substation and the balancer wrote theirs before the ingress answered; the ingress's
    # own line follows its answer.
    assert access_lines(c, "a", rid) == [("POST", "/charge", 200)]
    assert access_lines(c, "balancer", rid) == [("POST", "/dispatch", 200)]
    wait_for(lambda: access_lines(c, "ingress", rid) == [("POST", "/charge", 200)],
             "the ingress's access line")
    # Reading the session: the ingress asks the substation directly, with the same id.
    read_id = f"{rid}-read"
    status, session, headers = call("GET", f"{c.grid.ingress_url}/sessions/"
                                    f"{answer['session_id']}", headers={"X-Request-Id": read_id})
    assert status == 200 and headers["X-Request-Id"] == read_id, session
    assert access_lines(c, "a", read_id) == [("GET", "/sessions/{id}", 200)]

    # No id sent: the ingress makes one, and it is the same all the way down.
    status, answer, headers = call("POST", f"{c.grid.ingress_url}/charge", body)
    made = headers["X-Request-Id"]
    assert status == 200 and GENERATED.fullmatch(made), (answer, headers)
    assert access_lines(c, "a", made) == [("POST", "/charge", 200)]
    assert access_lines(c, "balancer", made) == [("POST", "/dispatch", 200)]
    wait_for(lambda: access_lines(c, "ingress", made) == [("POST", "/charge", 200)],
             "the ingress's access line for the generated id")

    # An error carries it too.
    status, answer, headers = call("POST", f"{c.grid.ingress_url}/charge", {"vehicle_id": 1},
                                   {"X-Request-Id": f"{rid}-bad"})
    assert status == 422 and headers["X-Request-Id"] == f"{rid}-bad"

    for name, service in (("ingress", "ingress"), ("balancer", "balancer"), ("a", "substation")):
        records = log_records(c, name)
        starts = [r for r in records if "startup" in r]
        assert len(starts) == 1, starts
        assert starts[0]["service"] == service and starts[0]["startup"]["version"]
        assert starts[0]["message"].startswith(f"{service} starting: version=")
        assert not [r for r in records if "AUTH DISABLED" in r["message"]]


def environment_without_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("GRID_API_KEYS", "GRID_INTERNAL_TOKEN")}


def service_argv(service: str, port: int, tmp_path: Path) -> list[str]:
    common = [sys.executable, "-m", service, "--port", str(port)]
    if service == "ingress":
        return [*common, "--store-path", str(tmp_path / "ingress.sqlite3"),
                "--balancer-url", f"http://127.0.0.1:{free_port()}"]
    if service == "balancer":
        return [*common, "--prometheus-url", f"http://127.0.0.1:{free_port()}"]
    return [*common, "--id", "s1", "--capacity-kw", "50"]


@pytest.mark.parametrize("service", ["ingress", "balancer", "substation"])
def test_without_keys_the_service_refuses_to_start_and_names_the_flag(
        service: str, tmp_path: Path) -> None:
    result = subprocess.run(service_argv(service, free_port(), tmp_path), capture_output=True,
                            text=True, timeout=60, env=environment_without_keys(),
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 2
    assert f"{service}: refusing to start without " in result.stderr
    assert "--insecure-no-auth" in result.stderr


def metric(url: str, name: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        return [line for line in resp.read().decode().splitlines() if line.startswith(name)]


@pytest.mark.parametrize(("service", "path", "body", "status"), [
    ("ingress", "/charge", {"vehicle_id": "ev", "requested_kw": 11, "energy_kwh": 1}, 503),
    ("balancer", "/-/reload", None, 200),
    ("substation", "/charge", {"session_id": "x", "vehicle_id": "ev", "requested_kw": 11,
                               "energy_kwh": 1}, 200),
])
def test_insecure_no_auth_starts_open_with_a_warning_and_the_metric(
        service: str, path: str, body: Any, status: int, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    group = ProcessGroup(tmp_path / "logs")
    spec = ServiceSpec(service, [*service_argv(service, port, tmp_path), "--insecure-no-auth"],
                       f"{base}/healthz",
                       env={"GRID_API_KEYS": "", "GRID_INTERNAL_TOKEN": ""})
    try:
        wait_ready(spec.ready_url, group.start(spec))
        log = (tmp_path / "logs" / f"{service}.log").read_text()
        assert re.search(rf" WARNING {service}\.app request_id=- AUTH DISABLED: no .* "
                         rf"\(--insecure-no-auth\): every caller that reaches 127\.0\.0\.1:{port}",
                         log), log
        assert re.search(rf" INFO {service}\.app request_id=- {service} starting: version=\S+ ",
                         log), log
        assert metric(base, f"{service}_auth_disabled") == [f"{service}_auth_disabled 1.0"]
        (info,) = metric(base, f"{service}_build_info")
        assert info.startswith(f'{service}_build_info{{python="') and info.endswith(" 1.0")
        # Open: no key, yet not refused (the ingress's balancer is nowhere: 503, not 401).
        request = urllib.request.Request(
            f"{base}{path}", method="POST", data=None if body is None else json.dumps(body)
            .encode(), headers={"Content-Type": "application/json", "X-Request-Id": "open-1"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                got, rid = resp.status, resp.headers["X-Request-Id"]
        except urllib.error.HTTPError as err:
            got, rid = err.code, err.headers["X-Request-Id"]
        assert (got, rid) == (status, "open-1")
    finally:
        group.stop_all()
