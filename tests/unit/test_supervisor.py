"""The supervisor's decisions with fake processes and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gridlb.supervisor import RestartPolicy, State, Supervisor, describe_exit

ORDER = ["prometheus", "sub-a", "sub-b", "balancer", "ingress"]


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class FakeLauncher:
    def __init__(self) -> None:
        self.pids: Iterator[int] = iter(range(100, 10_000))
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.ready = True
        self.processes: dict[str, FakeProcess] = {}

    def start(self, name: str) -> FakeProcess:
        self.started.append(name)
        self.processes[name] = FakeProcess(next(self.pids))
        return self.processes[name]

    def is_ready(self, name: str) -> bool:
        return self.ready

    def stop(self, name: str) -> None:
        self.stopped.append(name)
        process = self.processes.get(name)
        if process is not None and process.code is None:
            process.code = -15

    def log_tail(self, name: str, lines: int = 15) -> str:
        return f"last lines of {name}"


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def said() -> list[str]:
    return []


@pytest.fixture
def supervisor(launcher: FakeLauncher, said: list[str]) -> Supervisor:
    sup = Supervisor(launcher, ORDER, RestartPolicy(), say=said.append, ready_timeout_s=30.0)
    for name in ORDER:
        sup.adopt(name, launcher.start(name), 0.0)
    launcher.started.clear()
    return sup


def state_of(supervisor: Supervisor, name: str) -> State:
    return supervisor.services[name].state


def crash(launcher: FakeLauncher, name: str, code: int = -9) -> None:
    launcher.processes[name].code = code


def test_a_killed_service_is_restarted_after_the_backoff_and_the_others_are_untouched(
        supervisor: Supervisor, launcher: FakeLauncher, said: list[str]) -> None:
    others = {n: launcher.processes[n] for n in ORDER if n != "sub-a"}
    crash(launcher, "sub-a")
    supervisor.check(10.0)
    assert said[-1] == ("make up: sub-a (pid 101) was killed by SIGKILL; restarting it in 0.5 s "
                        "(1 of 5 exits allowed within 60 s)")
    supervisor.check(10.4)
    assert launcher.started == []
    supervisor.check(10.5)
    assert launcher.started == ["sub-a"]
    assert state_of(supervisor, "sub-a") is State.STARTING
    supervisor.check(11.0)
    assert said[-1] == "make up: sub-a is back (pid 105, 0.5 s after its restart)"
    assert state_of(supervisor, "sub-a") is State.RUNNING
    assert all(launcher.processes[n] is p and p.code is None for n, p in others.items())


def test_backoff_doubles_and_a_crash_loop_gives_up_on_that_service_alone(
        supervisor: Supervisor, launcher: FakeLauncher, said: list[str]) -> None:
    now, waits = 0.0, []
    for _ in range(4):
        crash(launcher, "sub-b", code=1)
        supervisor.check(now)
        waits.append(supervisor.services["sub-b"].restart_at - now)
        now = supervisor.services["sub-b"].restart_at
        supervisor.check(now)        # restarted
        now += 0.1
        supervisor.check(now)        # back
    assert waits == [0.5, 1.0, 2.0, 4.0]
    crash(launcher, "sub-b", code=1)
    supervisor.check(now)
    assert supervisor.services["sub-b"].state is State.GAVE_UP
    assert "it exited 5 times within 60 s: giving up on it (the other services keep running)" \
        in said[-1]
    assert "last lines of sub-b" in said[-1]         # a failing exit shows its log
    started = len(launcher.started)
    supervisor.check(now + 120.0)
    assert len(launcher.started) == started         # no more restarts
    assert supervisor.gave_up() == ["sub-b"]
    assert all(launcher.processes[n].code is None for n in ORDER if n != "sub-b")


def test_exits_far_apart_never_count_as_a_crash_loop(supervisor: Supervisor,
                                                     launcher: FakeLauncher) -> None:
    now = 0.0
    for _ in range(8):
        crash(launcher, "balancer")
        supervisor.check(now)
        assert supervisor.services["balancer"].state is State.WAITING
        assert supervisor.services["balancer"].restart_at == now + 0.5
        supervisor.check(now + 0.5)
        supervisor.check(now + 1.0)
        now += 70.0
    assert supervisor.gave_up() == []


def test_a_restart_that_never_gets_ready_is_stopped_and_counted(
        supervisor: Supervisor, launcher: FakeLauncher, said: list[str]) -> None:
    launcher.ready = False
    crash(launcher, "ingress")
    supervisor.check(0.0)
    supervisor.check(0.5)
    supervisor.check(31.0)
    assert "ingress did not become ready within 30 s; stopping it to try again" in said[-2]
    assert launcher.stopped == ["ingress"]
    assert supervisor.services["ingress"].state is State.WAITING
    assert len(supervisor.services["ingress"].exits) == 2


def test_stop_all_goes_front_to_back(supervisor: Supervisor, launcher: FakeLauncher,
                                     said: list[str]) -> None:
    crash(launcher, "sub-a")
    supervisor.check(0.0)             # sub-a waits to restart: not announced, still stopped
    said.clear()
    supervisor.stop_all()
    assert launcher.stopped == list(reversed(ORDER))
    assert [line.split()[3] for line in said] == ["ingress", "balancer", "sub-b", "prometheus"]


@pytest.mark.parametrize(("code", "text"), [(-9, "was killed by SIGKILL"),
                                             (-15, "was killed by SIGTERM"),
                                             (3, "exited with code 3"),
                                             (-200, "was killed by signal 200")])
def test_exits_are_described(code: int, text: str) -> None:
    assert describe_exit(code) == text
