"""`make up`: the whole system on this machine, in the foreground, without Docker.

Starts Prometheus, the substations, the balancer and the ingress on the grid file's host and
ports, prints the URLs, and on Ctrl-C or SIGTERM stops every process it started (by PID, TERM
then KILL), so nothing is left behind. The same pieces start the stacks of the integration tests.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from gridlb.grid import ConfigError, GridConfig, load_grid
from gridlb.promconfig import REPO_ROOT, prometheus_command, render_prometheus_dir


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    ready_url: str
    env: Mapping[str, str] = field(default_factory=dict)


class ProcessGroup:
    """Child processes started by us, stopped by us."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, spec: ServiceSpec) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{spec.name}.log").open("ab") as log:
            proc = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                                    env={**os.environ, **spec.env})
        self.procs[spec.name] = proc
        return proc

    def dead(self) -> list[tuple[str, int]]:
        return [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, name: str, timeout_s: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would: no graceful shutdown, nothing flushed."""
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def stop_all(self, timeout_s: float = 10.0) -> None:
        # Front to back: the ingress stops taking requests before what serves them goes away.
        for name in reversed(list(self.procs)):
            self.stop(name, timeout_s)

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (for tests and benchmarks on loopback)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll `url` until it answers 2xx; fail fast if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if 200 <= resp.status < 300:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"not ready at {url} after {timeout_s:.0f} s")


def substation_spec(grid: GridConfig, sub_id: str, port: int, capacity_kw: float,
                    run_dir: Path, env: Mapping[str, str], extra_args: Sequence[str] = ()
                    ) -> ServiceSpec:
    return ServiceSpec(
        name=sub_id,
        argv=[sys.executable, "-m", "substation", "--id", sub_id, "--host", grid.host,
              "--port", str(port), "--capacity-kw", str(capacity_kw),
              "--speed-factor", str(grid.speed_factor),
              "--state-path", str(run_dir / f"substation-{sub_id}.sqlite3"), *extra_args],
        ready_url=f"http://{grid.host}:{port}/healthz", env=env)


def balancer_spec(grid: GridConfig, env: Mapping[str, str],
                  extra_args: Sequence[str] = (), replica: int = 1,
                  port: int | None = None) -> ServiceSpec:
    """Replica n > 1 is named `balancer-n` and listens on `port`."""
    port = grid.balancer_port if port is None else port
    return ServiceSpec(
        name="balancer" if replica == 1 else f"balancer-{replica}",
        argv=[sys.executable, "-m", "balancer", "--host", grid.host,
              "--port", str(port), "--prometheus-url", grid.prometheus_url,
              "--policy-dir", grid.policy_dir, "--policy", grid.policy, *extra_args],
        ready_url=f"http://{grid.host}:{port}/healthz", env=env)


def ingress_spec(grid: GridConfig, run_dir: Path, env: Mapping[str, str],
                 balancer_urls: Sequence[str] = (), extra_args: Sequence[str] = ()
                 ) -> ServiceSpec:
    return ServiceSpec(
        name="ingress",
        argv=[sys.executable, "-m", "ingress", "--host", grid.host,
              "--port", str(grid.ingress_port),
              "--balancer-url", ",".join(balancer_urls or [grid.balancer_url]),
              "--store-path", str(run_dir / "ingress.sqlite3"), *extra_args],
        ready_url=f"{grid.ingress_url}/healthz", env=env)


def prometheus_spec(grid: GridConfig, run_dir: Path) -> ServiceSpec:
    host = grid.host
    targets = {
        "substation": [f"{host}:{s.port}" for s in grid.substations],
        "balancer": [f"{host}:{grid.balancer_port}"],
        "ingress": [f"{host}:{grid.ingress_port}"],
        "prometheus": [f"{host}:{grid.prometheus_port}"],
    }
    config_file = render_prometheus_dir(run_dir / "prometheus", grid.scrape_interval_s, targets)
    return ServiceSpec(
        name="prometheus",
        argv=prometheus_command(config_file, run_dir / "prometheus-data",
                                f"{host}:{grid.prometheus_port}"),
        ready_url=f"{grid.prometheus_url}/-/ready")


def dev_secret(path: Path) -> str:
    """A key kept across restarts of the local stack, so clients need not re-read it each time."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def stack_specs(grid: GridConfig, run_dir: Path) -> list[ServiceSpec]:
    internal = {"GRID_INTERNAL_TOKEN": dev_secret(run_dir / "internal-token")}
    ingress_env = {**internal, "GRID_API_KEYS": dev_secret(run_dir / "dev-api-key")}
    subs = [substation_spec(grid, s.id, s.port, s.capacity_kw, run_dir, internal)
            for s in grid.substations]
    return [prometheus_spec(grid, run_dir), *subs, balancer_spec(grid, internal),
            ingress_spec(grid, run_dir, ingress_env)]


def banner(grid: GridConfig, api_key: str) -> str:
    subs = "\n".join(f"  {s.id:<14} http://{grid.host}:{s.port}  ({s.capacity_kw:g} kW)"
                     for s in grid.substations)
    return f"""
Smart Grid Load Balancer is up ({grid.source}, policy {grid.policy}).
  ingress        {grid.ingress_url}/charge      (API key: {api_key})
  balancer       {grid.balancer_url}/policy
  prometheus     {grid.prometheus_url}/graph
{subs}
Try:   curl -s -H 'Authorization: Bearer {api_key}' \\
         -H 'Content-Type: application/json' \\
         -d '{{"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30}}' \\
         {grid.ingress_url}/charge
Then:  make loadtest        Logs: .run/logs/        Stop: Ctrl-C
"""


def wait_for_grid(grid: GridConfig, timeout_s: float = 30.0) -> None:
    """Until the balancer sees every substation through Prometheus (a fresh Prometheus has no
    samples for a few seconds); says so and goes on if that takes too long."""
    deadline = time.monotonic() + timeout_s
    usable = 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{grid.balancer_url}/readyz", timeout=1.0) as resp:
                usable = json.loads(resp.read()).get("usable_substations", 0)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            usable = 0
        if usable >= len(grid.substations):
            return
        time.sleep(0.2)
    print(f"make up: the balancer sees {usable} of {len(grid.substations)} substations after "
          f"{timeout_s:.0f} s; see {grid.prometheus_url}/targets", file=sys.stderr)


def ports_in_use(grid: GridConfig) -> list[str]:
    """The grid's ports that something else already listens on."""
    wanted = {"ingress": grid.ingress_port, "balancer": grid.balancer_port,
              "prometheus": grid.prometheus_port,
              **{s.id: s.port for s in grid.substations}}
    busy = []
    for name, port in wanted.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((grid.host, port))
            except OSError:
                busy.append(f"{name} port {port}")
    return busy


def run(grid: GridConfig, run_dir: Path) -> int:
    if busy := ports_in_use(grid):
        print(f"make up: already in use on {grid.host}: {', '.join(busy)}. Stop what holds "
              "them (a system Prometheus: `systemctl stop prometheus`), or choose other ports "
              f"in a copy of {grid.source} and run GRID_CONFIG=that-file make up",
              file=sys.stderr)
        return 1
    group = ProcessGroup(run_dir / "logs")
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for spec in stack_specs(grid, run_dir):
            proc = group.start(spec)
            try:
                wait_ready(spec.ready_url, proc)
            except RuntimeError as exc:
                print(f"make up: {spec.name} failed to start: {exc}\n{group.log_tail(spec.name)}",
                      file=sys.stderr)
                return 1
            if stopping:
                return 0
        wait_for_grid(grid)
        print(banner(grid, dev_secret(run_dir / "dev-api-key")), flush=True)
        while not stopping:
            if dead := group.dead():
                for name, code in dead:
                    print(f"make up: {name} exited with code {code}; stopping everything\n"
                          f"{group.log_tail(name)}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        print("make up: stopping all services ...", file=sys.stderr)
        group.stop_all()


def main() -> None:
    try:
        grid = load_grid()
    except ConfigError as exc:
        sys.exit(f"make up: {exc}")
    sys.exit(run(grid, REPO_ROOT / ".run"))


if __name__ == "__main__":
    main()
