"""Supervising the local stack the way Compose's `restart: always` does.

A service that exits is restarted after a backoff that doubles per recent exit (0.5 s, 1 s,
2 s, ... up to 10 s) while the others keep running; each exit and each return is printed. A
crash loop (5 exits within 60 s) gives up on that service alone and says so. Stopping goes
front to back (the ingress first), so nothing is left serving a request whose back end is gone.

The decisions are plain functions of time (`check(now)`); processes are reached through the
small `Launcher` protocol, so tests drive the same code with fakes and a fake clock.
"""

from __future__ import annotations

import enum
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Process(Protocol):
    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


class Launcher(Protocol):
    def start(self, name: str) -> Process: ...

    def is_ready(self, name: str) -> bool: ...

    def stop(self, name: str) -> None: ...

    def log_tail(self, name: str, lines: int = 15) -> str: ...


@dataclass(frozen=True)
class RestartPolicy:
    base_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    crash_loop_exits: int = 5
    crash_loop_window_s: float = 60.0

    def backoff_s(self, recent_exits: int) -> float:
        """The wait before restarting after the `recent_exits`-th exit within the window."""
        return min(self.base_backoff_s * 2.0 ** max(recent_exits - 1, 0), self.max_backoff_s)


class State(enum.Enum):
    RUNNING = "running"
    WAITING = "waiting to restart"
    STARTING = "starting"
    GAVE_UP = "gave up"


@dataclass
class Service:
    name: str
    process: Process
    state: State = State.RUNNING
    exits: deque[float] = field(default_factory=deque)   # when it exited, within the window
    restart_at: float = 0.0
    started_at: float = 0.0
    restarts: int = 0


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, launcher: Launcher, order: Sequence[str],
                 policy: RestartPolicy | None = None,
                 say: Callable[[str], None] = print, ready_timeout_s: float = 30.0) -> None:
        self.launcher = launcher
        self.order = list(order)        # start order; stopping goes the other way
        self.policy = policy or RestartPolicy()
        self.say = say
        self.ready_timeout_s = ready_timeout_s
        self.services: dict[str, Service] = {}

    def adopt(self, name: str, process: Process, now: float) -> None:
        """A service started (and found ready) by the caller; supervise it from now on."""
        self.services[name] = Service(name, process, started_at=now)

    def check(self, now: float) -> None:
        """One supervision pass: notice exits, restart what is due, notice returns."""
        for service in self.services.values():
            if service.state is State.GAVE_UP:
                continue
            if service.state is State.WAITING:
                if now >= service.restart_at:
                    self._restart(service, now)
                continue
            code = service.process.poll()
            if code is not None:
                self._exited(service, code, now)
            elif service.state is State.STARTING:
                self._check_started(service, now)

    def _exited(self, service: Service, code: int, now: float) -> None:
        policy = self.policy
        service.exits.append(now)
        while service.exits and service.exits[0] < now - policy.crash_loop_window_s:
            service.exits.popleft()
        what = f"make up: {service.name} (pid {service.process.pid}) {describe_exit(code)}"
        tail = self.launcher.log_tail(service.name, 5) if code > 0 else ""
        if len(service.exits) >= policy.crash_loop_exits:
            service.state = State.GAVE_UP
            self.say(f"{what}; it exited {len(service.exits)} times within "
                     f"{policy.crash_loop_window_s:g} s: giving up on it (the other services "
                     f"keep running). See .run/logs/{service.name}.log"
                     + (f"\n{tail}" if tail else ""))
            return
        wait = policy.backoff_s(len(service.exits))
        service.state = State.WAITING
        service.restart_at = now + wait
        self.say(f"{what}; restarting it in {wait:g} s ({len(service.exits)} of "
                 f"{policy.crash_loop_exits} exits allowed within "
                 f"{policy.crash_loop_window_s:g} s)" + (f"\n{tail}" if tail else ""))

    def _restart(self, service: Service, now: float) -> None:
        try:
            service.process = self.launcher.start(service.name)
        except OSError as exc:   # e.g. the executable vanished: count it as an exit
            self.say(f"make up: {service.name} could not be started: {exc}")
            self._exited(service, 1, now)
            return
        service.state = State.STARTING
        service.started_at = now
        service.restarts += 1

    def _check_started(self, service: Service, now: float) -> None:
        if self.launcher.is_ready(service.name):
            service.state = State.RUNNING
            self.say(f"make up: {service.name} is back (pid {service.process.pid}, "
                     f"{now - service.started_at:.1f} s after its restart)")
        elif now - service.started_at > self.ready_timeout_s:
            self.say(f"make up: {service.name} did not become ready within "
                     f"{self.ready_timeout_s:g} s; stopping it to try again")
            self.launcher.stop(service.name)
            self._exited(service, 1, now)

    def stop_all(self) -> None:
        """Front to back: the ingress stops taking requests before what serves them goes."""
        for name in reversed(self.order):
            service = self.services.get(name)
            if service is None:
                continue
            if service.process.poll() is None:
                self.say(f"make up: stopping {name} (pid {service.process.pid})")
            self.launcher.stop(name)

    def gave_up(self) -> list[str]:
        return [s.name for s in self.services.values() if s.state is State.GAVE_UP]
