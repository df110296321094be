"""Starting a service: auth fails closed (gridlb/cli.py), the start-up line, and the metrics that
say what runs (gridlb/serviceinfo.py)."""

from __future__ import annotations

import logging
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import balancer.__main__ as balancer_main
import ingress.__main__ as ingress_main
import substation.__main__ as substation_main
from balancer.app import create_app as create_balancer
from balancer.config import BalancerConfig
from gridlb.grid import parse_grid
from gridlb.serviceinfo import UNKNOWN_VERSION, package_version
from gridlb.stack import stack_specs
from ingress.app import create_app as create_ingress
from ingress.config import IngressConfig
from substation.app import create_app as create_substation
from substation.config import SubstationConfig
from tests.conftest import FakeQueryClient

REPO = Path(__file__).resolve().parents[2]
SUBSTATION_ARGS = ["--id", "s1", "--capacity-kw", "10"]
ParseArgs = Callable[[list[str]], Any]
SERVICES: list[tuple[str, ParseArgs, list[str], str]] = [
    ("ingress", ingress_main.parse_args, [], "GRID_API_KEYS"),
    ("balancer", balancer_main.parse_args, [], "GRID_INTERNAL_TOKEN"),
    ("substation", substation_main.parse_args, SUBSTATION_ARGS, "GRID_INTERNAL_TOKEN"),
]


@pytest.fixture(autouse=True)
def no_keys_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRID_API_KEYS", raising=False)
    monkeypatch.delenv("GRID_INTERNAL_TOKEN", raising=False)


@pytest.mark.parametrize(("service", "parse", "args", "variable"), SERVICES)
def test_without_keys_a_service_refuses_to_start_and_names_the_flag(
        service: str, parse: ParseArgs, args: list[str], variable: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{service}: refusing to start without " in err
    assert variable in err and "--insecure-no-auth" in err


@pytest.mark.parametrize(("service", "parse", "args", "variable"), SERVICES)
def test_insecure_no_auth_lets_it_start_open_and_keys_make_it_check(
        service: str, parse: ParseArgs, args: list[str], variable: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse([*args, "--insecure-no-auth"])
    assert (config.api_keys if service == "ingress" else config.internal_token) in ((), None)
    monkeypatch.setenv(variable, "k3y")
    config = parse(args)
    assert (config.api_keys if service == "ingress" else config.internal_token) in \
        (("k3y",), "k3y")


@pytest.mark.parametrize(("service", "parse", "args", "variable"), SERVICES)
def test_keys_and_the_flag_together_are_refused(
        service: str, parse: ParseArgs, args: list[str], variable: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(variable, "k3y")
    with pytest.raises(SystemExit):
        parse([*args, "--insecure-no-auth"])
    assert f"{service}: --insecure-no-auth contradicts " in capsys.readouterr().err


def test_an_api_keys_file_counts_as_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# clients\nk-1\n\nk-2\n")
    assert ingress_main.parse_args(["--api-keys-file", str(keys)]).api_keys == ("k-1", "k-2")
    keys.write_text("# nothing but a comment\n")
    with pytest.raises(SystemExit):
        ingress_main.parse_args(["--api-keys-file", str(keys)])


@pytest.mark.parametrize(("service", "parse", "args", "variable"), SERVICES)
def test_log_format_is_text_unless_json_is_asked_for(
        service: str, parse: ParseArgs, args: list[str], variable: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert parse([*args, "--insecure-no-auth"]).log_format == "text"
    assert parse([*args, "--insecure-no-auth", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit):
        parse([*args, "--insecure-no-auth", "--log-format", "xml"])
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_every_service_make_up_starts_passes_the_auth_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make up` gives each service its keys (generated once in .run/): none of them would be
    refused, and none runs open."""
    grid = parse_grid({"policy": "least-load", "policy_dir": str(REPO / "policies"),
                       "substations": [{"id": "a", "port": 9201, "capacity_kw": 100}]})
    parsers: dict[str, ParseArgs] = {"-m ingress": ingress_main.parse_args,
                                     "-m balancer": balancer_main.parse_args,
                                     "-m substation": substation_main.parse_args}
    checked = []
    for spec in stack_specs(grid, tmp_path):
        command = " ".join(spec.argv[1:3])
        if command not in parsers:
            continue                        # Prometheus
        with monkeypatch.context() as env:
            for name, value in spec.env.items():
                env.setenv(name, value)
            config = parsers[command](spec.argv[3:])
        assert config.internal_token
        if command == "-m ingress":
            assert config.api_keys
        checked.append(spec.name)
    assert checked == ["a", "balancer", "ingress"]


def build_and_auth(registry: CollectorRegistry, service: str) -> tuple[dict[str, str], float]:
    families = {f.name: f.samples for f in text_string_to_metric_families(
        generate_latest(registry).decode())}
    (info,) = families[f"{service}_build_info"]
    (auth,) = families[f"{service}_auth_disabled"]
    assert info.value == 1
    return info.labels, auth.value


def test_the_version_comes_from_the_installed_package_with_a_fallback() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", package_version())
    assert package_version("no-such-distribution-here") == UNKNOWN_VERSION


Factory = Callable[[bool, CollectorRegistry, Path], web.Application]


def ingress_app(keys: bool, registry: CollectorRegistry, tmp: Path) -> web.Application:
    return create_ingress(IngressConfig(api_keys=("k",) if keys else (),
                                        store_path=str(tmp / "i.sqlite3")), registry)


def balancer_app(keys: bool, registry: CollectorRegistry, tmp: Path) -> web.Application:
    return create_balancer(BalancerConfig(policy_dir=str(REPO / "policies"),
                                          policy="least-load",
                                          internal_token="t" if keys else None),
                           client=FakeQueryClient(), registry=registry)


def substation_app(keys: bool, registry: CollectorRegistry, tmp: Path) -> web.Application:
    return create_substation(SubstationConfig("s1", 10.0, state_path=str(tmp / "s.sqlite3"),
                                              internal_token="t" if keys else None), registry)


APPS: list[tuple[str, Factory, list[str]]] = [
    ("ingress", ingress_app, ["api_keys=1", "internal_token=unset", "store=sqlite:",
                              "durability=full", "balancers=http://127.0.0.1:8081"]),
    ("balancer", balancer_app, ["policy=least-load", "policy_file=", "least-load.yaml",
                                "prometheus=http://127.0.0.1:9090", "internal_token=set",
                                "state=memory"]),
    ("substation", substation_app, ["id=s1", "capacity_kw=10.0", "internal_token=set",
                                    "store=sqlite:", "durability=full"]),
]


@pytest.mark.parametrize(("service", "factory", "words"), APPS)
async def test_with_keys_it_says_what_it_runs_as_and_auth_disabled_is_0(
        service: str, factory: Factory, words: list[str], aiohttp_client: Any,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    registry = CollectorRegistry()
    await aiohttp_client(factory(True, registry, tmp_path))
    labels, disabled = build_and_auth(registry, service)
    assert labels == {"version": package_version(), "python": platform.python_version()}
    assert disabled == 0
    (line,) = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith(f"{service} starting: ")]
    assert f" version={package_version()} " in line and " listen=127.0.0.1:" in line
    for word in words:
        assert word in line, (word, line)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("service", "factory", "words"), APPS)
async def test_without_keys_it_warns_at_start_and_auth_disabled_is_1(
        service: str, factory: Factory, words: list[str], aiohttp_client: Any,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    registry = CollectorRegistry()
    await aiohttp_client(factory(False, registry, tmp_path))
    assert build_and_auth(registry, service)[1] == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("AUTH DISABLED: no ")
    assert "(--insecure-no-auth): every caller that reaches 127.0.0.1:" in warning.getMessage()
