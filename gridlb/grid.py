"""The grid topology file (`grid.yaml`): which substations exist, the ports, the active policy.

Loading follows config -> validate (collect every error) -> use: a broken file is refused with
one message per problem, each naming the file and the field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_GRID_FILE = "grid.yaml"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Balancer replicas of the local stack: each is a process with its own port; more than a few
# only compete for the same cores.
MAX_BALANCER_REPLICAS = 16
MAX_INGRESS_REPLICAS = 16
# Where the ingress keeps its idempotency records and session index: an SQLite file (one
# ingress process) or a PostgreSQL server that `make up` starts (any number of replicas).
INGRESS_STORES = ("sqlite", "postgresql")


class ConfigError(ValueError):
    """A configuration file was refused; the message lists every problem found."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def show(value: object) -> str:
    """A value as an error message may quote it: short, and never the repr of a structure
    (YAML aliases can make a small file expand into a huge nested one)."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**20 else "a huge integer"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        quoted = repr(text)
        # Control and unusual characters quote as escapes of up to 10 characters each: the
        # quote itself is bounded too (62 = 60 plain characters and the quotes).
        return quoted if len(quoted) <= 62 else quoted[:58] + "...'"
    kinds = {list: "a list", dict: "a mapping"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)),
                f"a {type(value).__name__}")


_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")   # shown as is in messages; else quoted


def unknown_keys(raw: dict[Any, Any], known: set[str], where: str,
                 problems: list[str]) -> None:
    """One problem per key of `raw` not in `known`, named as the file has it (`where` is
    the path to `raw`, e.g. 'result.')."""
    # Keys may be anything YAML allows (numbers, null, booleans): sort them by how they print.
    for key in sorted((k for k in raw if k not in known), key=show):
        shown = key if isinstance(key, str) and _KEY_RE.fullmatch(key) else show(key)
        problems.append(f"{where}{shown}: unknown field (known: {', '.join(sorted(known))})")


@dataclass(frozen=True)
class SubstationSpec:
    id: str
    port: int
    capacity_kw: float


@dataclass(frozen=True)
class GridConfig:
    substations: tuple[SubstationSpec, ...]
    policy: str
    host: str = "127.0.0.1"
    ingress_port: int = 8080
    balancer_port: int = 8081
    prometheus_port: int = 9090
    balancer_replicas: int = 1
    ingress_replicas: int = 1
    ingress_store: str = "sqlite"
    postgres_port: int = 5432
    scrape_interval_s: float = 1.0
    speed_factor: float = 60.0
    policy_dir: str = "policies"
    source: str = DEFAULT_GRID_FILE
    # The grid's name: the `grid` label Prometheus puts on every series of its targets, which
    # discovery, policies, rules and the dashboard select by (several grids, one Prometheus).
    name: str = "local"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    @property
    def ingress_url(self) -> str:
        """The first ingress replica's URL."""
        return f"http://{self.host}:{self.ingress_port}"

    @property
    def ingress_ports(self) -> tuple[int, ...]:
        """One port per ingress replica, consecutive from `ports.ingress`."""
        return tuple(range(self.ingress_port, self.ingress_port + self.ingress_replicas))

    @property
    def ingress_urls(self) -> tuple[str, ...]:
        return tuple(f"http://{self.host}:{port}" for port in self.ingress_ports)

    @property
    def uses_postgres(self) -> bool:
        return self.ingress_store == "postgresql"

    @property
    def balancer_url(self) -> str:
        """The first balancer replica's URL."""
        return f"http://{self.host}:{self.balancer_port}"

    @property
    def balancer_ports(self) -> tuple[int, ...]:
        """One port per replica, consecutive from `ports.balancer`."""
        return tuple(range(self.balancer_port, self.balancer_port + self.balancer_replicas))

    @property
    def balancer_urls(self) -> tuple[str, ...]:
        return tuple(f"http://{self.host}:{port}" for port in self.balancer_ports)


def grid_path_from_env() -> Path:
    return Path(os.environ.get("GRID_CONFIG", DEFAULT_GRID_FILE))


def load_grid(path: str | Path | None = None) -> GridConfig:
    """Read and validate a grid file; raise ConfigError naming every bad field."""
    grid_file = Path(path) if path is not None else grid_path_from_env()
    try:
        raw = yaml.safe_load(grid_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(grid_file, [f"cannot read file: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(grid_file, [f"not valid YAML: {exc}"]) from exc
    return parse_grid(raw, source=str(grid_file))


def _port(raw: dict[str, Any], key: str, default: int, problems: list[str], where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.append(f"{where}{key}: must be an integer port 1-65535, got {show(value)}")
        return default
    return value


def _positive(raw: dict[str, Any], key: str, default: float | None, problems: list[str],
              where: str) -> float:
    value = raw.get(key, default)
    if value is None:
        problems.append(f"{where}{key}: is required")
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        problems.append(f"{where}{key}: must be a positive number, got {show(value)}")
        return 0.0
    return float(value)


def parse_grid(raw: object, source: str = DEFAULT_GRID_FILE) -> GridConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, ["top level: must be a mapping with 'substations' and 'policy'"])
    problems: list[str] = []
    # A misspelt key (`scrape_interval:`) would otherwise be ignored without a word.
    unknown_keys(raw, _KNOWN_KEYS, "", problems)
    ports = raw.get("ports") or {}
    if not isinstance(ports, dict):
        problems.append(f"ports: must be a mapping, got {type(ports).__name__}")
        ports = {}
    unknown_keys(ports, _PORT_KEYS, "ports.", problems)
    subs_raw = raw.get("substations")
    substations: list[SubstationSpec] = []
    if not isinstance(subs_raw, list) or not subs_raw:
        problems.append("substations: must be a non-empty list")
        subs_raw = []
    seen_ids: set[str] = set()
    seen_ports: set[int] = set()
    for i, item in enumerate(subs_raw):
        where = f"substations[{i}]."
        if not isinstance(item, dict):
            problems.append(f"substations[{i}]: must be a mapping with id, port, capacity_kw")
            continue
        unknown_keys(item, _SUBSTATION_KEYS, where, problems)
        sid = item.get("id")
        if not isinstance(sid, str) or not _ID_RE.match(sid):
            problems.append(f"{where}id: must be 1-63 letters, digits, '_', '.', '-', "
                            f"got {show(sid)}")
            sid = f"#{i}"
        elif sid in seen_ids:
            problems.append(f"{where}id: duplicate id {show(sid)}")
        seen_ids.add(sid)
        port = _port(item, "port", 0, problems, where) if "port" in item else 0
        if "port" not in item:
            problems.append(f"{where}port: is required")
        elif port in seen_ports:
            problems.append(f"{where}port: port {port} is used twice")
        seen_ports.add(port)
        capacity = _positive(item, "capacity_kw", None, problems, where)
        substations.append(SubstationSpec(id=sid, port=port, capacity_kw=capacity))
    policy = raw.get("policy")
    if not isinstance(policy, str) or not policy:
        problems.append("policy: must name a policy file in policies/ (without .yaml), "
                        f"got {show(policy)}")
        policy = ""
    host = raw.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        problems.append(f"host: must be a host name or address, got {show(host)}")
        host = "127.0.0.1"
    policy_dir = raw.get("policy_dir", "policies")
    if not isinstance(policy_dir, str) or not policy_dir:
        problems.append(f"policy_dir: must be a directory path, got {show(policy_dir)}")
        policy_dir = "policies"
    replicas = _replicas(raw, "balancer_replicas", MAX_BALANCER_REPLICAS, problems)
    ingress_replicas = _replicas(raw, "ingress_replicas", MAX_INGRESS_REPLICAS, problems)
    store = raw.get("ingress_store", "sqlite")
    if store not in INGRESS_STORES:
        problems.append(f"ingress_store: must be one of {', '.join(INGRESS_STORES)}, "
                        f"got {show(store)}")
        store = "sqlite"
    if ingress_replicas > 1 and store == "sqlite":
        problems.append(f"ingress_replicas: {ingress_replicas} ingress replicas need a store "
                        "they share: set ingress_store: postgresql (the SQLite store is one "
                        "process's file: a second replica would start a second session for a "
                        "retry that lands on it)")
    name = raw.get("name", "local")
    if not isinstance(name, str) or not GRID_NAME_RE.fullmatch(name):
        problems.append("name: must be 1-63 lowercase letters, digits, '_', '.', '-' (the "
                        f"grid label on every series), got {show(name)}")
        name = "local"
    grid = GridConfig(
        name=name,
        substations=tuple(substations),
        policy=policy,
        host=host,
        ingress_port=_port(ports, "ingress", 8080, problems, "ports."),
        balancer_port=_port(ports, "balancer", 8081, problems, "ports."),
        prometheus_port=_port(ports, "prometheus", 9090, problems, "ports."),
        balancer_replicas=replicas,
        ingress_replicas=ingress_replicas,
        ingress_store=store,
        postgres_port=_port(ports, "postgres", 5432, problems, "ports."),
        scrape_interval_s=_positive(raw, "scrape_interval_s", 1.0, problems, ""),
        speed_factor=_positive(raw, "speed_factor", 60.0, problems, ""),
        policy_dir=policy_dir,
        source=source,
    )
    service_ports = {*grid.ingress_ports, grid.prometheus_port, *grid.balancer_ports,
                     *((grid.postgres_port,) if grid.uses_postgres else ())}
    for clash in sorted(seen_ports & service_ports):
        problems.append(f"substations: port {clash} clashes with a service port")
    if grid.balancer_ports[-1] > 65535:
        problems.append(f"balancer_replicas: {replicas} replicas on consecutive ports from "
                        f"ports.balancer ({grid.balancer_port}) go past port 65535")
    if grid.ingress_port == grid.prometheus_port:
        problems.append(f"ports: ingress and prometheus both use port {grid.ingress_port}")
    for name, port in (("ingress", grid.ingress_port), ("prometheus", grid.prometheus_port)):
        if port in grid.balancer_ports:
            replica = grid.balancer_ports.index(port) + 1
            where = ("ports.balancer" if replica == 1 else
                     f"balancer_replicas: replica {replica}'s port (consecutive from "
                     "ports.balancer)")
            problems.append(f"{where}: port {port} clashes with ports.{name}")
    _ingress_and_postgres_ports(grid, problems)
    if problems:
        raise ConfigError(source, problems)
    return grid


def _replicas(raw: dict[str, Any], key: str, most: int, problems: list[str]) -> int:
    value = raw.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        problems.append(f"{key}: must be an integer 1-{most}, got {show(value)}")
        return 1
    return value


def _ingress_and_postgres_ports(grid: GridConfig, problems: list[str]) -> None:
    """The ports of ingress replicas after the first, and PostgreSQL's, clash with nothing
    (the first ingress replica's port is checked with the others above)."""
    if grid.ingress_ports[-1] > 65535:
        problems.append(f"ingress_replicas: {grid.ingress_replicas} replicas on consecutive "
                        f"ports from ports.ingress ({grid.ingress_port}) go past port 65535")
    others = {grid.prometheus_port: "ports.prometheus",
              **{port: ("ports.balancer" if n == 1 else f"balancer replica {n}")
                 for n, port in enumerate(grid.balancer_ports, start=1)}}
    if grid.uses_postgres:
        others.setdefault(grid.postgres_port, "ports.postgres")
    for n, port in enumerate(grid.ingress_ports[1:], start=2):
        if port in others:
            problems.append(f"ingress_replicas: replica {n}'s port (consecutive from "
                            f"ports.ingress): port {port} clashes with {others[port]}")
    if grid.uses_postgres:
        clash = {grid.prometheus_port: "ports.prometheus", grid.ingress_port: "ports.ingress",
                 **{port: ("ports.balancer" if n == 1 else f"balancer replica {n}")
                    for n, port in enumerate(grid.balancer_ports, start=1)}}
        if grid.postgres_port in clash:
            problems.append(f"ports.postgres: port {grid.postgres_port} clashes with "
                            f"{clash[grid.postgres_port]}")


_KNOWN_KEYS = {"substations", "policy", "host", "ports", "scrape_interval_s", "speed_factor",
               "policy_dir", "balancer_replicas", "ingress_replicas", "ingress_store", "name"}
# A grid name goes into PromQL strings and label values: nothing that needs quoting.
GRID_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_PORT_KEYS = {"ingress", "balancer", "prometheus", "postgres"}
_SUBSTATION_KEYS = {"id", "port", "capacity_kw"}
