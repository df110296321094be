"""Real parts on loopback: one Prometheus for the whole session, real services per test.

Each test describes its grid; `cluster` starts those substations, a balancer and an ingress on
free ports, points Prometheus's file-based discovery at them and waits on real conditions
(Prometheus returning their load, the balancer's snapshot holding them), never on fixed sleeps.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gridlb import postgres as pg
from gridlb.grid import GridConfig, SubstationSpec
from gridlb.promconfig import (
    REPO_ROOT,
    prometheus_command,
    render_prometheus_dir,
    write_targets,
)
from gridlb.stack import (
    ProcessGroup,
    ServiceSpec,
    balancer_spec,
    free_port,
    ingress_spec,
    substation_spec,
    wait_ready,
)

SCRAPE_INTERVAL_S = 0.5
TOKEN = "integration-internal-token"
API_KEY = "integration-api-key"

pytestmark = pytest.mark.integration



def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll until `condition()` is truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Prometheus:
    url: str
    prom_dir: Path
    group: ProcessGroup

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql, **({"time": f"{at:.3f}"} if at else {})}
        status, body = http_json("GET", f"{self.url}/api/v1/query?" +
                                 urllib.parse.urlencode(params))
        assert status == 200, body
        return list(body["data"]["result"])

    def values(self, promql: str, label: str = "instance", at: float | None = None
               ) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1])
                for s in self.query(promql, at)}

    def set_targets(self, job: str, addresses: list[str], grid: str | None = "local",
                    name: str | None = None) -> None:
        """`grid`: the label on these targets' series; the `cluster` fixture's grid is
        GridConfig's default, "local" (None: no label, for a balancer started without --grid)."""
        write_targets(self.prom_dir, job, addresses, grid, name)

    def forget(self, job: str) -> None:
        """Delete every series of `job`. Tests share this Prometheus, and a resolve asks every
        substation seen within its roster window (balancer/prom.py, GridQueries.roster): the
        stopped substations of earlier tests would otherwise leave every outcome unknown."""
        selector = urllib.parse.urlencode({"match[]": f'{{job="{job}"}}'})
        status, body = http_json("POST", f"{self.url}/api/v1/admin/tsdb/delete_series?"
                                 f"{selector}")
        assert status == 204, body


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run `make setup` (Debian: apt-get install "
                    "prometheus)")
    run_dir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = render_prometheus_dir(run_dir / "prom", SCRAPE_INTERVAL_S,
                                   {"prometheus": [f"127.0.0.1:{port}"]})
    group = ProcessGroup(run_dir / "logs")
    # The admin API lets a test's cluster delete its substations' series when it ends (below).
    spec = ServiceSpec("prometheus", [*prometheus_command(config, run_dir / "data",
                                                          f"127.0.0.1:{port}"),
                                      "--web.enable-admin-api"],
                       f"http://127.0.0.1:{port}/-/ready")
    proc = group.start(spec)
    try:
        wait_ready(spec.ready_url, proc)
        prom = Prometheus(f"http://127.0.0.1:{port}", run_dir / "prom", group)
        # A fresh Prometheus answers before it has samples: wait for its own first scrape.
        wait_for(lambda: prom.query('up{job="prometheus"}'), "Prometheus's first scrape")
        yield prom
    finally:
        group.stop_all()


@pytest.fixture
def keys() -> Iterator[Callable[[int], list[KeyLog]]]:
    """Makes n idempotency keys, unique across the session (tests share its PostgreSQL)."""
    counter = iter(range(10**6))
    yield lambda n: [KeyLog(f"k{next(counter)}-{time.monotonic_ns()}") for _ in range(n)]


@dataclass
class KeyLog:
    """One client's key and every answer it got: (status, body, replayed)."""

    key: str
    answers: list[tuple[int, dict[str, Any], bool]] = field(default_factory=list)

    @property
    def final(self) -> tuple[int, dict[str, Any], bool]:
        return self.answers[-1]


@dataclass
class Postgres:
    """A real PostgreSQL server on a free loopback port, its data in a temporary directory."""

    port: int
    group: ProcessGroup
    spec: ServiceSpec

    @property
    def admin_url(self) -> str:
        return pg.url(self.port)

    def remove(self) -> None:
        """Stop it and remove its temporary directory."""
        self.group.stop("postgres")
        data_dir = Path(self.spec.argv[self.spec.argv.index("-D") + 1])
        shutil.rmtree(data_dir.parent, ignore_errors=True)

    def create_database(self) -> str:
        """A new, empty database; its URL. Each test gets its own: no test sees another's."""
        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return pg.url(self.port, database=name)

    def kill(self) -> None:
        """SIGKILL the server (the postmaster), as a crash would."""
        self.group.kill("postgres")

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it (again): after a SIGKILL its old backends may hold the shared memory for
        a moment, and the new server refuses to start until they are gone: try again."""
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self.group.start(self.spec)
            try:
                wait_ready(self.spec.ready_url, proc, timeout_s=max(1.0, deadline -
                                                                    time.monotonic()))
                return
            except RuntimeError:
                self.group.stop("postgres")      # exited already, or never became ready
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def start_postgres(group: ProcessGroup) -> Postgres:
    """initdb in a temporary directory the server's account can reach (as root pytest's own
    temporary directories are closed to the `postgres` user), then the server."""
    try:
        account = pg.run_as()
        pg.bin_dir()
    except pg.PostgresMissing as exc:
        pytest.fail(str(exc))
    base = Path(tempfile.mkdtemp(prefix="gridlb-test-pg-"))
    base.chmod(0o755)
    data_dir = base / "data"
    pg.init_data_dir(data_dir, account, sync=False)
    port = free_port()
    spec = ServiceSpec("postgres", pg.server_command(data_dir, port), pg.url(port),
                       run_as=account)
    server = Postgres(port, group, spec)
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    group = ProcessGroup(tmp_path_factory.mktemp("postgres-logs"))
    server = start_postgres(group)
    try:
        yield server
    finally:
        server.remove()


@dataclass
class Cluster:
    grid: GridConfig
    prometheus: Prometheus
    group: ProcessGroup
    policy_dir: Path
    addresses: dict[str, str] = field(default_factory=dict)   # substation id -> host:port
    specs: dict[str, ServiceSpec] = field(default_factory=dict)
    balancer_urls: list[str] = field(default_factory=list)
    ingress_urls: list[str] = field(default_factory=list)    # the first is grid.ingress_url
    postgres: Postgres | None = None        # the store's server, when the store is PostgreSQL
    store_url: str | None = None

    def signal(self, name: str, sig: signal.Signals) -> None:
        """SIGSTOP / SIGCONT / SIGKILL one of this cluster's processes."""
        proc = self.group.procs[name]
        proc.send_signal(sig)
        if sig is signal.SIGKILL:
            proc.wait(5)
            del self.group.procs[name]

    def restart(self, name: str) -> None:
        """Start a killed or stopped service again, with the same state files."""
        self.group.stop(name)
        spec = self.specs[name]
        wait_ready(spec.ready_url, self.group.start(spec))

    def sessions(self, sub_id: str) -> list[dict[str, Any]]:
        status, body = self.substation(sub_id, "GET", "/sessions")
        assert status == 200, body
        return list(body["sessions"])

    def in_flight(self, balancer_url: str) -> float:
        """The balancer's dispatches being placed now (its own gauge); -1 if unreachable."""
        try:
            with urllib.request.urlopen(f"{balancer_url}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return -1.0
        for line in text.splitlines():
            if line.startswith("balancer_dispatches_in_flight "):
                return float(line.split()[1])
        return -1.0

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    @property
    def internal(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def charge(self, vehicle_id: str, kw: float, kwh: float = 30.0,
               headers: dict[str, str] | None = None, via: int = 0) -> tuple[int, Any]:
        """POST /charge to ingress replica `via` (0: the first)."""
        return http_json("POST", f"{self.ingress_urls[via]}/charge",
                         {"vehicle_id": vehicle_id, "requested_kw": kw, "energy_kwh": kwh},
                         headers={**self.auth, **(headers or {})})

    def policy(self) -> dict[str, Any]:
        status, body = http_json("GET", f"{self.grid.balancer_url}/policy")
        assert status == 200, body
        return dict(body)

    def substation(self, sub_id: str, method: str, path: str, body: Any = None
                   ) -> tuple[int, Any]:
        return http_json(method, f"http://{self.addresses[sub_id]}{path}", body,
                         headers=self.internal)

    def reload(self) -> tuple[int, Any]:
        return http_json("POST", f"{self.grid.balancer_url}/-/reload", headers=self.internal)

    def wait_scraped(self, since: float) -> None:
        """Until Prometheus holds a scrape of every substation that started after `since`."""
        expected = set(self.addresses.values())

        def fresh() -> bool:
            stamps = self.prometheus.values('timestamp(up{job="substation"})')
            return expected <= set(stamps) and all(stamps[a] > since for a in expected)
        wait_for(fresh, "a scrape of every substation newer than the last request")


StartCluster = Callable[..., Cluster]


def sees_all(balancer_url: str, count: int) -> bool:
    return bool(http_json("GET", f"{balancer_url}/readyz")[1].get("usable_substations") == count)


@pytest.fixture
def cluster(prometheus: Prometheus, tmp_path: Path, request: pytest.FixtureRequest
            ) -> Iterator[StartCluster]:
    groups: list[ProcessGroup] = []

    def start(substations: list[tuple[str, float]], policy: str = "least-utilization",
              balancer_args: tuple[str, ...] = (),
              policy_overrides: dict[str, str] | None = None, balancers: int = 1,
              ingress_args: tuple[str, ...] = (),
              proxies: dict[str, Callable[[int], str]] | None = None,
              substation_args: tuple[str, ...] = (), ingresses: int = 1,
              store: str = "sqlite", postgres: Postgres | None = None) -> Cluster:
        """`proxies`: substation id -> a function given its port that starts something in
        front of it and returns the address the grid should use for it instead.
        `ingresses`: ingress replicas (`ingress`, `ingress-2`, ...), which need
        `store="postgresql"`: a new database on `postgres` (default: the session's server)."""
        if ingresses > 1 and store != "postgresql":
            raise ValueError("ingress replicas share a PostgreSQL store: store='postgresql'")
        server: Postgres | None = None
        store_url = None
        if store == "postgresql":
            server = postgres or request.getfixturevalue("postgres")
            assert server is not None
            store_url = server.create_database()
        prometheus.forget("substation")       # whatever an earlier test left behind
        policy_dir = tmp_path / "policies"
        shutil.copytree(REPO_ROOT / "policies", policy_dir, dirs_exist_ok=True)
        for name, text in (policy_overrides or {}).items():
            (policy_dir / f"{name}.yaml").write_text(text)
        specs = tuple(SubstationSpec(sid, free_port(), cap) for sid, cap in substations)
        grid = GridConfig(substations=specs, policy=policy, ingress_port=free_port(),
                          balancer_port=free_port(),
                          prometheus_port=int(prometheus.url.rsplit(":", 1)[1]),
                          speed_factor=1.0, policy_dir=str(policy_dir))
        group = ProcessGroup(tmp_path / "logs")
        groups.append(group)
        env = {"GRID_INTERNAL_TOKEN": TOKEN}
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        services = [substation_spec(grid, s.id, s.port, s.capacity_kw, run_dir, env,
                                    substation_args) for s in specs]
        ports = [grid.balancer_port] + [free_port() for _ in range(balancers - 1)]
        services += [balancer_spec(grid, env, balancer_args, replica=n + 1, port=port)
                     for n, port in enumerate(ports)]
        balancer_urls = [f"http://127.0.0.1:{port}" for port in ports]
        ingress_ports = [grid.ingress_port] + [free_port() for _ in range(ingresses - 1)]
        services += [ingress_spec(grid, run_dir, {**env, "GRID_API_KEYS": API_KEY},
                                  balancer_urls, ingress_args, replica=n + 1, port=port,
                                  store_url=store_url)
                     for n, port in enumerate(ingress_ports)]
        for spec in services:
            proc = group.start(spec)
            try:
                wait_ready(spec.ready_url, proc)
            except RuntimeError as exc:
                pytest.fail(f"{spec.name} did not start: {exc}\n{group.log_tail(spec.name)}")
        fronts = proxies or {}
        addresses = {s.id: (fronts[s.id](s.port) if s.id in fronts
                            else f"127.0.0.1:{s.port}") for s in specs}
        c = Cluster(grid, prometheus, group, policy_dir, addresses,
                    {spec.name: spec for spec in services}, balancer_urls,
                    [f"http://127.0.0.1:{port}" for port in ingress_ports], server, store_url)
        prometheus.set_targets("substation", list(c.addresses.values()))
        prometheus.set_targets("balancer", [u.removeprefix("http://") for u in balancer_urls])
        prometheus.set_targets("ingress", [u.removeprefix("http://") for u in c.ingress_urls])
        expected = set(c.addresses.values())
        wait_for(lambda: set(prometheus.values('substation_load{job="substation"}')) == expected
                 and set(prometheus.values('up{job="substation"} == 1')) == expected,
                 "Prometheus to scrape exactly this test's substations")

        def snapshot_holds_all() -> bool:
            scored = {r["instance"] for r in c.policy()["substations"] if r["score"] is not None}
            if scored == expected:
                return True
            c.reload()  # evaluates now: a test policy may have a long refresh interval
            return False
        wait_for(snapshot_holds_all, "the balancer's snapshot to hold every substation")
        for url in balancer_urls[1:]:
            wait_for(partial(sees_all, url, len(expected)),
                     f"replica {url} to see every substation")
        return c

    yield start
    for group in groups:
        group.stop_all()
    for job in ("substation", "balancer", "ingress"):
        prometheus.set_targets(job, [])
    prometheus.forget("substation")
