"""Writing a runnable Prometheus directory: config, rules and file-based service discovery."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_SOURCE = REPO_ROOT / "prometheus"


def write_targets(prom_dir: Path, job: str, addresses: Iterable[str], grid: str | None = None,
                  name: str | None = None) -> None:
    """Replace a job's targets; Prometheus notices the file change by itself. `grid`: the grid
    label Prometheus then puts on every series of these targets (gridlb/grid.py). `name`: the
    file (default: the job's), so several grids can share one job (`targets/<job>*.json`)."""
    targets_dir = prom_dir / "targets"
    targets_dir.mkdir(parents=True, exist_ok=True)
    name = name or job
    labels = {"grid": grid} if grid else {}
    tmp = targets_dir / f".{name}.json.tmp"
    tmp.write_text(json.dumps([{"targets": sorted(addresses), "labels": labels}]),
                   encoding="utf-8")
    # Atomic rename: Prometheus must never read a half-written target file.
    os.replace(tmp, targets_dir / f"{name}.json")


def render_prometheus_dir(prom_dir: Path, scrape_interval_s: float,
                          targets: dict[str, list[str]], grid: str | None = None) -> Path:
    """Copy the checked-in config and rules into `prom_dir`; return the config file."""
    prom_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((PROMETHEUS_SOURCE / "prometheus.yml").read_text(encoding="utf-8"))
    interval_ms = max(int(scrape_interval_s * 1000), 100)
    config["global"]["scrape_interval"] = f"{interval_ms}ms"
    config["global"]["scrape_timeout"] = f"{max(int(interval_ms * 0.8), 80)}ms"
    config["global"]["evaluation_interval"] = f"{interval_ms}ms"
    config_file = prom_dir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    rules = prom_dir / "rules"
    if rules.exists():
        shutil.rmtree(rules)
    shutil.copytree(PROMETHEUS_SOURCE / "rules", rules)
    for job in ("substation", "balancer", "ingress", "prometheus"):
        write_targets(prom_dir, job, targets.get(job, []), grid)
    return config_file


def prometheus_command(config_file: Path, data_dir: Path, listen: str) -> list[str]:
    return [
        "prometheus",
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={listen}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=2d",
        "--log.level=warn",
    ]
