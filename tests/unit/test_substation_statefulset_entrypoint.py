"""container/substation-statefulset-entrypoint.sh: a StatefulSet pod's ordinal is its substation's
id and names its state file (deploy/kubernetes/base/substation.yaml runs it)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gridlb.promconfig import REPO_ROOT
from gridlb.stack import free_port, wait_ready

ENTRYPOINT = REPO_ROOT / "container" / "substation-statefulset-entrypoint.sh"


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """A `python` that prints the arguments it was given, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    fake.chmod(0o755)
    return bin_dir


def run(bin_dir: Path, hostname: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": hostname, **env})


@pytest.mark.parametrize(("hostname", "ordinal"), [("substation-0", "0"), ("substation-3", "3"),
                                                   ("prod-substation-12", "12")])
def test_the_pods_ordinal_is_the_substation_id_and_names_its_state_file(
        fake_python: Path, hostname: str, ordinal: str) -> None:
    result = run(fake_python, hostname, "--port=9100", "--capacity-kw=500")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "-m", "substation", "--id", f"substation-{ordinal}",
        "--state-path", f"/data/substation-{ordinal}.sqlite3", "--port=9100", "--capacity-kw=500"]


def test_the_state_directory_can_be_moved(fake_python: Path) -> None:
    result = run(fake_python, "substation-1", SUBSTATION_STATE_DIR="/var/lib/grid")
    assert "/var/lib/grid/substation-1.sqlite3" in result.stdout.splitlines()


@pytest.mark.parametrize("hostname", ["substation", "web-abc", "substation-", "node-1a"])
def test_a_hostname_without_an_ordinal_is_refused_saying_why(fake_python: Path,
                                                             hostname: str) -> None:
    result = run(fake_python, hostname)
    assert result.returncode == 1 and result.stdout == ""
    assert f"the hostname '{hostname}' does not end in -N" in result.stderr
    assert "StatefulSet" in result.stderr


def test_it_starts_the_real_substation_under_its_ordinals_id(tmp_path: Path) -> None:
    port = free_port()
    bin_dir = Path(sys.executable).parent      # this environment's python, with the project
    proc = subprocess.Popen([str(ENTRYPOINT), "--host=127.0.0.1", f"--port={port}",
                             "--capacity-kw=100"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": "substation-7",
                                 "GRID_INTERNAL_TOKEN": "t0k",
                                 "SUBSTATION_STATE_DIR": str(tmp_path)})
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'substation_capacity_kw{substation="substation-7"} 100.0' in metrics
        assert (tmp_path / "substation-7.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(10)
