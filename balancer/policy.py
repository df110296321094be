"""Routing policies: YAML files holding PromQL and how to read its result.

Loading is config -> validate -> use. Validation collects every problem in a file so a user fixes
them in one go; each message names the file and the field. The PromQL is parsed locally with
`promql-parser` (fast, exact messages); whether Prometheus accepts it is checked by the refresher
with a real query before a reloaded policy replaces the serving one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from gridlb.grid import ConfigError

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_KNOWN_FIELDS = {"name", "description", "query", "result", "refresh_interval", "tie_tolerance"}
_KNOWN_RESULT_FIELDS = {"substation_label", "better", "select", "pending_adjustment"}


class Better(str, Enum):
    LOWER = "lower"
    HIGHER = "higher"


class SelectMode(str, Enum):
    BEST = "best"          # the best adjusted score wins; exact or near ties are broken at random
    WEIGHTED = "weighted"  # random choice with probability proportional to the adjusted score


class PendingAdjustment(str, Enum):
    """How kW this balancer assigned since the last scrape changes a stale score.

    kw:          the score is in kW of load (lower is better) or headroom (higher is better)
    utilization: the score is a load/capacity ratio; pending kW move it by pending/capacity
    headroom:    the score is a weight; it shrinks with the share of headroom now pending
    none:        the score does not depend on load (no correction)
    """

    KW = "kw"
    UTILIZATION = "utilization"
    HEADROOM = "headroom"
    NONE = "none"


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    query: str
    substation_label: str
    better: Better
    select: SelectMode
    pending_adjustment: PendingAdjustment
    refresh_interval_s: float
    tie_tolerance: float
    source: str


class PolicyError(ConfigError):
    """A policy file was refused; `problems` lists each bad field."""


def parse_duration(value: object) -> float | None:
    """'500ms', '1s', '2m' or a number of seconds -> seconds; None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if match:
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
            return float(match.group(1)) * scale
    return None


def validate_promql(query: str) -> str | None:
    """The parser's complaint about `query`, or None when it parses."""
    try:
        promql_parser.parse(query)
    except ValueError as exc:
        return str(exc)
    return None


def _enum_field(raw: dict[str, Any], key: str, enum: type[Enum], default: Enum,
                problems: list[str]) -> Any:
    value = raw.get(key, default.value)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum)
        problems.append(f"result.{key}: must be one of {allowed}, got {value!r}")
        return default


def _check_query(raw: dict[str, Any], problems: list[str]) -> str:
    query = raw.get("query")
    if not isinstance(query, str) or not query.strip():
        problems.append("query: is required and must be a PromQL string")
        return ""
    complaint = validate_promql(query)
    if complaint:
        problems.append(f"query: PromQL does not parse: {complaint}")
    return query.strip()


def _check_result(raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    result = raw.get("result", {})
    if not isinstance(result, dict):
        problems.append("result: must be a mapping")
        return {}
    for key in sorted(set(result) - _KNOWN_RESULT_FIELDS):
        problems.append(f"result.{key}: unknown field (known: "
                        f"{', '.join(sorted(_KNOWN_RESULT_FIELDS))})")
    label = result.get("substation_label", "instance")
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        problems.append(f"result.substation_label: must be a Prometheus label name, got {label!r}")
    return result


def parse_policy(raw: object, source: str) -> Policy:
    """Validate a parsed YAML document; raise PolicyError listing every problem."""
    if not isinstance(raw, dict):
        raise PolicyError(source, ["top level: must be a mapping with name, query and result"])
    problems: list[str] = []
    for key in sorted(set(raw) - _KNOWN_FIELDS):
        problems.append(f"{key}: unknown field (known: {', '.join(sorted(_KNOWN_FIELDS))})")
    name = raw.get("name")
    stem = Path(source).stem
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append(f"name: must be lowercase letters, digits, '-' or '_', got {name!r}")
    elif name != stem:
        problems.append(f"name: {name!r} must match the file name {stem!r}")
    query = _check_query(raw, problems)
    result = _check_result(raw, problems)
    better = _enum_field(result, "better", Better, Better.LOWER, problems)
    select = _enum_field(result, "select", SelectMode, SelectMode.BEST, problems)
    adjustment = _enum_field(result, "pending_adjustment", PendingAdjustment,
                             PendingAdjustment.KW, problems)
    if select is SelectMode.WEIGHTED and better is not Better.HIGHER:
        problems.append("result.better: a weighted policy needs better: higher "
                        "(the score is a weight)")
    interval = parse_duration(raw.get("refresh_interval", "1s"))
    if interval is None or not 0.1 <= interval <= 300:
        problems.append("refresh_interval: must be a duration between 100ms and 5m "
                        f"(e.g. '1s'), got {raw.get('refresh_interval')!r}")
        interval = 1.0
    tolerance = raw.get("tie_tolerance", 0.0)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        problems.append(f"tie_tolerance: must be a number >= 0, got {tolerance!r}")
        tolerance = 0.0
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append("description: must be text")
        description = ""
    if problems:
        raise PolicyError(source, problems)
    return Policy(
        name=str(name), description=description.strip(), query=query,
        substation_label=str(result.get("substation_label", "instance")), better=better,
        select=select, pending_adjustment=adjustment, refresh_interval_s=interval,
        tie_tolerance=float(tolerance), source=source,
    )


def load_policy(path: str | Path) -> Policy:
    policy_file = Path(path)
    try:
        text = policy_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(policy_file, [f"cannot read file: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(policy_file, [f"not valid YAML: {exc}"]) from exc
    return parse_policy(raw, source=str(policy_file))


def policy_path(policy_dir: str | Path, name: str) -> Path:
    return Path(policy_dir) / f"{name}.yaml"
