"""A throwaway local stack for benchmarks: free ports, a temp dir, everything stopped by PID."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gridlb import postgres
from gridlb.grid import GridConfig, SubstationSpec
from gridlb.stack import (
    ProcessGroup,
    ServiceSpec,
    balancer_spec,
    free_port,
    ingress_spec,
    prometheus_spec,
    substation_spec,
    wait_ready,
)

TOKEN = "bench-internal-token"
API_KEY = "bench-api-key"


@dataclass
class BenchStack:
    grid: GridConfig
    group: ProcessGroup
    run_dir: Path
    ingress_urls: tuple[str, ...] = ()

    @property
    def substation_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.grid.substations]

    def pid(self, name: str) -> int:
        return self.group.procs[name].pid


@contextmanager
def bench_stack(substations: int = 2, capacity_kw: float = 1e6, speed_factor: float = 3600.0,
                scrape_interval_s: float = 1.0, durability: str = "full",
                capacities_kw: Sequence[float] | None = None,
                policy: str = "least-utilization", store: str = "sqlite",
                ingresses: int = 1) -> Iterator[BenchStack]:
    """`durability`: "full" (fsync per commit group, the default) or "process".
    `capacities_kw`: one capacity per substation (then `substations` and `capacity_kw` are
    not used); `policy`: the balancer's policy file in policies/, without `.yaml`. `store`:
    the ingress store, "sqlite" or "postgresql" (a server of its own, which `ingresses`
    replicas share)."""
    capacities = list(capacities_kw) if capacities_kw is not None else \
        [capacity_kw] * substations
    with tempfile.TemporaryDirectory(prefix="sglb-bench-") as tmp:
        run_dir = Path(tmp)
        subs = tuple(SubstationSpec(f"s{i}", free_port(), capacity)
                     for i, capacity in enumerate(capacities))
        grid = GridConfig(substations=subs, policy=policy,
                          ingress_port=free_port(), balancer_port=free_port(),
                          prometheus_port=free_port(), scrape_interval_s=scrape_interval_s,
                          speed_factor=speed_factor)
        group = ProcessGroup(run_dir / "logs")
        env = {"GRID_INTERNAL_TOKEN": TOKEN}
        specs = [prometheus_spec(grid, run_dir)]
        durable = ("--durability", durability)
        specs += [substation_spec(grid, s.id, s.port, s.capacity_kw, run_dir, env, durable)
                  for s in subs]
        specs += [balancer_spec(grid, env)]
        store_url, pg_dir = None, None
        if store == "postgresql":
            # As root the server runs as `postgres`: a directory that user can reach.
            pg_dir = Path(tempfile.mkdtemp(prefix="sglb-bench-pg-"))
            pg_dir.chmod(0o755)
            postgres.init_data_dir(pg_dir / "data", sync=False)
            port = free_port()
            store_url = postgres.url(port)
            specs.insert(0, ServiceSpec("postgres", postgres.server_command(pg_dir / "data",
                                                                             port),
                                        store_url, run_as=postgres.run_as()))
        ports = [grid.ingress_port] + [free_port() for _ in range(ingresses - 1)]
        specs += [ingress_spec(grid, run_dir, {**env, "GRID_API_KEYS": API_KEY},
                               extra_args=durable, replica=n, port=port, store_url=store_url)
                  for n, port in enumerate(ports, start=1)]
        try:
            for spec in specs:
                wait_ready(spec.ready_url, group.start(spec))
            wait_for_balancer(grid, len(subs))
            yield BenchStack(grid, group, run_dir,
                             tuple(f"http://127.0.0.1:{port}" for port in ports))
        finally:
            group.stop_all()
            if pg_dir is not None:
                shutil.rmtree(pg_dir, ignore_errors=True)


def wait_for_balancer(grid: GridConfig, substations: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{grid.balancer_url}/readyz", timeout=1) as resp:
                if json.loads(resp.read()).get("usable_substations") == substations:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the balancer never saw every substation")
