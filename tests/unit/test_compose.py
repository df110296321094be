"""The Compose stack: valid for docker-compose, and shaped as the README says."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from gridlb.promconfig import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (make setup installs Debian's package)")
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_compose_prometheus_config_passes_promtool() -> None:
    result = subprocess.run(["promtool", "check", "config",
                             str(REPO_ROOT / "prometheus" / "prometheus.docker.yml")],
                            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_ingress_prometheus_and_grafana_are_published() -> None:
    services = compose()["services"]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"ingress", "prometheus", "grafana"}


def test_substations_scale_and_are_discovered_by_dns() -> None:
    substation = compose()["services"]["substation"]
    assert "container_name" not in substation and "ports" not in substation
    prom = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.docker.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "substation")
    assert job["dns_sd_configs"][0]["names"] == ["substation"]


def test_every_service_has_a_healthcheck_and_start_order() -> None:
    services = compose()["services"]
    assert all("healthcheck" in svc for svc in services.values())
    assert services["ingress"]["depends_on"]["balancer"]["condition"] == "service_healthy"
    assert services["balancer"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_policies_are_mounted_so_edits_need_no_rebuild() -> None:
    volumes = compose()["services"]["balancer"]["volumes"]
    assert any(v.startswith("./policies:/policies") for v in volumes)
