"""Routing policies: YAML files holding PromQL and how to read its result.

Loading is config -> validate -> use. Validation collects every problem in a file so a user fixes
them in one go; each message names the file and the field. Every field's encoding, type and range
is checked here, before anything is installed: a value that passes (a finite number in range,
valid Unicode text of bounded length) cannot break a request later. The PromQL is parsed locally
with `promql-parser` (fast, exact messages); whether Prometheus accepts it is checked by the
refresh loop with a real query before a reloaded policy replaces the serving one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeGuard

import promql_parser
import yaml

from gridlb.grid import ConfigError, show, unknown_keys

# Patterns are used with fullmatch: `$` alone would let a trailing newline through.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_DURATION_RE = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)(ms|s|m)")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,127}")
MAX_FILE_BYTES = 64 * 1024
MAX_QUERY_CHARS = 10_000
MAX_DESCRIPTION_CHARS = 2_000
MIN_REFRESH_S, MAX_REFRESH_S = 0.1, 300.0
# Beyond this every score ties with every other: that is a random policy, say so instead.
MAX_TIE_TOLERANCE = 1e9
_KNOWN_FIELDS = {"name", "description", "query", "result", "refresh_interval", "tie_tolerance"}
_KNOWN_RESULT_FIELDS = {"substation_label", "better", "select", "pending_adjustment",
                        "load_aging"}


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


class LoadAging(str, Enum):
    """How a load reading is brought from its sample time to the moment of the decision.

    none:     a reading stands until the next one (sessions that ended since are still counted)
    forecast: aged by the substation's own forecast (substation_load_forecast_kw): sessions
              due to end since the sample are no longer counted, and a placement stops counting
              at the end its substation announced (docs/design.md, "Forecast-aware balancing")
    """

    NONE = "none"
    FORECAST = "forecast"


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
    load_aging: LoadAging = LoadAging.NONE


class PolicyError(ConfigError):
    """A policy file was refused; `problems` lists each bad field."""


def _number(value: object) -> float | None:
    """A YAML number as a float (+/-inf when too large for one); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def parse_duration(value: object) -> float | None:
    """'500ms', '1s', '2m' or a number of seconds -> seconds; None when unreadable.
    The result may be NaN or infinite: callers check the range."""
    number = _number(value)
    if number is not None:
        return number
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if match:
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
            return float(match.group(1)) * scale
    return None


def is_policy_name(name: object) -> TypeGuard[str]:
    """Whether `name` can name a policy file (`policies/<name>.yaml`): no path, no dot."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def validate_promql(query: str) -> str | None:
    """The parser's complaint about `query`, or None when it parses."""
    try:
        promql_parser.parse(query)
    except ValueError as exc:
        return str(exc)
    return None


def _is_unicode(text: str) -> bool:
    """False for strings holding lone surrogates (YAML's "\\ud800" escapes make them): they
    cannot be encoded as UTF-8, so every JSON answer quoting them would fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(raw: dict[Any, Any], key: str, max_chars: int, problems: list[str], *,
          required: bool) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            problems.append(f"{key}: is required")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        problems.append(f"{key}: must be {'non-empty ' if required else ''}text, "
                        f"got {show(value)}")
        return ""
    if not _is_unicode(value):
        problems.append(f"{key}: must be valid Unicode text (it holds an unpaired surrogate)")
        return ""
    if len(value) > max_chars:
        problems.append(f"{key}: must be at most {max_chars} characters, got {len(value)}")
        return ""
    return value.strip()


def _enum_field(raw: dict[Any, Any], key: str, enum: type[Enum], default: Enum,
                problems: list[str]) -> Any:
    value = raw.get(key, default.value)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum)
        problems.append(f"result.{key}: must be one of {allowed}, got {show(value)}")
        return default


# The variables a policy's query may use, filled in by the balancer before evaluation: `$grid`
# is its grid's name, so one policy file serves every grid on a shared Prometheus
# (`{job="substation", grid="$grid"}`).
QUERY_VARIABLES = ("grid",)
_VARIABLE_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def render_query(query: str, values: Mapping[str, str]) -> str:
    """`query` with each known `$variable` replaced by its value (unknown ones are refused when
    the policy is loaded, so none is left here)."""
    return _VARIABLE_RE.sub(lambda m: values.get(m.group(1), m.group(0)), query)


def _check_query(raw: dict[Any, Any], problems: list[str]) -> str:
    query = _text(raw, "query", MAX_QUERY_CHARS, problems, required=True)
    if not query:
        return ""
    unknown = sorted({m.group(1) for m in _VARIABLE_RE.finditer(query)} - set(QUERY_VARIABLES))
    if unknown:
        problems.append(f"query: unknown variable {', '.join('$' + u for u in unknown)} "
                        f"(known: {', '.join('$' + v for v in QUERY_VARIABLES)})")
    complaint = validate_promql(render_query(query, dict.fromkeys(QUERY_VARIABLES, "x")))
    if complaint:
        problems.append(f"query: PromQL does not parse: {complaint}")
    return query


def _check_result(raw: dict[Any, Any], problems: list[str]) -> dict[Any, Any]:
    result = raw.get("result", {})
    if not isinstance(result, dict):
        problems.append(f"result: must be a mapping, got {show(result)}")
        return {}
    unknown_keys(result, _KNOWN_RESULT_FIELDS, "result.", problems)
    label = result.get("substation_label", "instance")
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        problems.append("result.substation_label: must be a Prometheus label name, "
                        f"got {show(label)}")
    return result


def _check_refresh_interval(raw: dict[Any, Any], problems: list[str]) -> float:
    value = raw.get("refresh_interval", "1s")
    seconds = parse_duration(value)
    if seconds is None or not MIN_REFRESH_S <= seconds <= MAX_REFRESH_S:  # NaN fails too
        problems.append("refresh_interval: must be a duration between 100ms and 5m "
                        f"(e.g. '1s'), got {show(value)}")
        return 1.0
    return seconds


def _check_tie_tolerance(raw: dict[Any, Any], problems: list[str]) -> float:
    value = raw.get("tie_tolerance", 0.0)
    number = _number(value)
    if number is None or not 0.0 <= number <= MAX_TIE_TOLERANCE:  # NaN fails too
        problems.append(f"tie_tolerance: must be a finite number between 0 and "
                        f"{MAX_TIE_TOLERANCE:g}, got {show(value)}")
        return 0.0
    return number


def parse_policy(raw: object, source: str) -> Policy:
    """Validate a parsed YAML document; raise PolicyError listing every problem."""
    if not isinstance(raw, dict):
        raise PolicyError(source, ["top level: must be a mapping with name, query and result, "
                                   f"got {show(raw)}"])
    problems: list[str] = []
    unknown_keys(raw, _KNOWN_FIELDS, "", problems)
    name = raw.get("name")
    stem = Path(source).stem
    if not is_policy_name(name):
        problems.append(f"name: must be lowercase letters, digits, '-' or '_', got {show(name)}")
    elif name != stem:
        problems.append(f"name: {name!r} must match the file name {stem!r}")
    query = _check_query(raw, problems)
    result = _check_result(raw, problems)
    better = _enum_field(result, "better", Better, Better.LOWER, problems)
    select = _enum_field(result, "select", SelectMode, SelectMode.BEST, problems)
    adjustment = _enum_field(result, "pending_adjustment", PendingAdjustment,
                             PendingAdjustment.KW, problems)
    aging = _enum_field(result, "load_aging", LoadAging, LoadAging.NONE, problems)
    if select is SelectMode.WEIGHTED and better is not Better.HIGHER:
        problems.append("result.better: a weighted policy needs better: higher "
                        "(the score is a weight)")
    interval = _check_refresh_interval(raw, problems)
    tolerance = _check_tie_tolerance(raw, problems)
    description = _text(raw, "description", MAX_DESCRIPTION_CHARS, problems, required=False)
    if problems:
        raise PolicyError(source, problems)
    return Policy(
        name=str(name), description=description, query=query,
        substation_label=str(result.get("substation_label", "instance")), better=better,
        select=select, pending_adjustment=adjustment, refresh_interval_s=interval,
        tie_tolerance=tolerance, source=source, load_aging=aging,
    )


def read_policy_text(policy_file: Path) -> str:
    """The file as text, or PolicyError saying why not (unreadable, too large, not UTF-8)."""
    try:
        with policy_file.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyError(policy_file, [f"cannot read file: {exc.strerror}"]) from exc
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError(policy_file, [f"file: larger than {MAX_FILE_BYTES // 1024} KiB; a "
                                        "policy is a few lines of YAML"])
    try:
        return data.decode("utf-8-sig")   # a BOM some editors write is fine
    except UnicodeDecodeError as exc:
        raise PolicyError(policy_file, [
            f"file: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"]) from exc


def load_policy(path: str | Path) -> Policy:
    policy_file = Path(path)
    text = read_policy_text(policy_file)
    try:
        raw = yaml.safe_load(text)
    # PyYAML raises ValueError for impossible dates (2023-02-30) and integers over 4,300
    # digits, RecursionError for very deep nesting: all of them mean "not a policy file".
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        detail = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise PolicyError(policy_file, [f"not valid YAML: {detail[:300]}"]) from exc
    return parse_policy(raw, source=str(policy_file))


def policy_path(policy_dir: str | Path, name: str) -> Path:
    return Path(policy_dir) / f"{name}.yaml"
