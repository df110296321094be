"""Drive the Compose stack of docker-compose.yml: the compose CLI for the lifecycle, the engine API
to watch containers (and crash one), and HTTP to the published ports for everything asserted."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
from docker.models.containers import Container

from gridlb.promconfig import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
POSTGRES_FILE = REPO_ROOT / "docker-compose.postgres.yml"
APP_SERVICES = ("prometheus", "substation", "balancer", "ingress")
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
T = TypeVar("T")


def compose_command() -> list[str] | None:
    """`docker compose` (v2) when the plugin is there, else Debian's `docker-compose` (v1)."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: Any


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout_s: float = 10.0) -> Response:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, method=method, data=data, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            raw, status, got = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw, status, got = err.read(), err.code, dict(err.headers)
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Response(status, got, parsed)


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float,
             period_s: float = 0.5, detail: Callable[[], str] = lambda: "") -> T:
    """Poll `check` until it returns something other than None; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        try:
            result = check()
            if result is not None:
                return result
        except (OSError, urllib.error.URLError, docker.errors.APIError) as exc:
            last_error = f" (last error: {type(exc).__name__}: {exc})"
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s{last_error}\n{detail()}")
        time.sleep(period_s)


@dataclass
class ComposeStack:
    command: list[str]
    project: str
    client: docker.DockerClient
    env: dict[str, str]             # the compose process's whole environment
    env_file: Path
    services: tuple[str, ...]
    ingress_port: int           # 0: each replica publishes a port the engine chose
    prometheus_port: int
    api_key: str
    internal_token: str
    sessions: dict[str, str] = field(default_factory=dict)    # session id -> substation
    timings: dict[str, float] = field(default_factory=dict)
    files: tuple[Path, ...] = (COMPOSE_FILE,)                 # the compose files, in order

    def _files(self) -> list[str]:
        return [arg for path in self.files for arg in ("-f", str(path))]

    @property
    def ingress(self) -> str:
        if self.ingress_port:
            return f"http://127.0.0.1:{self.ingress_port}"
        urls = sorted(self.ingress_urls().values())
        if not urls:
            raise OSError("no ingress container publishes a port yet")
        return urls[0]

    def ingress_urls(self) -> dict[str, str]:
        """Ingress container name -> the URL of the port it publishes (none yet: left out)."""
        urls = {}
        for container in self.containers("ingress"):
            container.reload()
            bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get("8080/tcp")
            if bindings:
                urls[str(container.name)] = \
                    f"http://{bindings[0]['HostIp'] or '127.0.0.1'}:{bindings[0]['HostPort']}"
        return urls

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    # --- the compose CLI -------------------------------------------------------------------
    def compose(self, *args: str, timeout_s: float = 600.0) -> str:
        cmd = [*self.command, "--env-file", str(self.env_file), "-p", self.project,
               *self._files(), *args]
        result = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env, capture_output=True,
                                text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise AssertionError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}{result.stderr[-3000:]}\n{self.logs()}")
        return result.stdout + result.stderr

    def up(self, substations: int, balancers: int = 1, ingresses: int = 1) -> None:
        self.compose("up", "--detach", "--no-build", "--scale", f"substation={substations}",
                     "--scale", f"balancer={balancers}", "--scale", f"ingress={ingresses}",
                     *self.services)

    def down(self, volumes: bool = False) -> None:
        self.compose("down", "--remove-orphans", "--timeout", "10",
                     *(["--volumes"] if volumes else []))

    def logs(self, tail: int = 25) -> str:
        cmd = [*self.command, "--env-file", str(self.env_file), "-p", self.project,
               *self._files(), "logs", "--no-color", "--tail", str(tail)]
        try:
            result = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env, capture_output=True,
                                    text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "(compose logs timed out)"
        return "compose logs:\n" + (result.stdout + result.stderr)[-6000:]

    # --- the engine ------------------------------------------------------------------------
    def containers(self, service: str | None = None, stopped: bool = False) -> list[Container]:
        labels = [f"{PROJECT_LABEL}={self.project}"]
        if service:
            labels.append(f"{SERVICE_LABEL}={service}")
        found: list[Container] = self.client.containers.list(all=stopped,
                                                             filters={"label": labels})
        return found

    def health(self) -> dict[str, str]:
        """Each container's name -> status (health status when it has a healthcheck)."""
        states = {}
        for c in self.containers(stopped=True):
            state = c.attrs["State"]
            health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status")
            states[str(c.name)] = f"{state.get('Status')}/{health or '-'}"
        return states

    def ip_of(self, container: Container) -> str:
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        ips = [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]
        assert len(ips) == 1, f"{container.name}: expected one network address, got {networks}"
        return str(ips[0])

    def remove_leftovers(self) -> list[str]:
        """Remove, by ID, whatever of this project `down` left behind; say what it was."""
        left: list[str] = []
        project_filter: dict[str, str | list[str] | bool] = {
            "label": [f"{PROJECT_LABEL}={self.project}"]}
        for c in self.client.containers.list(all=True, filters=project_filter):
            left.append(f"container {c.name}")
            c.remove(force=True, v=True)
        for n in self.client.networks.list(filters=project_filter):
            left.append(f"network {n.name}")
            n.remove()
        for v in self.client.volumes.list(filters=project_filter):
            left.append(f"volume {v.name}")
            v.remove(force=True)
        return left

    def run_inside(self, service: str, argv: list[str], environment: dict[str, str]
                   ) -> tuple[int, str]:
        """Run `argv` in the first container of `service` (inside the Compose network)."""
        container = self.containers(service)[0]
        result = container.exec_run(argv, environment=environment)
        output = result.output if isinstance(result.output, bytes) else b"".join(result.output)
        return int(result.exit_code or 0), output.decode(errors="replace")

    # --- HTTP through the published ports ----------------------------------------------------
    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    def charge(self, vehicle: str, kw: float, kwh: float, key: str | None = None,
               idempotency_key: str | None = None) -> Response:
        headers = self.auth(key)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return http("POST", f"{self.ingress}/charge",
                    {"vehicle_id": vehicle, "requested_kw": kw, "energy_kwh": kwh}, headers)

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = http("GET", url)
        assert answer.status == 200 and answer.body["status"] == "success", answer
        result: list[dict[str, Any]] = answer.body["data"]["result"]
        return result

    def by_label(self, promql: str, label: str = "substation") -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(promql)}

    def wait_healthy(self, substations: int, timeout_s: float, balancers: int = 1,
                     ingresses: int = 1) -> float:
        """Until every container is healthy and, through the published ports, the ingress and
        Prometheus answer and Prometheus scrapes every target; returns the seconds it took."""
        started = time.monotonic()
        scale = {"substation": substations, "balancer": balancers, "ingress": ingresses}
        expected = {s: scale.get(s, 1) for s in self.services}

        def containers_healthy() -> bool | None:
            counts: dict[str, int] = {}
            for c in self.containers():
                state = c.attrs["State"]
                health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status")
                if state.get("Status") != "running" or health != "healthy":
                    return None
                service = c.labels[SERVICE_LABEL]
                counts[service] = counts.get(service, 0) + 1
            return True if counts == expected else None

        def published_ports_answer() -> bool | None:
            ingress = [self.ingress] if self.ingress_port else list(self.ingress_urls().values())
            if len(ingress) < (1 if self.ingress_port else ingresses) or any(
                    http("GET", f"{url}/healthz", timeout_s=3).status != 200 for url in ingress):
                return None
            if http("GET", f"{self.prometheus}/-/ready", timeout_s=3).status != 200:
                return None
            jobs = [t["metric"]["job"] for t in self.query("up == 1")]
            ok = (jobs.count("substation") == substations and jobs.count("balancer") == balancers
                  and jobs.count("ingress") == ingresses and "prometheus" in jobs)
            return True if ok else None

        detail = lambda: f"containers: {self.health()}\n{self.logs()}"  # noqa: E731
        wait_for("every container healthy", containers_healthy, timeout_s, detail=detail)
        remaining = max(timeout_s - (time.monotonic() - started), 5.0)
        wait_for("ingress and Prometheus answering on the published ports, every target up",
                 published_ports_answer, remaining, detail=detail)
        return time.monotonic() - started


PROJECT_PREFIX = "sglb-e2e-"


def project_name(pid: int, suffix: str) -> str:
    """A Compose project name unique to one test run, naming the process that owns it."""
    return f"{PROJECT_PREFIX}{pid}-{suffix}"


def remove_stale_projects(client: docker.DockerClient) -> list[str]:
    """Remove what earlier runs of this test left behind when they were killed before their
    teardown (their containers restart by policy and would run forever): projects named by
    `project_name` whose process is gone. Returns the projects removed."""
    stale: set[str] = set()
    for c in client.containers.list(all=True, filters={"label": PROJECT_LABEL}):
        project = c.labels.get(PROJECT_LABEL, "")
        match = re.fullmatch(re.escape(PROJECT_PREFIX) + r"(\d+)-[0-9a-f]+", project)
        if match and not _process_alive(int(match.group(1))):
            stale.add(project)
    for project in sorted(stale):
        project_filter: dict[str, str | list[str] | bool] = {
            "label": [f"{PROJECT_LABEL}={project}"]}
        for c in client.containers.list(all=True, filters=project_filter):
            c.remove(force=True, v=True)
        for n in client.networks.list(filters=project_filter):
            n.remove()
        for v in client.volumes.list(filters=project_filter):
            v.remove(force=True)
    return sorted(stale)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def secret_candidates(files: Iterable[Path]) -> set[str]:
    """Every word on a line of these files that speaks of a key, token, secret or password,
    and every `${VAR:-default}` default: what a careless deployment could be running with."""
    context = re.compile(r"key|token|secret|bearer|passw|credential", re.IGNORECASE)
    word = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~+/=:-]{3,127}")
    default = re.compile(r"\$\{[A-Z0-9_]+:-([^}]+)\}")
    found: set[str] = set()
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found.update(default.findall(text))
        for line in text.splitlines():
            if context.search(line):
                found.update(w.rstrip(".,:;") for w in word.findall(line))
    return {f for f in found if f}


def repository_files(repo: Path = REPO_ROOT) -> list[Path]:
    """The repository's tracked files (everything outside ignored dirs when git is absent)."""
    result = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True,
                            timeout=60) if shutil.which("git") else None
    if result is not None and result.returncode == 0:
        return [repo / name for name in result.stdout.decode().split("\0") if name]
    skip = {".git", ".venv", ".run", "__pycache__", ".mypy_cache", ".ruff_cache",
            ".pytest_cache"}
    return [p for p in repo.rglob("*") if p.is_file() and not skip & set(p.parts)]
