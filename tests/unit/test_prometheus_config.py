"""promtool on everything Prometheus reads: configs, rules, and the rules' unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((REPO_ROOT / "prometheus" / "rules" / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def runbook_sections() -> dict[str, str]:
    """GitHub's anchor of each `## ` heading of docs/runbook.md -> the section's text."""
    text = (REPO_ROOT / "docs" / "runbook.md").read_text()
    sections: dict[str, str] = {}
    for chunk in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = chunk.partition("\n")
        anchor = re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
        sections[anchor] = body
    return sections


def test_every_alert_follows_the_conventions_and_links_its_runbook_section() -> None:
    alerts = alert_rules()
    assert {a["alert"] for a in alerts} >= {
        "SubstationDown", "SubstationNearCapacity", "BalancerStaleSnapshot",
        "BalancerPrometheusQueryFailing", "SustainedNoCapacity", "SubstationsAbsent",
        "SubstationsFewerThanExpected", "BalancerPolicyReloadFailing",
        "IngressIdempotencyRecordsPending", "IngressErrorBudgetBurn", "IngressLatencyBudgetBurn"}
    sections = runbook_sections()
    for alert in alerts:
        name = alert["alert"]
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
        section = sections.get(name.lower())
        assert section is not None, f"docs/runbook.md has no section '## {name}'"
        for part in ("**What it means.**", "**How to check.**", "**What to do.**"):
            assert part in section, (name, part)


def test_every_runbook_link_between_sections_resolves() -> None:
    sections = runbook_sections()
    text = (REPO_ROOT / "docs" / "runbook.md").read_text()
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links
    assert not [link for link in links if link not in sections]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in (REPO_ROOT / "prometheus" / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in alert_rules()}
    assert not names - fired, f"never tested firing: {sorted(names - fired)}"
    assert not names - quiet, f"never tested not firing: {sorted(names - quiet)}"
