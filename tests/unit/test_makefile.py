"""`make up` installs what running needs and nothing else; `make test` and `make bench` add
their own tools. Read from `make -n` (what make would run, run nothing) against a virtualenv
path that does not exist, so every install step shows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gridlb.promconfig import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")

TEST_AND_BENCH_TOOLS = ("wrk", "nginx", "docker-compose", "matplotlib")


def dry_run(target: str, tmp_path: Path) -> list[str]:
    # Not the environment of a make that runs pytest (`make test`): its MAKEFLAGS/MAKELEVEL
    # would make this one print "Entering/Leaving directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(["make", "--no-print-directory", "-n", target,
                             f"VENV={tmp_path / 'venv'}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def scripts_run(lines: list[str]) -> list[list[str]]:
    """[script, args...] of each scripts/*.sh a recipe line starts."""
    return [line.split("#", 1)[0].split("||", 1)[0].split()
            for line in lines if re.match(r"\s*scripts/\S+\.sh\b", line)]


def pip_installs(lines: list[str]) -> list[str]:
    """What each `pip install` installs (the word after -e)."""
    return [m.group(1).strip("'\"") for line in lines
            for m in [re.search(r"-m pip install .*?-e (\S+)", line)] if m]


def tools(group: str) -> set[str]:
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ensure-tools.sh"), "--list",
                             group], capture_output=True, text=True, timeout=30, check=True)
    return {pair.split(":", 1)[0] for pair in result.stdout.split()}


def extra(name: str) -> str:
    """The text of one `[project.optional-dependencies]` list of pyproject.toml."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    match = re.search(rf"^{name} = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert match, name
    return match.group(1)


def test_make_up_installs_the_runtime_only(tmp_path: Path) -> None:
    lines = dry_run("up", tmp_path)
    assert pip_installs(lines) == ["."], lines          # the package, no extras
    run = {script[0] for script in scripts_run(lines)}
    assert run == {"scripts/ensure-python.sh", "scripts/ensure-prometheus.sh"}, run
    for script in run:
        text = (REPO_ROOT / script).read_text()
        assert not [t for t in TEST_AND_BENCH_TOOLS if t in text], script
    assert not [t for t in TEST_AND_BENCH_TOOLS if any(t in line for line in lines)], lines
    assert lines[-1].endswith("-m gridlb.stack")


def test_make_test_adds_the_dev_extras_and_docker_compose(tmp_path: Path) -> None:
    lines = dry_run("test", tmp_path)
    assert pip_installs(lines) == [".", ".[dev]"]
    groups = [script[1:] for script in scripts_run(lines)
              if script[0] == "scripts/ensure-tools.sh"]
    assert groups == [["test"]]
    assert tools("test") == {"docker-compose"}
    assert "pytest" in extra("dev") and "mypy" in extra("dev")
    assert lines[-1].endswith("-m pytest")


def test_make_bench_adds_matplotlib_wrk_and_nginx_not_the_test_tools(tmp_path: Path) -> None:
    lines = dry_run("bench", tmp_path)
    assert pip_installs(lines) == [".", ".[bench]"]
    groups = [script[1:] for script in scripts_run(lines)
              if script[0] == "scripts/ensure-tools.sh"]
    assert groups == [["bench"]]
    assert tools("bench") == {"wrk", "nginx"}
    assert "matplotlib" in extra("bench")
    assert lines[-1].rstrip().endswith("-m bench")


def test_make_setup_still_installs_everything(tmp_path: Path) -> None:
    lines = dry_run("setup", tmp_path)
    assert pip_installs(lines) == [".", ".[dev]", ".[bench]"]
    groups = [script[1:] for script in scripts_run(lines)
              if script[0] == "scripts/ensure-tools.sh"]
    assert groups == [["test"], ["bench"]]


def test_ensure_tools_refuses_an_unknown_group() -> None:
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ensure-tools.sh"), "up"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown group 'up'" in result.stderr
