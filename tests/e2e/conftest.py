"""Fixtures the Compose end-to-end modules share: the container engine and a reporter."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.engine import Engine


def reporter(config: pytest.Config) -> Callable[[str], None]:
    """Lines for the test run's own output, past pytest's capture: what ran, how, how long."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        if terminal is None or capture is None:
            print(f"e2e: {line}", file=sys.stderr)
            return
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"e2e: {line}")
    return say


@pytest.fixture(scope="module")
def say(pytestconfig: pytest.Config) -> Callable[[str], None]:
    return reporter(pytestconfig)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory,
           say: Callable[[str], None]) -> Iterator[tuple[Engine, str]]:
    # Imported here: they need the docker package, which a module without it skips on.
    from tests.e2e import engine as engines
    from tests.e2e.stack import compose_command, project_name

    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed "
                    "(make setup installs Debian's docker-compose)")
    project = project_name(os.getpid(), secrets.token_hex(3))
    try:
        found = engines.start(tmp_path_factory.mktemp("engine"), project)
    except engines.NoEngine as exc:
        pytest.skip(f"no container engine can be had here: {exc}")
    say(f"engine: {found.kind} at {found.docker_host}; compose: {' '.join(command)}; "
        f"project {project}")
    try:
        yield found, project
    finally:
        engines.stop(found)
