"""The container engine for the e2e test: scripts/ensure-container-engine.sh, from Python.

`start` returns the engine, or the reason there is none here (the test then skips with it).
Once an engine has answered, every failure is an error, never a skip.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from gridlb.promconfig import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "ensure-container-engine.sh"
UNAVAILABLE = 3


@dataclass(frozen=True)
class Engine:
    docker_host: str
    kind: str            # "docker": a real engine that answered; "podman": started for this run
    state_dir: Path

    @property
    def local(self) -> bool:
        """Do the engine's container PIDs live on this host (so the test can crash one)?"""
        return self.docker_host.startswith("unix://")


class NoEngine(Exception):
    """No container engine can be had here; the message says what is missing."""


def start(state_dir: Path, project: str) -> Engine:
    result = subprocess.run(["bash", str(SCRIPT), "start", str(state_dir), project],
                            capture_output=True, text=True, timeout=900)
    if result.returncode == UNAVAILABLE:
        raise NoEngine(result.stderr.strip())
    if result.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} start failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return Engine(values["DOCKER_HOST"], values["ENGINE"], state_dir)


def stop(engine: Engine) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", str(engine.state_dir)], check=True,
                   capture_output=True, text=True, timeout=60)
