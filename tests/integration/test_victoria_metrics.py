"""The balancer against VictoriaMetrics instead of Prometheus: real single-node VictoriaMetrics
(Debian's `victoria-metrics`) on a free loopback port with its own data directory, scraping real
substations with the project's Prometheus scrape config; a real balancer reading it.

VictoriaMetrics serves the newest samples only after `-search.latencyOffset` (30 s by default)
and ignores a `latency_offset` query parameter: it answers a query asked now with scrapes that
old. The balancer must route all the same, and its snapshot's age must be that of the scrapes,
not of the query (docs/victoriametrics.md)."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridlb.grid import GridConfig, SubstationSpec
from gridlb.promconfig import REPO_ROOT, render_prometheus_dir
from gridlb.stack import (
    ProcessGroup,
    ServiceSpec,
    balancer_spec,
    free_port,
    substation_spec,
    wait_ready,
)
from tests.integration.conftest import TOKEN, http_json, wait_for

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL_S = 0.5
LATENCY_OFFSET_S = 6.0   # how far behind "now" VictoriaMetrics answers (its default is 30 s)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ProcessGroup]:
    processes = ProcessGroup(tmp_path / "logs")
    try:
        yield processes
    finally:
        processes.stop_all()


def start(group: ProcessGroup, spec: ServiceSpec) -> None:
    proc = group.start(spec)
    try:
        wait_ready(spec.ready_url, proc)
    except RuntimeError as exc:
        pytest.fail(f"{spec.name} did not start: {exc}\n{group.log_tail(spec.name)}")


def test_the_balancer_routes_on_victoria_metrics_and_its_age_is_the_scrapes(
        group: ProcessGroup, tmp_path: Path) -> None:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.skip("victoria-metrics is not installed (Debian: apt-get install "
                    "victoria-metrics; `make test` runs scripts/ensure-victoria-metrics.sh)")
    policy_dir = tmp_path / "policies"
    shutil.copytree(REPO_ROOT / "policies", policy_dir)
    subs = (SubstationSpec("vm-a", free_port(), 100.0), SubstationSpec("vm-b", free_port(), 100.0))
    grid = GridConfig(substations=subs, policy="least-forecast-utilization",
                      balancer_port=free_port(), prometheus_port=free_port(),
                      scrape_interval_s=SCRAPE_INTERVAL_S, speed_factor=1.0,
                      policy_dir=str(policy_dir))
    env = {"GRID_INTERNAL_TOKEN": TOKEN}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for sub in subs:
        start(group, substation_spec(grid, sub.id, sub.port, sub.capacity_kw, run_dir, env))
    # The project's Prometheus config as is: VictoriaMetrics skips what it does not know
    # (rule_files) only with strictParse=false.
    config = render_prometheus_dir(tmp_path / "vm", SCRAPE_INTERVAL_S,
                                   {"substation": [f"127.0.0.1:{s.port}" for s in subs]},
                                   grid.name)
    start(group, ServiceSpec("victoria-metrics", [
        binary, f"-httpListenAddr=127.0.0.1:{grid.prometheus_port}",
        f"-storageDataPath={tmp_path / 'vm-data'}", f"-promscrape.config={config}",
        "-promscrape.config.strictParse=false", f"-search.latencyOffset={LATENCY_OFFSET_S:g}s",
        "-loggerLevel=ERROR"], f"{grid.prometheus_url}/health"))
    start(group, balancer_spec(grid, env))     # --max-snapshot-age 15: above the offset
    balancer = grid.balancer_url

    def routable() -> bool:
        status, ready = http_json("GET", f"{balancer}/readyz")
        return status == 200 and ready["usable_substations"] == 2
    wait_for(routable, "the balancer to see both substations through VictoriaMetrics",
             timeout_s=LATENCY_OFFSET_S + 20)

    status, body = http_json("POST", f"{balancer}/dispatch", {
        "session_id": f"vm-{uuid.uuid4()}", "vehicle_id": "ev-vm", "requested_kw": 11.0,
        "energy_kwh": 10.0}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["status"] == "charging", body
    assert body["substation"] in {"vm-a", "vm-b"} and body["policy"] == grid.policy

    # The age is the scrapes' (about the latency offset), not the query's (under a second),
    # and agrees with the scrape times /policy lists; below the maximum age it stays normal.
    def scored() -> dict[str, object] | None:
        view = http_json("GET", f"{balancer}/policy")[1]
        return view if all(r["score"] is not None for r in view["substations"]) else None
    view = wait_for(scored, "scores from the forecast-aware policy")
    asked = time.time()
    newest = max(float(r["scraped_at"]) for r in view["substations"])
    assert view["data_at"] == pytest.approx(newest)
    assert LATENCY_OFFSET_S - 1.0 <= view["age_s"] <= LATENCY_OFFSET_S + 4.0, view
    assert view["evaluated_at"] - view["data_at"] >= LATENCY_OFFSET_S - 1.0, view
    assert asked - newest >= view["age_s"] - 0.5
    assert view["mode"] == "normal" and not view["policy_no_data"], view

    # VictoriaMetrics has no Prometheus web UI: the graph link /policy gives leads nowhere.
    status, _ = http_status(view["prometheus_graph_url"])
    assert status == 404


def http_status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
