"""promtool on everything Prometheus reads: configs, rules, and the rules' unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gridlb.promconfig import REPO_ROOT, render_prometheus_dir

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (make setup installs Debian's prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT)


@needs_promtool
def test_local_config_as_make_up_writes_it_passes_promtool(tmp_path: Path) -> None:
    config = render_prometheus_dir(tmp_path, 1.0, {"substation": ["127.0.0.1:9101"]})
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    files = sorted(str(p) for p in (REPO_ROOT / "prometheus" / "rules").glob("*.yml"))
    assert len(files) >= 2
    result = promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (REPO_ROOT / "prometheus" / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_summary_description_and_runbook() -> None:
    import yaml

    doc = yaml.safe_load((REPO_ROOT / "prometheus" / "rules" / "alerts.yml").read_text())
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "SubstationDown", "SubstationNearCapacity", "BalancerStaleSnapshot",
        "BalancerPrometheusQueryFailing", "SustainedNoCapacity"}
    for alert in alerts:
        assert set(alert["annotations"]) >= {"summary", "description", "runbook"}, alert
        assert alert["labels"]["severity"] in {"warning", "critical"}
