"""Which policy the fleet serves: one small file that every balancer replica watches.

`POST /-/reload {"policy": name}` on any replica checks the policy (it loads, and Prometheus
accepts its query), then writes its name here, atomically (a temporary file renamed over this
one, so no replica ever reads half a file). Every replica's refresh loop looks at the file about
once a second and switches to the policy it names; a replica that starts, or restarts, reads it
first. Without the file a replica serves its configured policy (`--policy`).

The file also records that configured policy, the default the choice was made over. A replica
that starts with another default (grid.yaml's `policy:` or GRID_POLICY was edited, then the
fleet restarted) takes the new configuration and writes it here, so the newest decision wins
either way: a runtime switch survives restarts until the configuration itself changes.

The file is JSON (`{"policy": ..., "default": ..., "set_at": ..., "set_by": ...}`); a file
holding just a policy name (written by hand) is read as a choice made over any default.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from balancer.policy import Policy, PolicyError, is_policy_name, load_policy, policy_path
from gridlb.grid import ConfigError, show

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4096   # a name and three short fields
_FIELDS = {"policy", "default", "set_at", "set_by"}
# raw() of an unreadable file: a state of its own, told apart from any content by the NUL.
_UNREADABLE = b"\0unreadable: "


def replica_name(port: int) -> str:
    """Who wrote a choice into the file, as an operator would look for it."""
    return f"{socket.gethostname()}:{port}"


@dataclass(frozen=True)
class ActiveChoice:
    policy: str
    default: str | None     # the configured policy it was chosen over; None: over any
    set_at: float | None = None
    set_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_choice(text: str, source: str | Path) -> ActiveChoice:
    """The file's text -> the choice it holds, or ConfigError naming the file and field."""
    stripped = text.strip()
    if is_policy_name(stripped):
        return ActiveChoice(policy=stripped, default=None)
    try:
        raw = json.loads(stripped)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(source, ["file: must be a policy name or a JSON object with "
                                   f"'policy', not {show(stripped)} ({exc})"[:300]]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"file: must be a JSON object with 'policy', got {show(raw)}"])
    problems = [f"{key}: unknown field (known: {', '.join(sorted(_FIELDS))})"
                for key in sorted(set(raw) - _FIELDS)]
    policy, default = raw.get("policy"), raw.get("default")
    if not is_policy_name(policy):
        problems.append(f"policy: must name a policy file (lowercase letters, digits, '-' or "
                        f"'_'), got {show(policy)}")
    if default is not None and not is_policy_name(default):
        problems.append(f"default: must name a policy file or be null, got {show(default)}")
    set_at, set_by = raw.get("set_at"), raw.get("set_by")
    if set_at is not None and (isinstance(set_at, bool) or not isinstance(set_at, (int, float))):
        problems.append(f"set_at: must be a Unix time or null, got {show(set_at)}")
    if set_by is not None and not isinstance(set_by, str):
        problems.append(f"set_by: must be text or null, got {show(set_by)}")
    if problems:
        raise ConfigError(source, problems)
    return ActiveChoice(policy=str(policy), default=default,
                        set_at=None if set_at is None else float(set_at),
                        set_by=None if set_by is None else str(set_by)[:200])


class ActivePolicyFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def raw(self) -> bytes | None:
        """The file's bytes as they are now (None when there is no file). Cheap enough to ask
        every second: the loop compares them with what it last acted on."""
        try:
            with self.path.open("rb") as handle:
                return handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return _UNREADABLE + str(exc.strerror).encode()

    def parse(self, data: bytes | None) -> ActiveChoice | None:
        """`raw()`'s bytes -> the choice (None: no file), or ConfigError saying what is wrong."""
        if data is None:
            return None
        if data.startswith(_UNREADABLE):
            reason = data.removeprefix(_UNREADABLE).decode(errors="replace")
            raise ConfigError(self.path, [f"cannot read file: {reason}"])
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(self.path, [f"file: larger than {MAX_FILE_BYTES} bytes; it holds "
                                          "one policy name"])
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(self.path, ["file: not UTF-8 text"]) from exc
        return parse_choice(text, self.path)

    def read(self) -> ActiveChoice | None:
        return self.parse(self.raw())

    def write(self, choice: ActiveChoice) -> None:
        """Replace the file atomically; OSError (read-only, full, missing directory) if not."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                handle.write(json.dumps(choice.as_dict()) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class Start:
    """The policy a starting replica serves, its file, and a problem to show in /policy."""

    policy: Policy
    file: Path
    problem: str | None = None


def starting_policy(active: ActivePolicyFile | None, policy_dir: str | Path, configured: str,
                    set_by: str, clock: Callable[[], float] = time.time) -> Start:
    """The active file's policy when it holds one made over this configuration, else the
    configured one. Raises PolicyError only when the configured policy is needed and broken."""
    configured_file = policy_path(policy_dir, configured)
    if active is None:
        return Start(load_policy(configured_file), configured_file)
    try:
        choice = active.read()
    except ConfigError as exc:
        log.error("active policy file refused, starting on the configured policy %s: %s",
                  configured, exc)
        return Start(load_policy(configured_file), configured_file,
                     f"{exc} (started on the configured policy {configured})")
    if choice is None:
        return Start(load_policy(configured_file), configured_file)
    if choice.default is not None and choice.default != configured:
        policy = load_policy(configured_file)
        log.warning("%s names %s, chosen over the configured policy %s; the configured policy "
                    "is %s now: starting on it and recording it there", active.path,
                    choice.policy, choice.default, configured)
        try:
            active.write(ActiveChoice(configured, configured, clock(), set_by))
        except OSError as exc:
            log.error("cannot write %s (%s): other replicas keep serving %s", active.path,
                      exc.strerror, choice.policy)
            return Start(policy, configured_file,
                         f"{active.path}: cannot write file: {exc.strerror}")
        return Start(policy, configured_file)
    chosen_file = policy_path(policy_dir, choice.policy)
    try:
        return Start(load_policy(chosen_file), chosen_file)
    except PolicyError as exc:
        log.error("%s names %s, which is refused; starting on the configured policy %s: %s",
                  active.path, choice.policy, configured, exc)
        return Start(load_policy(configured_file), configured_file,
                     f"{exc} (named by {active.path}; started on the configured policy "
                     f"{configured})")
