from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from gridlb.grid import ConfigError, GridConfig, SubstationSpec, load_grid, parse_grid
from gridlb.promconfig import REPO_ROOT
from gridlb.stack import ports_in_use

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
