from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gridlb.grid import ConfigError, GridConfig, SubstationSpec, load_grid, parse_grid
from gridlb.promconfig import REPO_ROOT
from gridlb.stack import (
    PID_FILE,
    Resumed,
    ports_in_use,
    reset,
    resume_report,
    running_stack_pid,
)

GOOD: dict[str, Any] = {"policy": "least-load",
                        "substations": [{"id": "a", "port": 9101, "capacity_kw": 100}]}


def test_the_shipped_grid_file_has_two_equal_substations_and_default_ports() -> None:
    grid = load_grid(REPO_ROOT / "grid.yaml")
    assert [s.capacity_kw for s in grid.substations] == [500.0, 500.0]
    assert (grid.ingress_port, grid.balancer_port, grid.prometheus_port) == (8080, 8081, 9090)
    assert [s.port for s in grid.substations] == [9101, 9102]


@pytest.mark.parametrize(("change", "message"), [
    ({"substations": []}, r"substations: must be a non-empty list"),
    ({"policy": ""}, r"policy: must name a policy file"),
    ({"substations": [{"id": "a b", "port": 9101, "capacity_kw": 1}]},
     r"substations\[0\]\.id: must be 1-63 letters"),
    ({"substations": [{"id": "a", "capacity_kw": 1}]}, r"substations\[0\]\.port: is required"),
    ({"substations": [{"id": "a", "port": 70000, "capacity_kw": 1}]},
     r"substations\[0\]\.port: must be an integer port"),
    ({"substations": [{"id": "a", "port": 9101, "capacity_kw": -5}]},
     r"substations\[0\]\.capacity_kw: must be a positive number, got -5"),
    ({"substations": [{"id": "a", "port": 9101, "capacity_kw": 1},
                      {"id": "a", "port": 9102, "capacity_kw": 1}]},
     r"substations\[1\]\.id: duplicate id 'a'"),
    ({"substations": [{"id": "a", "port": 8080, "capacity_kw": 1}]},
     r"port 8080 clashes with a service port"),
    ({"ports": {"ingress": "eighty"}}, r"ports\.ingress: must be an integer port"),
])
def test_each_bad_grid_field_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid({**GOOD, **change}, source="grid.yaml")


def test_a_broken_grid_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("substations: [\n")
    with pytest.raises(ConfigError, match=r"grid\.yaml: not valid YAML"):
        load_grid(path)


def test_ports_already_taken_are_reported_by_name() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        grid = GridConfig(substations=(SubstationSpec("s1", taken, 1.0),), policy="x",
                          ingress_port=1, balancer_port=2, prometheus_port=3)
        busy = ports_in_use(grid)
    assert f"s1 port {taken}" in busy


def test_resume_report_names_sessions_and_kw_per_substation(tmp_path: Path) -> None:
    rows = [Resumed("substation1", 3, 33.0), Resumed("substation2", 1, 7.4),
            Resumed("substation3", None, None)]
    assert resume_report(rows, tmp_path) == (
        f"make up: resumed from {tmp_path} (`make reset` starts empty):\n"
        "  substation1    3 sessions, 33 kW\n"
        "  substation2    1 session, 7.4 kW\n"
        "  substation3    did not report its sessions")
    assert resume_report([Resumed("a", 0, 0.0)], tmp_path) == \
        f"make up: starting empty (no sessions to resume in {tmp_path})"


def test_reset_empties_the_state_and_keeps_the_keys(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("substation-a.sqlite3", "substation-a.sqlite3-wal", "ingress.sqlite3",
                 "dev-api-key", "internal-token"):
        (tmp_path / name).write_text("x")
    (tmp_path / "prometheus-data" / "wal").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    assert reset(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-api-key", "internal-token"]
    assert "removed ingress.sqlite3, substation-a.sqlite3, substation-a.sqlite3-wal, " \
           "prometheus-data/, logs/" in capsys.readouterr().out


def test_reset_refuses_while_make_up_runs(tmp_path: Path) -> None:
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                               "gridlb.stack"])
    try:
        (tmp_path / "ingress.sqlite3").write_text("x")
        (tmp_path / PID_FILE).write_text(f"{runner.pid}\n")
        assert running_stack_pid(tmp_path) == runner.pid
        assert reset(tmp_path) == 1
        assert (tmp_path / "ingress.sqlite3").exists()
    finally:
        runner.kill()
        runner.wait()
    assert running_stack_pid(tmp_path) is None      # a stale PID file does not block
    assert reset(tmp_path) == 0
