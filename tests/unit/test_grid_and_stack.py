from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gridlb.grid import ConfigError, GridConfig, SubstationSpec, load_grid, parse_grid
from gridlb.promconfig import REPO_ROOT, render_prometheus_dir, write_targets
from gridlb.stack import (
    PID_FILE,
    Resumed,
    balancer_spec,
    banner,
    ports_in_use,
    reset,
    resume_report,
    routable,
    running_stack_pid,
    stack_specs,
)

GOOD: dict[str, Any] = {"policy": "least-load",
                        "substations": [{"id": "a", "port": 9101, "capacity_kw": 100}]}


def test_the_shipped_grid_file_has_two_equal_substations_and_default_ports() -> None:
    grid = load_grid(REPO_ROOT / "grid.yaml")
    assert [s.capacity_kw for s in grid.substations] == [500.0, 500.0]
    assert (grid.ingress_port, grid.balancer_port, grid.prometheus_port) == (8080, 8081, 9090)
    assert [s.port for s in grid.substations] == [9101, 9102]
    assert grid.balancer_replicas == 1 and grid.balancer_urls == ("http://127.0.0.1:8081",)
    assert (grid.ingress_replicas, grid.ingress_store, grid.ingress_urls) == \
        (1, "sqlite", ("http://127.0.0.1:8080",))


@pytest.mark.parametrize(("change", "message"), [
    ({"ingress_replicas": 2},
     r"^grid\.yaml: ingress_replicas: 2 ingress replicas need a store they share: set "
     r"ingress_store: postgresql \(the SQLite store is one process's file"),
    ({"ingress_replicas": 3, "ingress_store": "sqlite"},
     r"ingress_replicas: 3 ingress replicas need a store they share"),
    ({"ingress_replicas": 0}, r"ingress_replicas: must be an integer 1-16, got 0"),
    ({"ingress_replicas": "2"}, r"ingress_replicas: must be an integer 1-16, got '2'"),
    ({"ingress_store": "mysql"},
     r"ingress_store: must be one of sqlite, postgresql, got 'mysql'"),
    ({"ingress_replicas": 2, "ingress_store": "postgresql", "ports": {"ingress": 65535}},
     r"ingress_replicas: 2 replicas on consecutive ports from ports\.ingress \(65535\) go "
     r"past port 65535"),
    ({"ingress_replicas": 2, "ingress_store": "postgresql", "ports": {"ingress": 8080}},
     r"ingress_replicas: replica 2's port \(consecutive from ports\.ingress\): port 8081 "
     r"clashes with ports\.balancer"),
    ({"ingress_replicas": 2, "ingress_store": "postgresql",
      "ports": {"ingress": 8000, "postgres": 8001}},
     r"ingress_replicas: replica 2's port \(consecutive from ports\.ingress\): port 8001 "
     r"clashes with ports\.postgres"),
    ({"ingress_store": "postgresql", "ports": {"postgres": 9090}},
     r"ports\.postgres: port 9090 clashes with ports\.prometheus"),
    ({"ingress_store": "postgresql", "ports": {"postgres": 9101}},
     r"substations: port 9101 clashes with a service port"),
    ({"ingress_replicas": 2, "ingress_store": "postgresql",
      "substations": [{"id": "a", "port": 8081, "capacity_kw": 1}],
      "ports": {"ingress": 8080, "balancer": 8090}},
     r"substations: port 8081 clashes with a service port"),
    ({"ports": {"postgres": "x"}}, r"ports\.postgres: must be an integer port 1-65535"),
])
def test_each_bad_ingress_replica_or_store_field_is_named(change: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid({**GOOD, **change}, source="grid.yaml")


def test_ingress_replicas_on_postgresql_share_one_server_that_starts_before_them(
        tmp_path: Path) -> None:
    grid = parse_grid({**GOOD, "ingress_replicas": 2, "ingress_store": "postgresql",
                       "ports": {"ingress": 8000, "balancer": 8010, "prometheus": 8100,
                                 "postgres": 8200}})
    specs = stack_specs(grid, tmp_path)
    assert [s.name for s in specs] == ["prometheus", "postgres", "a", "balancer", "ingress",
                                       "ingress-2"]
    by_name = {s.name: s for s in specs}
    url = "postgresql://grid@127.0.0.1:8200/grid"
    assert by_name["postgres"].ready_url == url
    server = by_name["postgres"].argv
    assert server[server.index("-D") + 1] == str(tmp_path / "postgres" / "data")
    assert server[server.index("-p") + 1] == "8200"
    assert "listen_addresses=127.0.0.1" in server and "synchronous_commit=on" in server
    for name, port in (("ingress", 8000), ("ingress-2", 8001)):
        argv = by_name[name].argv
        assert argv[argv.index("--port") + 1] == str(port)
        assert argv[argv.index("--store-url") + 1] == url and "--store-path" not in argv
        assert by_name[name].ready_url == f"http://127.0.0.1:{port}/healthz"
    assert by_name["ingress"].env == by_name["ingress-2"].env
    targets = json.loads((tmp_path / "prometheus" / "targets" / "ingress.json").read_text())
    assert targets == [{"targets": ["127.0.0.1:8000", "127.0.0.1:8001"],
                        "labels": {"grid": "local"}}]


def test_one_ingress_on_sqlite_starts_no_postgresql(tmp_path: Path) -> None:
    grid = parse_grid(GOOD)
    specs = stack_specs(grid, tmp_path)
    assert "postgres" not in [s.name for s in specs]
    ingress = specs[-1].argv
    assert ingress[ingress.index("--store-path") + 1] == str(tmp_path / "ingress.sqlite3")


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
    ({"balancer_replicas": 0}, r"balancer_replicas: must be an integer 1-16, got 0"),
    ({"balancer_replicas": 17}, r"balancer_replicas: must be an integer 1-16, got 17"),
    ({"balancer_replicas": 2.0}, r"balancer_replicas: must be an integer 1-16, got 2\.0"),
    ({"balancer_replicas": True}, r"balancer_replicas: must be an integer 1-16, got True"),
    ({"balancer_replicas": "2"}, r"balancer_replicas: must be an integer 1-16, got '2'"),
    ({"balancer_replicas": 3, "ports": {"balancer": 65534}},
     r"balancer_replicas: 3 replicas on consecutive ports from ports\.balancer \(65534\) go "
     r"past port 65535"),
    ({"balancer_replicas": 2, "ports": {"balancer": 9100}},
     r"substations: port 9101 clashes with a service port"),
    ({"balancer_replicas": 3, "ports": {"balancer": 8078}},
     r"balancer_replicas: replica 3's port \(consecutive from ports\.balancer\): port 8080 "
     r"clashes with ports\.ingress"),
    ({"ports": {"balancer": 9090}}, r"ports\.balancer: port 9090 clashes with ports\.prometheus"),
    ({"ports": {"ingress": 9090}}, r"ports: ingress and prometheus both use port 9090"),
    ({"scrape_interval": 15}, r"grid\.yaml: scrape_interval: unknown field \(known: "
     r"balancer_replicas, host, ingress_replicas, ingress_store, name, policy, policy_dir, "
     r"ports, scrape_interval_s, speed_factor, substations\)"),
    ({"name": "North Grid"}, r"name: must be 1-63 lowercase letters, digits, '_', '\.', '-' "
     r"\(the grid label on every series\), got 'North Grid'"),
    ({"name": 'a"}) or vector(1'}, r"name: must be 1-63 lowercase letters"),
    ({"ports": {"ingres": 8000}}, r"ports\.ingres: unknown field \(known: balancer, ingress, "
     r"postgres, prometheus\)"),
    ({"substations": [{"id": "a", "port": 9101, "capacity_kw": 1, "capacity": 5}]},
     r"substations\[0\]\.capacity: unknown field \(known: capacity_kw, id, port\)"),
    ({"policy_dir": ["x"]}, r"policy_dir: must be a directory path, got a list"),
    ({"policy_dir": ""}, r"policy_dir: must be a directory path, got ''"),
    ({"host": {"a": 1}}, r"host: must be a host name or address, got a mapping$"),
])
def test_each_bad_grid_field_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid({**GOOD, **change}, source="grid.yaml")


def test_balancer_replicas_run_on_consecutive_ports_are_scraped_and_all_given_to_the_ingress(
        tmp_path: Path) -> None:
    grid = parse_grid({**GOOD, "balancer_replicas": 3,
                       "ports": {"ingress": 8000, "balancer": 8001, "prometheus": 8100}})
    specs = stack_specs(grid, tmp_path)
    assert [s.name for s in specs] == ["prometheus", "a", "balancer", "balancer-2", "balancer-3",
                                       "ingress"]
    by_name = {s.name: s for s in specs}
    for name, port in (("balancer", 8001), ("balancer-2", 8002), ("balancer-3", 8003)):
        argv = by_name[name].argv
        assert argv[argv.index("--port") + 1] == str(port)
        assert by_name[name].ready_url == f"http://127.0.0.1:{port}/healthz"
        assert by_name[name].env["GRID_INTERNAL_TOKEN"] == by_name["a"].env["GRID_INTERNAL_TOKEN"]
    ingress = by_name["ingress"].argv
    assert ingress[ingress.index("--balancer-url") + 1] == \
        "http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003"
    targets = json.loads((tmp_path / "prometheus" / "targets" / "balancer.json").read_text())
    assert targets == [{"targets": ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"],
                        "labels": {"grid": "local"}}]


def test_every_replica_of_the_stack_watches_one_active_policy_file(tmp_path: Path) -> None:
    grid = parse_grid({**GOOD, "balancer_replicas": 2,
                       "ports": {"ingress": 8000, "balancer": 8001, "prometheus": 8100}})
    balancers = [s.argv for s in stack_specs(grid, tmp_path) if s.name.startswith("balancer")]
    assert [a[a.index("--active-policy-file") + 1] for a in balancers] == \
        [str(tmp_path / "active-policy")] * 2


@pytest.mark.parametrize(("scrape_s", "max_age"), [(1.0, "15"), (5.0, "15"), (15.0, "45"),
                                                   (60.0, "180")])
def test_the_maximum_snapshot_age_leaves_room_for_the_scrape_interval(
        tmp_path: Path, scrape_s: float, max_age: str) -> None:
    # The age is the newest scrape's: it reaches one scrape interval between two scrapes.
    grid = parse_grid({**GOOD, "scrape_interval_s": scrape_s})
    argv = balancer_spec(grid, {}, ("--forward-timeout", "1")).argv
    assert argv[argv.index("--max-snapshot-age") + 1] == max_age
    assert argv[-2:] == ["--forward-timeout", "1"]   # a caller's own arguments come last (win)
    assert "--active-policy-file" not in argv        # only given where replicas share a dir


def test_the_banner_says_when_a_run_time_choice_serves_instead_of_grid_yaml() -> None:
    grid = parse_grid(GOOD)
    assert "policy least-load)." in banner(grid, "k")
    assert "policy least-load)." in banner(grid, "k", "least-load")
    assert "policy rate-weighted, chosen at run time over grid.yaml's least-load; `make reset` " \
        "drops it)." in banner(grid, "k", "rate-weighted")


def test_a_replica_port_already_taken_is_reported_by_name() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        grid = GridConfig(substations=(SubstationSpec("s1", 4, 1.0),), policy="x",
                          ingress_port=1, balancer_port=taken - 1, prometheus_port=3,
                          balancer_replicas=2)
        busy = ports_in_use(grid)
    assert f"balancer-2 port {taken}" in busy


def test_an_ingress_replica_or_postgres_port_already_taken_is_reported_by_name() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        grid = GridConfig(substations=(SubstationSpec("s1", 4, 1.0),), policy="x",
                          ingress_port=taken - 1, balancer_port=2, prometheus_port=3,
                          ingress_replicas=2, ingress_store="postgresql", postgres_port=taken)
        busy = ports_in_use(grid)
    assert f"ingress-2 port {taken}" in busy and f"postgres port {taken}" in busy


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
                 "dev-api-key", "internal-token", "active-policy"):
        (tmp_path / name).write_text("x")
    (tmp_path / "prometheus-data" / "wal").mkdir(parents=True)
    (tmp_path / "postgres" / "data").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    assert reset(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-api-key", "internal-token"]
    assert "removed ingress.sqlite3, substation-a.sqlite3, substation-a.sqlite3-wal, " \
           "active-policy, postgres/, prometheus-data/, logs/" in capsys.readouterr().out


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


def test_a_grid_file_of_nested_aliases_is_refused_in_a_short_message(tmp_path: Path) -> None:
    # Nine levels of ten aliases: a billion leaves if anything expanded it (a repr would).
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines += ["policy: *a8", "host: *a8", "substations: *a8", "ports: {ingress: *a8}"]
    path = tmp_path / "grid.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"policy: must name a policy file .*got a list") as e:
        load_grid(path)
    assert len(str(e.value)) < 4000   # one line per problem, no value expanded
    assert "a0: unknown field" in str(e.value)


def test_a_valid_grid_with_every_field_is_read_as_written() -> None:
    grid = parse_grid({**GOOD, "host": "127.0.0.2", "policy_dir": "/etc/grid/policies",
                       "scrape_interval_s": 5, "speed_factor": 1, "balancer_replicas": 2,
                       "ports": {"ingress": 8000, "balancer": 8001, "prometheus": 8100}})
    assert (grid.host, grid.policy_dir, grid.scrape_interval_s, grid.speed_factor,
            grid.balancer_ports, grid.ingress_port, grid.prometheus_port) == \
        ("127.0.0.2", "/etc/grid/policies", 5.0, 1.0, (8001, 8002), 8000, 8100)


def test_a_grid_is_named_and_its_name_labels_its_targets_and_selects_its_balancer(
        tmp_path: Path) -> None:
    grid = parse_grid({**GOOD, "name": "north"}, source="grid.yaml")
    assert grid.name == "north" and parse_grid(GOOD).name == "local"
    argv = balancer_spec(grid, {}).argv
    assert argv[argv.index("--grid") + 1] == "north"
    render_prometheus_dir(tmp_path, 1.0, {"substation": ["127.0.0.1:9101"]}, "north")
    assert json.loads((tmp_path / "targets" / "substation.json").read_text()) == \
        [{"targets": ["127.0.0.1:9101"], "labels": {"grid": "north"}}]
    write_targets(tmp_path, "substation", ["127.0.0.1:9201"], "south", name="substation-south")
    assert json.loads((tmp_path / "targets" / "substation-south.json").read_text()) == \
        [{"targets": ["127.0.0.1:9201"], "labels": {"grid": "south"}}]
    write_targets(tmp_path, "balancer", ["127.0.0.1:8081"])
    assert json.loads((tmp_path / "targets" / "balancer.json").read_text())[0]["labels"] == {}


def test_routable_substations_are_up_with_load_and_capacity_known() -> None:
    view = {"substations": [
        {"substation": "a", "up": True, "load_kw": 0.0, "capacity_kw": 100.0},
        {"substation": "b", "up": False, "load_kw": 1.0, "capacity_kw": 100.0},
        {"substation": "c", "up": True, "load_kw": None, "capacity_kw": 100.0},
        {"substation": "d", "up": True, "load_kw": 1.0, "capacity_kw": None},
        {"up": True, "load_kw": 1.0, "capacity_kw": 100.0}, "not a row"]}
    assert routable(view) == {"a"}
    assert routable(None) == routable({"error": "x"}) == routable({"substations": []}) == set()
