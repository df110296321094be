"""The Compose stack: valid for docker-compose, hardened, and shaped as docs/operations.md says.

What it does when it runs is tests/e2e/test_compose_stack.py's job; this checks the file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridlb.http import SHUTDOWN_TIMEOUT_S
from gridlb.promconfig import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
SECRETS = ("GRID_INTERNAL_TOKEN", "GRID_API_KEYS", "GRAFANA_ADMIN_PASSWORD")
needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not installed (make setup installs Debian's package)")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def compose_config(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with only `env` (and PATH) in its environment, from `cwd`, so a
    developer's own .env or shell variables cannot change the outcome."""
    return subprocess.run(
        ["docker-compose", "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(cwd / "empty.env"), "config"],
        capture_output=True, text=True, timeout=60, cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "empty.env").write_text("")
    return tmp_path


@needs_compose
def test_docker_compose_config_accepts_the_file_with_secrets(workdir: Path) -> None:
    result = compose_config({"GRID_INTERNAL_TOKEN": "t0k", "GRID_API_KEYS": "k3y",
                             "GRAFANA_ADMIN_PASSWORD": "pa55"}, workdir)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert resolved["ingress"]["environment"]["GRID_API_KEYS"] == "k3y"
    assert resolved["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "pa55"
    for name in ("substation", "balancer", "ingress"):
        assert resolved[name]["environment"]["GRID_INTERNAL_TOKEN"] == "t0k"


@needs_compose
@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_each_secret(workdir: Path, missing: str) -> None:
    env = {name: "set" for name in SECRETS if name != missing}
    result = compose_config(env, workdir)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr and "scripts/compose-env.sh" in result.stderr


def test_no_secret_has_a_default_in_the_file() -> None:
    text = COMPOSE_FILE.read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (name, uses)


def test_compose_env_writes_fresh_secrets_once(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("GRID_POLICY=least-load")   # the user's own line, no newline at the end
    script = str(REPO_ROOT / "scripts" / "compose-env.sh")
    subprocess.run(["bash", script, str(env_file)], check=True, capture_output=True, timeout=30)
    first = env_file.read_text()
    values = dict(line.split("=", 1) for line in first.splitlines())
    assert values["GRID_POLICY"] == "least-load"
    assert all(len(values[name]) >= 24 for name in SECRETS)
    assert values["GRID_API_KEYS"] != values["GRID_INTERNAL_TOKEN"]
    assert env_file.stat().st_mode & 0o077 == 0, "secrets readable by others"
    subprocess.run(["bash", script, str(env_file)], check=True, capture_output=True, timeout=30)
    assert env_file.read_text() == first, "a second run must keep the secrets clients use"


def test_compose_env_file_is_private_and_never_committed_or_built(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "compose-env.sh"), str(env_file)],
                   check=True, capture_output=True, timeout=30)
    assert env_file.stat().st_mode & 0o077 == 0
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().split()
    assert ".env" in (REPO_ROOT / ".dockerignore").read_text().split()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_compose_prometheus_config_passes_promtool() -> None:
    result = subprocess.run(["promtool", "check", "config",
                             str(REPO_ROOT / "prometheus" / "prometheus.docker.yml")],
                            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_ingress_prometheus_and_grafana_are_published_and_on_loopback() -> None:
    services = compose()["services"]
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"ingress", "prometheus", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("${GRID_BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_prometheus_lifecycle_and_admin_apis_are_off() -> None:
    command = compose()["services"]["prometheus"]["command"]
    assert not any("enable-lifecycle" in arg or "enable-admin-api" in arg for arg in command)


def test_state_lives_in_named_volumes() -> None:
    spec = compose()
    services = spec["services"]
    assert "substation-state:/data" in services["substation"]["volumes"]
    assert "ingress-state:/data" in services["ingress"]["volumes"]
    assert "--store-path=/data/ingress.sqlite3" in services["ingress"]["command"]
    # Prometheus's history (and the alerts' 30 m and 6 h windows) survives `down` + `up`.
    assert "prometheus-data:/prometheus" in services["prometheus"]["volumes"]
    assert "--storage.tsdb.path=/prometheus" in services["prometheus"]["command"]
    assert {"substation-state", "ingress-state", "prometheus-data"} <= set(spec["volumes"])


def duration_s(text: str) -> float:
    """A Compose/Prometheus duration ("20s", "1m30s", "500ms") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def test_kept_prometheus_data_lets_the_series_of_moved_containers_go_within_seconds() -> None:
    """With its data kept, Prometheus shows the last samples of containers that came back at
    new addresses for the whole lookback (it writes no staleness markers when it stops): a
    dead substation would look `up` to the balancer for 5 minutes by default."""
    command = compose()["services"]["prometheus"]["command"]
    (flag,) = [a for a in command if a.startswith("--query.lookback-delta=")]
    lookback = duration_s(flag.split("=", 1)[1])
    prom = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.docker.yml").read_text())
    scrape_interval = duration_s(prom["global"]["scrape_interval"])
    # Long enough for several missed scrapes, short enough to be gone before the stack is up.
    assert 5 * scrape_interval <= lookback <= 60, (lookback, scrape_interval)


def test_every_service_has_time_to_drain_before_sigkill() -> None:
    for name, svc in compose()["services"].items():
        assert "stop_grace_period" in svc, name
        # The drain, then the state save (a substation's sessions), then exit.
        assert duration_s(svc["stop_grace_period"]) >= SHUTDOWN_TIMEOUT_S + 5, name


def test_every_service_rotates_its_logs_from_one_anchor() -> None:
    spec = compose()
    anchor = spec["x-logging"]
    assert anchor["driver"] == "json-file"
    assert anchor["options"]["max-size"] and int(anchor["options"]["max-file"]) >= 2
    for name, svc in spec["services"].items():
        assert svc.get("logging") == anchor, name
    text = COMPOSE_FILE.read_text()
    assert text.count("logging: *logging") == len(spec["services"])


def test_grafana_admin_password_comes_from_the_env_file_only() -> None:
    env = compose()["services"]["grafana"]["environment"]
    # No default: without it Grafana would start with admin/admin.
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_has_a_default_command_exposed_ports_and_oci_labels() -> None:
    instructions = dockerfile_instructions()
    cmds = [args for op, args in instructions if op == "CMD"]
    assert len(cmds) == 1 and cmds[0].startswith("["), cmds   # exec form: signals reach it
    exposed = {int(p.split("/")[0]) for op, args in instructions if op == "EXPOSE"
               for p in args.split()}
    assert exposed == {8080, 8081, 9100}
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"',
                             " ".join(args for op, args in instructions if op == "LABEL")))
    assert {"title", "description", "version", "licenses"} <= {
        k.removeprefix("org.opencontainers.image.") for k in labels}
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    project = dict(re.findall(r'^(version|license) = "([^"]+)"', pyproject, re.MULTILINE))
    version = dict(re.findall(r"(\w+)=(\S+)", " ".join(
        args for op, args in instructions if op == "ARG")))["VERSION"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert version == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]


def test_the_default_command_names_each_service_as_compose_runs_it() -> None:
    (cmd,) = [json.loads(args) for op, args in dockerfile_instructions() if op == "CMD"]
    copies = [args.split() for op, args in dockerfile_instructions() if op == "COPY"]
    copied = {words[-1].rsplit("/", 1)[-1]: words[0] for words in copies
              if words[-1].startswith("/usr/local/bin/")}
    result = subprocess.run([sys.executable, str(REPO_ROOT / copied[cmd[0]])],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 64, result   # EX_USAGE: nothing was started
    services = compose()["services"]
    assert "substation-entrypoint" in result.stderr
    assert services["substation"]["entrypoint"] == ["substation-entrypoint"]
    for name in ("balancer", "ingress"):
        assert f"python -m {name}" in result.stderr
        assert services[name]["command"][:3] == ["python", "-m", name]


def test_every_long_running_service_restarts_after_a_crash() -> None:
    for name, svc in compose()["services"].items():
        assert svc.get("restart") in ("unless-stopped", "always"), name


def test_substations_scale_and_are_discovered_by_dns() -> None:
    substation = compose()["services"]["substation"]
    assert "container_name" not in substation and "ports" not in substation
    prom = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.docker.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "substation")
    assert job["dns_sd_configs"][0]["names"] == ["substation"]


def test_balancers_scale_behind_the_ingress_and_are_discovered_by_dns() -> None:
    services = compose()["services"]
    balancer = services["balancer"]
    assert "container_name" not in balancer and "ports" not in balancer
    # The ingress names the service: every A record of it is a replica (ingress/balancers.py).
    assert "--balancer-url=http://balancer:8081" in services["ingress"]["command"]
    prom = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.docker.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "balancer")
    assert job["dns_sd_configs"][0]["names"] == ["balancer"]
    assert job["dns_sd_configs"][0]["port"] == 8081


def test_every_service_has_a_healthcheck_and_start_order() -> None:
    services = compose()["services"]
    assert all("healthcheck" in svc for svc in services.values())
    assert services["ingress"]["depends_on"]["balancer"]["condition"] == "service_healthy"
    assert services["balancer"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_healthchecks_pass_no_argument_with_spaces() -> None:
    # podman's Docker API splits healthcheck arguments on spaces.
    for name, svc in compose()["services"].items():
        assert not any(" " in arg for arg in svc["healthcheck"]["test"]), name


def test_policies_are_mounted_so_edits_need_no_rebuild() -> None:
    volumes = compose()["services"]["balancer"]["volumes"]
    assert any(v.startswith("./policies:/policies") for v in volumes)


def test_every_balancer_replica_shares_one_writable_active_policy_file() -> None:
    spec = compose()
    balancer = spec["services"]["balancer"]
    # A named volume is shared by every replica of the service and kept across restarts; the
    # image's /data belongs to its user, so the balancer can write the file there.
    assert "balancer-state:/data" in balancer["volumes"] and "balancer-state" in spec["volumes"]
    assert "--active-policy-file=/data/active-policy" in balancer["command"]
    assert "--policy=${GRID_POLICY:-least-forecast-utilization}" in balancer["command"]


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    dashboards_dir = next(host for host, inside in mounts.items()
                          if inside == "/var/lib/grafana/dashboards")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO_ROOT / dashboards_dir / Path(home).name).is_file(), home
    provider = yaml.safe_load(
        (REPO_ROOT / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load(
        (REPO_ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    # The datasource names the Prometheus service on its container port.
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]


# docker-compose.postgres.yml: ingress replicas on PostgreSQL.

POSTGRES_FILE = REPO_ROOT / "docker-compose.postgres.yml"
ALL_SECRETS = {"GRID_INTERNAL_TOKEN": "t0k", "GRID_API_KEYS": "k3y",
               "GRID_POSTGRES_PASSWORD": "pa55", "GRAFANA_ADMIN_PASSWORD": "gr4f"}


def compose_postgres_config(env: dict[str, str], cwd: Path
                            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE),
         "-f", str(POSTGRES_FILE), "--env-file", str(cwd / "empty.env"), "config"],
        capture_output=True, text=True, timeout=60, cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})


@needs_compose
def test_the_postgres_file_puts_every_ingress_replica_on_one_postgresql(workdir: Path) -> None:
    result = compose_postgres_config({**ALL_SECRETS, "GRID_INGRESS_PORT": ""}, workdir)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    ingress, postgres = services["ingress"], services["postgres"]
    assert ingress["environment"]["GRID_STORE_URL"] == \
        "postgresql://grid:pa55@postgres:5432/grid"
    # The password is not on the command line, and SQLite is not used.
    assert not any("store" in arg or "pa55" in arg for arg in ingress["command"])
    assert ingress["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ingress["depends_on"]["balancer"]["condition"] == "service_healthy"
    # Each replica publishes a port of its own, on loopback.
    assert ingress["ports"] == ["127.0.0.1::8080/tcp"]
    assert "ports" not in postgres                     # inside the compose network only
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "pa55"
    assert "synchronous_commit=on" in postgres["command"]
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data:rw"]
    assert postgres["restart"] == "unless-stopped"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert not any(" " in arg for arg in postgres["healthcheck"]["test"])


@needs_compose
def test_the_postgres_file_refuses_to_start_without_its_password(workdir: Path) -> None:
    env = {k: v for k, v in ALL_SECRETS.items() if k != "GRID_POSTGRES_PASSWORD"}
    result = compose_postgres_config(env, workdir)
    assert result.returncode != 0
    assert "set GRID_POSTGRES_PASSWORD" in result.stderr
    assert "scripts/compose-env.sh" in result.stderr


@needs_compose
def test_the_ingress_port_is_8080_unless_set_and_may_be_left_to_the_engine(
        workdir: Path) -> None:
    def ports(env: dict[str, str]) -> list[str]:
        result = compose_config({"GRID_INTERNAL_TOKEN": "t", "GRID_API_KEYS": "k",
                                 "GRAFANA_ADMIN_PASSWORD": "g", **env}, workdir)
        assert result.returncode == 0, result.stderr
        return list(yaml.safe_load(result.stdout)["services"]["ingress"]["ports"])
    assert ports({}) == ["127.0.0.1:8080:8080/tcp"]
    assert ports({"GRID_INGRESS_PORT": "18080"}) == ["127.0.0.1:18080:8080/tcp"]
    assert ports({"GRID_INGRESS_PORT": ""}) == ["127.0.0.1::8080/tcp"]


def test_the_postgres_password_has_no_default() -> None:
    uses = re.findall(r"\$\{GRID_POSTGRES_PASSWORD([^}]*)\}", POSTGRES_FILE.read_text())
    assert len(uses) == 2 and all(u.startswith(":?") for u in uses), uses


def test_compose_env_writes_a_postgres_password(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "compose-env.sh"), str(env_file)],
                   check=True, capture_output=True, timeout=30)
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert len(values["GRID_POSTGRES_PASSWORD"]) >= 24
    assert len(set(values.values())) == 4      # with the API key, token and Grafana's
