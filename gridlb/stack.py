"""`make up`: the whole system on this machine, in the foreground, without Docker.

Starts Prometheus, PostgreSQL (with `ingress_store: postgresql`: the store the ingress replicas
share, its data in `.run/postgres`), the substations, the balancer and the ingress replicas on the
grid file's host and ports, says what it resumed from `.run/`, prints the URLs, and then
supervises them like Compose (gridlb/supervisor.py): a service that exits is restarted with
backoff while the others keep running. On Ctrl-C, SIGTERM or SIGHUP it stops every process it
started, front to back (by PID, TERM then KILL), so nothing is left behind. `make reset`
(`--reset`) empties `.run/`'s state so that the next `make up` starts with no sessions. The same
pieces start the stacks of the integration tests.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from gridlb import postgres
from gridlb.grid import ConfigError, GridConfig, load_grid
from gridlb.postgres import RunAs, accepts_connections
from gridlb.promconfig import REPO_ROOT, prometheus_command, render_prometheus_dir
from gridlb.supervisor import RestartPolicy, Supervisor

PID_FILE = "stack.pid"
ACTIVE_POLICY_FILE = "active-policy"   # the fleet's policy choice (balancer/active.py)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    ready_url: str          # http(s):// answers 2xx when ready; postgresql:// runs a query
    env: Mapping[str, str] = field(default_factory=dict)
    run_as: RunAs | None = None    # another account (PostgreSQL refuses to run as root)


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send the child SIGTERM when its parent dies (even by
    SIGKILL), or None where that is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:   # runs in the child between fork and exec: nothing but the call
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    return hook


class ProcessGroup:
    """Child processes started by us, stopped by us.

    `detach`: each child gets its own session, so a Ctrl-C in the terminal reaches only the
    supervisor, which then stops the children in order; and each child is told to stop if the
    supervisor dies, so a killed `make up` leaves nothing behind. Only for a single-threaded
    parent (the pre-exec hook is not safe with threads), i.e. `make up` itself."""

    def __init__(self, log_dir: Path, detach: bool = False) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.detach = detach
        self._pre_exec = _die_with_parent_hook() if detach else None

    def start(self, spec: ServiceSpec) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        account: dict[str, Any] = {}
        if spec.run_as is not None and spec.run_as.user is not None:
            account = {"user": spec.run_as.uid, "group": spec.run_as.gid, "extra_groups": []}
        with (self.log_dir / f"{spec.name}.log").open("ab") as log:
            proc = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                                    env={**os.environ, **spec.env},
                                    start_new_session=self.detach,
                                    preexec_fn=self._pre_exec,   # None unless detached
                                    **account)
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


def answers_ok(url: str, timeout_s: float = 1.0) -> bool:
    if url.startswith("postgresql://"):
        return accepts_connections(url, timeout_s)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= int(resp.status) < 300
    except (OSError, http.client.HTTPException):   # refused, reset, timed out, garbled
        return False


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll `url` until it answers 2xx; fail fast if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before it was ready")
        if answers_ok(url):
            return
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


def balancer_name(replica: int) -> str:
    """`balancer` for the first replica, `balancer-n` for the n-th."""
    return "balancer" if replica == 1 else f"balancer-{replica}"


# The snapshot's age is its newest scrape's (balancer/snapshot.py): between two scrapes it grows
# to one scrape interval in normal operation. Degraded mode starts after about two missed
# scrapes, and never sooner than the balancer's own default.
MIN_SNAPSHOT_AGE_S = 15.0
SCRAPES_BEFORE_DEGRADED = 3


def max_snapshot_age_s(scrape_interval_s: float) -> float:
    return max(MIN_SNAPSHOT_AGE_S, SCRAPES_BEFORE_DEGRADED * scrape_interval_s)


def balancer_spec(grid: GridConfig, env: Mapping[str, str],
                  extra_args: Sequence[str] = (), replica: int = 1,
                  port: int | None = None, active_policy_file: Path | None = None
                  ) -> ServiceSpec:
    """Replica n > 1 is named `balancer-n` and listens on `port`. Replicas given the same
    `active_policy_file` serve one policy: POST /-/reload {"policy": ...} on any switches all."""
    port = grid.balancer_port if port is None else port
    active = [] if active_policy_file is None else ["--active-policy-file",
                                                    str(active_policy_file)]
    return ServiceSpec(
        name=balancer_name(replica),
        argv=[sys.executable, "-m", "balancer", "--host", grid.host,
              "--port", str(port), "--prometheus-url", grid.prometheus_url,
              "--policy-dir", grid.policy_dir, "--policy", grid.policy, "--grid", grid.name,
              *active,
              "--max-snapshot-age", f"{max_snapshot_age_s(grid.scrape_interval_s):g}",
              *extra_args],
        ready_url=f"http://{grid.host}:{port}/healthz", env=env)


def ingress_name(replica: int) -> str:
    """`ingress` for the first replica, `ingress-n` for the n-th."""
    return "ingress" if replica == 1 else f"ingress-{replica}"


def ingress_spec(grid: GridConfig, run_dir: Path, env: Mapping[str, str],
                 balancer_urls: Sequence[str] = (), extra_args: Sequence[str] = (),
                 replica: int = 1, port: int | None = None, store_url: str | None = None
                 ) -> ServiceSpec:
    """Replica n > 1 is named `ingress-n` and listens on `port`. `store_url`: the PostgreSQL
    store every replica shares; without it, the SQLite file in `run_dir`."""
    port = grid.ingress_port if port is None else port
    store = ["--store-url", store_url] if store_url else \
        ["--store-path", str(run_dir / "ingress.sqlite3")]
    return ServiceSpec(
        name=ingress_name(replica),
        argv=[sys.executable, "-m", "ingress", "--host", grid.host, "--port", str(port),
              "--balancer-url", ",".join(balancer_urls or [grid.balancer_url]),
              *store, *extra_args],
        ready_url=f"http://{grid.host}:{port}/healthz", env=env)


def postgres_data_dir(run_dir: Path) -> Path:
    return run_dir / "postgres" / "data"


def postgres_spec(grid: GridConfig, run_dir: Path) -> ServiceSpec:
    """The ingress replicas' store, on loopback only (gridlb/postgres.py)."""
    return ServiceSpec(
        name="postgres",
        argv=postgres.server_command(postgres_data_dir(run_dir), grid.postgres_port),
        ready_url=postgres.url(grid.postgres_port), run_as=postgres.run_as())


def prometheus_spec(grid: GridConfig, run_dir: Path) -> ServiceSpec:
    host = grid.host
    targets = {
        "substation": [f"{host}:{s.port}" for s in grid.substations],
        "balancer": [f"{host}:{port}" for port in grid.balancer_ports],
        "ingress": [f"{host}:{port}" for port in grid.ingress_ports],
        "prometheus": [f"{host}:{grid.prometheus_port}"],
    }
    config_file = render_prometheus_dir(run_dir / "prometheus", grid.scrape_interval_s, targets,
                                        grid.name)
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
    # The fleet's policy choice lives beside the sessions: it survives a replica's restart
    # (the supervisor's) and `make up` again, until grid.yaml's policy changes (balancer/active.py).
    balancers = [balancer_spec(grid, internal, replica=n, port=port,
                               active_policy_file=run_dir / ACTIVE_POLICY_FILE)
                 for n, port in enumerate(grid.balancer_ports, start=1)]
    store_url = postgres.url(grid.postgres_port) if grid.uses_postgres else None
    ingresses = [ingress_spec(grid, run_dir, ingress_env, grid.balancer_urls, replica=n,
                              port=port, store_url=store_url)
                 for n, port in enumerate(grid.ingress_ports, start=1)]
    store = [postgres_spec(grid, run_dir)] if grid.uses_postgres else []
    # Start order; the supervisor stops in the reverse order (the ingress replicas first, the
    # store they write to after them).
    return [prometheus_spec(grid, run_dir), *store, *subs, *balancers, *ingresses]


def banner(grid: GridConfig, api_key: str, serving: str | None = None) -> str:
    """`serving`: the policy the balancers say they serve, when it is not grid.yaml's (chosen
    with POST /-/reload before a restart, kept in .run/active-policy)."""
    policy = grid.policy if serving in (None, grid.policy) else \
        f"{serving}, chosen at run time over grid.yaml's {grid.policy}; `make reset` drops it"
    subs = "\n".join(f"  {s.id:<14} http://{grid.host}:{s.port}  ({s.capacity_kw:g} kW)"
                     for s in grid.substations)
    balancers = "\n".join(f"  {balancer_name(n):<14} {url}/policy"
                          for n, url in enumerate(grid.balancer_urls, start=1))
    ingresses = "\n".join(f"  {ingress_name(n):<14} {url}/charge" + (
        f"      (API key: {api_key})" if n == 1 else "")
        for n, url in enumerate(grid.ingress_urls, start=1))
    store = (f"  postgres       {postgres.url(grid.postgres_port)}  (the ingress store; data in "
             ".run/postgres)\n" if grid.uses_postgres else "")
    return f"""
Smart Grid Load Balancer is up ({grid.source}, policy {policy}).
{ingresses}
{balancers}
{store}  prometheus     {grid.prometheus_url}/graph
{subs}
Try:   curl -s -H 'Authorization: Bearer {api_key}' \\
         -H 'Content-Type: application/json' \\
         -d '{{"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30}}' \\
         {grid.ingress_url}/charge
Then:  make loadtest        Logs: .run/logs/        Stop: Ctrl-C
"""


def serving_policy(balancer_url: str) -> str | None:
    """The policy a balancer says it serves (GET /policy); None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{balancer_url}/policy", timeout=1.0) as resp:
            policy = json.loads(resp.read()).get("policy")
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return None
    return policy if isinstance(policy, str) else None


def routable(policy_view: Any) -> set[str]:
    """The substations a balancer's `GET /policy` answer can route to: up, with load and
    capacity known."""
    rows = policy_view.get("substations", []) if isinstance(policy_view, dict) else []
    return {str(row["substation"]) for row in rows if isinstance(row, dict)
            and row.get("substation") and row.get("up")
            and row.get("load_kw") is not None and row.get("capacity_kw")}


def seen_by_balancer(grid: GridConfig, balancer_url: str | None = None) -> set[str]:
    """The grid's substations a balancer (the first replica unless named) can route to now: up,
    with load and capacity known, under the id the grid file gives them (right after a restart
    Prometheus still shows the previous run's series, possibly under other ids, until it scrapes
    the new processes)."""
    url = balancer_url or grid.balancer_url
    try:
        with urllib.request.urlopen(f"{url}/policy", timeout=1.0) as resp:
            view = json.loads(resp.read())
    except (OSError, http.client.HTTPException, ValueError):
        return set()
    return routable(view) & {s.id for s in grid.substations}


def wait_for_grid(grid: GridConfig, timeout_s: float = 30.0) -> None:
    """Until every balancer replica sees every substation of this grid file through Prometheus
    (a fresh Prometheus has no samples for a few seconds); says so and goes on if that takes
    too long."""
    deadline = time.monotonic() + timeout_s
    wanted = {s.id for s in grid.substations}
    pending = list(grid.balancer_urls)
    seen: set[str] = set()
    while pending and time.monotonic() < deadline:
        seen = seen_by_balancer(grid, pending[0])
        if seen == wanted:
            pending.pop(0)
        else:
            time.sleep(0.2)
    if pending:
        missing = sorted(wanted - seen)
        print(f"make up: after {timeout_s:.0f} s the balancer at {pending[0]} does not see "
              f"{', '.join(missing)}; see {pending[0]}/policy and {grid.prometheus_url}/targets",
              file=sys.stderr)


def ports_in_use(grid: GridConfig) -> list[str]:
    """The grid's ports that something else already listens on."""
    wanted = {**{ingress_name(n): port for n, port in enumerate(grid.ingress_ports, start=1)},
              **({"postgres": grid.postgres_port} if grid.uses_postgres else {}),
              "prometheus": grid.prometheus_port,
              **{balancer_name(n): port
                 for n, port in enumerate(grid.balancer_ports, start=1)},
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


class StackLauncher:
    """The supervisor's hands: start, probe and stop the stack's services by name."""

    def __init__(self, group: ProcessGroup, specs: Sequence[ServiceSpec]) -> None:
        self.group = group
        self.specs = {spec.name: spec for spec in specs}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        return self.group.start(self.specs[name])

    def is_ready(self, name: str) -> bool:
        return answers_ok(self.specs[name].ready_url, timeout_s=0.3)

    def stop(self, name: str) -> None:
        self.group.stop(name)

    def log_tail(self, name: str, lines: int = 15) -> str:
        return self.group.log_tail(name, lines)


@dataclass(frozen=True)
class Resumed:
    substation: str
    sessions: int | None        # None: it did not say
    load_kw: float | None


def read_resumed(grid: GridConfig, token: str) -> list[Resumed]:
    """What each substation resumed from its state file: its /status right after it started
    (no request has reached it yet: the ingress starts last)."""
    rows = []
    for sub in grid.substations:
        request = urllib.request.Request(f"http://{grid.host}:{sub.port}/status",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=2.0) as resp:
                status = json.loads(resp.read())
            rows.append(Resumed(sub.id, int(status["active_sessions"]),
                                float(status["load_kw"])))
        except (OSError, ValueError, KeyError, TypeError):
            rows.append(Resumed(sub.id, None, None))
    return rows


def resume_report(rows: Sequence[Resumed], run_dir: Path) -> str:
    if all(r.sessions == 0 for r in rows):
        return f"make up: starting empty (no sessions to resume in {run_dir})"
    lines = [f"make up: resumed from {run_dir} (`make reset` starts empty):"]
    for r in rows:
        shown = ("did not report its sessions" if r.sessions is None
                 else f"{r.sessions} session{'s' * (r.sessions != 1)}, {r.load_kw:g} kW")
        lines.append(f"  {r.substation:<14} {shown}")
    return "\n".join(lines)


def running_stack_pid(run_dir: Path) -> int | None:
    """The PID of a `make up` using `run_dir` that is still alive, if any."""
    try:
        pid = int((run_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").is_dir() else b""
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if not cmdline or b"gridlb.stack" in cmdline else None


def reset(run_dir: Path) -> int:
    """Empty the state `make up` resumes from (sessions, Prometheus data, logs and the policy
    chosen by POST /-/reload: grid.yaml's serves again); keep the API key and the token."""
    if (pid := running_stack_pid(run_dir)) is not None:
        print(f"make reset: make up is running (pid {pid}) on {run_dir}; stop it first "
              "(Ctrl-C)", file=sys.stderr)
        return 1
    removed = []
    for path in [*sorted(run_dir.glob("*.sqlite3*")), run_dir / ACTIVE_POLICY_FILE]:
        if path.exists():
            path.unlink()
            removed.append(path.name)
    for directory in ("postgres", "prometheus-data", "logs"):
        if (run_dir / directory).exists():
            shutil.rmtree(run_dir / directory)
            removed.append(f"{directory}/")
    if removed:
        print(f"make reset: removed {', '.join(removed)} from {run_dir}; kept the API key and "
              "the internal token. The next `make up` starts empty.")
    else:
        print(f"make reset: nothing to remove in {run_dir}; the next `make up` starts empty.")
    return 0


def run(grid: GridConfig, run_dir: Path, restart_policy: RestartPolicy | None = None) -> int:
    if busy := ports_in_use(grid):
        print(f"make up: already in use on {grid.host}: {', '.join(busy)}. Stop what holds "
              "them (a system Prometheus: `systemctl stop prometheus`; a system PostgreSQL: "
              "`service postgresql stop`), or choose other ports "
              f"in a copy of {grid.source} and run GRID_CONFIG=that-file make up",
              file=sys.stderr)
        return 1
    if grid.uses_postgres:
        try:
            if postgres.init_data_dir(postgres_data_dir(run_dir)):
                print(f"make up: created the PostgreSQL database in {postgres_data_dir(run_dir)} "
                      "(kept across restarts; `make reset` removes it)", flush=True)
        except (postgres.PostgresMissing, RuntimeError, OSError) as exc:
            print(f"make up: cannot prepare PostgreSQL ({grid.source}: ingress_store: "
                  f"postgresql): {exc}", file=sys.stderr)
            return 1
    specs = stack_specs(grid, run_dir)
    group = ProcessGroup(run_dir / "logs", detach=True)
    supervisor = Supervisor(StackLauncher(group, specs), [s.name for s in specs],
                            restart_policy, say=lambda text: print(text, flush=True))
    last_substation = grid.substations[-1].id
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    (run_dir / PID_FILE).write_text(f"{os.getpid()}\n")
    try:
        for spec in specs:
            proc = group.start(spec)
            print(f"make up: started {spec.name} (pid {proc.pid})", flush=True)
            try:
                wait_ready(spec.ready_url, proc)
            except RuntimeError as exc:
                print(f"make up: {spec.name} failed to start: {exc}\n{group.log_tail(spec.name)}",
                      file=sys.stderr)
                return 1
            supervisor.adopt(spec.name, proc, time.monotonic())
            if stopping:
                return 0
            if spec.name == last_substation:   # all are up; nothing has reached them yet
                token = dev_secret(run_dir / "internal-token")
                print(resume_report(read_resumed(grid, token), run_dir), flush=True)
        wait_for_grid(grid)
        print(banner(grid, dev_secret(run_dir / "dev-api-key"), serving_policy(grid.balancer_url)),
              flush=True)
        while not stopping:
            supervisor.check(time.monotonic())
            time.sleep(0.2)
        return 0
    finally:
        print("make up: stopping all services ...", file=sys.stderr, flush=True)
        supervisor.stop_all()
        group.stop_all()     # anything started but not yet supervised
        (run_dir / PID_FILE).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gridlb.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / ".run",
                        help="state, logs and the Prometheus database (default: .run/)")
    parser.add_argument("--reset", action="store_true",
                        help="empty the run directory's sessions, PostgreSQL and Prometheus "
                             "data, logs and the policy chosen at run time")
    args = parser.parse_args(argv)
    if args.reset:
        sys.exit(reset(args.run_dir))
    try:
        grid = load_grid()
    except ConfigError as exc:
        sys.exit(f"make up: {exc}")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    sys.exit(run(grid, args.run_dir))


if __name__ == "__main__":
    main()
