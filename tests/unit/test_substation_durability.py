"""Durable before visible, the final tick's save, a capacity lowered by a restart, the history.

The disk is real (SQLite in a temporary directory); a test blocks or fails its commits by
wrapping `GroupCommitDB._commit`, the one place every write group reaches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gridlb.durable import GroupCommitDB
from substation.__main__ import parse_args
from substation.app import create_app
from substation.charging import CHARGING, OverCapacity, SessionTable
from substation.config import SubstationConfig
from substation.state import TABLE
from substation.store import SCHEMA_VERSION, SessionStore

CHARGE = {"session_id": "s-1", "vehicle_id": "ev-1", "requested_kw": 7.0, "energy_kwh": 20.0}


@dataclass
class Disk:
    """Commits wait while `gate` is clear; each of `failures` fails one commit group."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    failures: list[Exception] = field(default_factory=list)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    disk = Disk()
    disk.gate.set()
    original = GroupCommitDB._commit

    def commit(self: GroupCommitDB, group: list[Any]) -> list[Any]:
        disk.entered.set()
        if not disk.gate.wait(10):
            raise TimeoutError("the test never opened the disk")
        if disk.failures:
            raise disk.failures.pop(0)
        return original(self, group)
    monkeypatch.setattr(GroupCommitDB, "_commit", commit)
    return disk


def config(tmp_path: Path, **overrides: Any) -> SubstationConfig:
    # Ticks far apart: no periodic save shares the disk with the requests under test.
    return SubstationConfig(**{"substation_id": "s1", "capacity_kw": 10.0,
                               "speed_factor": 60.0, "tick_interval_s": 60.0,
                               "state_path": str(tmp_path / "state.sqlite3"), **overrides})


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def samples(text: str) -> dict[str, float]:
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples}


async def test_nothing_shows_a_session_before_its_save_commits(aiohttp_client: Any,
                                                               tmp_path: Path, disk: Disk
                                                               ) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config(tmp_path)))
    disk.gate.clear()
    charge = asyncio.create_task(client.post("/charge", json=CHARGE))
    await until(disk.entered.is_set, "the admission's commit to start")
    # A repeat of the charge, a fence of a newer dispatch and a read of the session, all while
    # its save is still on its way to the disk: none may confirm it yet.
    repeat = asyncio.create_task(client.post("/charge", json=CHARGE))
    fence = asyncio.create_task(client.post("/sessions/s-1/fence", json={"epoch": 2}))
    read = asyncio.create_task(client.get("/sessions/s-1"))
    # The views of the whole substation answer at once, without it.
    status = await (await client.get("/status")).json()
    assert (status["active_sessions"], status["load_kw"]) == (0, 0.0)
    assert (await (await client.get("/sessions")).json())["sessions"] == []
    exported = samples(await (await client.get("/metrics")).text())
    assert exported["substation_load"] == 0.0
    assert exported["substation_active_sessions"] == 0.0
    assert exported["substation_sessions_saving"] == 1.0
    done, _ = await asyncio.wait([charge, repeat, fence, read], timeout=0.3)
    assert not done, "something confirmed the session before it was on disk"
    disk.gate.set()
    first, again, fenced, got = await asyncio.gather(charge, repeat, fence, read)
    assert first.status == 200 and "X-Duplicate" not in first.headers
    assert again.status == 200 and again.headers["X-Duplicate"] == "true"
    assert (await fenced.json())["state"] == CHARGING
    assert got.status == 200 and (await got.json())["state"] == CHARGING
    status = await (await client.get("/status")).json()
    assert (status["active_sessions"], status["load_kw"]) == (1, 7.0)
    # On disk: a substation started on the same file has it.
    await client.close()
    again_client: TestClient[Any, Any] = await aiohttp_client(create_app(config(tmp_path)))
    assert (await (await again_client.get("/sessions/s-1")).json())["state"] == CHARGING


async def test_a_stop_of_a_session_being_saved_waits_and_stops_it(aiohttp_client: Any,
                                                                  tmp_path: Path, disk: Disk
                                                                  ) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config(tmp_path)))
    disk.gate.clear()
    charge = asyncio.create_task(client.post("/charge", json=CHARGE))
    await until(disk.entered.is_set, "the admission's commit to start")
    stop = asyncio.create_task(client.delete("/sessions/s-1"))
    done, _ = await asyncio.wait([stop], timeout=0.3)
    assert not done, "a stop answered before the session it stops was on disk"
    disk.gate.set()
    assert (await charge).status == 200
    stopped = await stop
    assert stopped.status == 200 and (await stopped.json())["state"] == "stopped"


async def test_a_failed_save_withdraws_the_admission_and_answers_503(aiohttp_client: Any,
                                                                    tmp_path: Path,
                                                                    disk: Disk) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config(tmp_path)))
    disk.failures.append(sqlite3.OperationalError("disk I/O error"))
    resp = await client.post("/charge", json=CHARGE)
    body = await resp.json()
    # A 5xx, so the balancer fences the session here and finds it absent.
    assert resp.status == 503 and body["error"] == "session_not_saved"
    assert "disk I/O error" in body["detail"] and "it was not started" in body["detail"]
    assert (await client.get("/sessions/s-1")).status == 404
    status = await (await client.get("/status")).json()
    assert (status["active_sessions"], status["load_kw"]) == (0, 0.0)
    fenced = await (await client.post("/sessions/s-1/fence", json={"epoch": 2})).json()
    assert fenced["state"] == "absent"
    text = await (await client.get("/metrics")).text()
    assert 'substation_charge_requests_total{outcome="not_saved",substation="s1"} 1.0' in text
    # Its capacity was given back: a 10 kW session fits the 10 kW substation.
    resp = await client.post("/charge", json={**CHARGE, "session_id": "s-2",
                                             "requested_kw": 10.0})
    assert resp.status == 200


async def test_the_final_tick_completions_are_saved_at_shutdown(aiohttp_client: Any,
                                                               tmp_path: Path) -> None:
    # 10 kW for 0.001 kWh at 3600x: done after 0.36 ms, but no tick comes for a minute, so the
    # shutdown's own tick is the one that completes it.
    cfg = config(tmp_path, capacity_kw=100.0, speed_factor=3600.0)
    first: TestClient[Any, Any] = await aiohttp_client(create_app(cfg))
    short = {**CHARGE, "requested_kw": 10.0, "energy_kwh": 0.001}
    assert (await first.post("/charge", json=short)).status == 200
    await asyncio.sleep(0.01)
    await first.close()
    again: TestClient[Any, Any] = await aiohttp_client(create_app(cfg))
    body = await (await again.get("/sessions/s-1")).json()
    assert (body["state"], body["delivered_kwh"]) == ("completed", 0.001)
    status = await (await again.get("/status")).json()
    assert (status["active_sessions"], status["load_kw"]) == (0, 0.0)


async def test_a_substation_restarted_with_less_capacity_keeps_its_sessions_and_says_so(
        aiohttp_client: Any, tmp_path: Path) -> None:
    first: TestClient[Any, Any] = await aiohttp_client(
        create_app(config(tmp_path, capacity_kw=100.0)))
    for session_id in ("a", "b"):
        resp = await first.post("/charge", json={**CHARGE, "session_id": session_id,
                                                 "requested_kw": 40.0})
        assert resp.status == 200
    await first.close()
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(config(tmp_path, capacity_kw=50.0)))
    status = await (await client.get("/status")).json()
    assert (status["load_kw"], status["capacity_kw"], status["active_sessions"],
            status["over_capacity"]) == (80.0, 50.0, 2, True)
    assert samples(await (await client.get("/metrics")).text())["substation_over_capacity"] == 1
    # It keeps both, but never draws above its capacity: the oldest admission keeps its 40 kW,
    # the other waits at 0 kW (fixed-power sessions too, as with floors).
    assert status["granted_kw"] == 40.0
    granted = {sid: (await (await client.get(f"/sessions/{sid}")).json())["granted_kw"]
               for sid in ("a", "b")}
    assert granted == {"a": 40.0, "b": 0.0}
    # Nothing new, not even the smallest session, until the load is under the capacity.
    resp = await client.post("/charge", json={**CHARGE, "session_id": "c", "requested_kw": 1.4})
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "over_capacity"
    assert "load 80 kW of 50 kW capacity" in body["detail"]
    assert "takes no new session until its load is under it" in body["detail"]
    assert (await client.delete("/sessions/a")).status == 200
    status = await (await client.get("/status")).json()
    assert (status["load_kw"], status["over_capacity"]) == (40.0, False)
    client.app[TABLE].advance(time.time())      # at the next tick b gets its power
    assert (await (await client.get("/sessions/b")).json())["granted_kw"] == 40.0
    assert samples(await (await client.get("/metrics")).text())["substation_over_capacity"] == 0
    resp = await client.post("/charge", json={**CHARGE, "session_id": "c", "requested_kw": 10.0})
    assert resp.status == 200


def history(tmp_path: Path, columns: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite3")) as db:
        return db.execute(f"SELECT {columns} FROM history ORDER BY seq").fetchall()


async def test_the_history_records_each_event_with_its_session_in_one_transaction(
        aiohttp_client: Any, tmp_path: Path, disk: Disk) -> None:
    cfg = config(tmp_path, capacity_kw=100.0, speed_factor=3600.0, history=True)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(cfg))
    short = {**CHARGE, "session_id": "short", "requested_kw": 10.0, "energy_kwh": 0.001,
             "epoch": 3}
    assert (await client.post("/charge", json=short)).status == 200
    assert (await client.post("/charge", json={**CHARGE, "session_id": "long"})).status == 200
    assert (await client.post("/charge", json={**CHARGE, "session_id": "long"})).status == 200
    assert (await client.delete("/sessions/long")).status == 200
    assert (await client.post("/sessions/other/fence", json={"epoch": 2})).status == 200
    disk.failures.append(sqlite3.OperationalError("disk I/O error"))
    lost = {**CHARGE, "session_id": "lost"}
    assert (await client.post("/charge", json=lost)).status == 503
    await asyncio.sleep(0.01)
    await client.close()    # the last tick completes "short"
    rows = history(tmp_path, "substation, event, session_id, vehicle_id, power_kw, "
                             "energy_kwh, epoch, capacity_kw")
    # A repeat, a fence and an admission whose save failed leave nothing; what a crash
    # could take back never appears.
    assert rows == [("s1", "start", None, None, None, None, None, 100.0),
                    ("s1", "admit", "short", "ev-1", 10.0, 0.001, 3, None),
                    ("s1", "admit", "long", "ev-1", 7.0, 20.0, 1, None),
                    ("s1", "stop", "long", "ev-1", 7.0, 20.0, 1, None),
                    ("s1", "complete", "short", "ev-1", 10.0, 0.001, 3, None)]
    delivered = dict(history(tmp_path, "event || ':' || session_id, delivered_kwh")[1:])
    assert delivered["admit:short"] == 0.0 and delivered["complete:short"] == 0.001
    assert 0 < delivered["stop:long"] < 20.0
    times = [at for at, in history(tmp_path, "at")]
    assert times == sorted(times)


async def test_the_history_records_each_admissions_floor(aiohttp_client: Any,
                                                         tmp_path: Path) -> None:
    """The nemesis checks committed floors against the capacity (adaptive power): an admission
    with a floor records it; one without records NULL (its floor is its power)."""
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(config(tmp_path, capacity_kw=100.0, history=True)))
    flexible = {**CHARGE, "session_id": "flex", "requested_kw": 11.0, "min_kw": 3.7}
    assert (await client.post("/charge", json=flexible)).status == 200
    assert (await client.post("/charge", json={**CHARGE, "session_id": "fixed"})).status == 200
    await client.close()
    assert history(tmp_path, "event, session_id, power_kw, min_kw")[1:] == [
        ("admit", "flex", 11.0, 3.7), ("admit", "fixed", 7.0, None)]


def test_a_history_of_an_older_version_gains_the_floor_column_and_keeps_its_rows(
        tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT "
                   "NULL, substation TEXT NOT NULL, event TEXT NOT NULL, session_id TEXT, "
                   "vehicle_id TEXT, power_kw REAL, energy_kwh REAL, delivered_kwh REAL, epoch "
                   "INTEGER, capacity_kw REAL)")
        db.execute("INSERT INTO history (at, substation, event, capacity_kw) "
                   "VALUES (1.0, 's1', 'start', 50.0)")
    store = SessionStore(path, history_of="s1")
    store.record_start(60.0, 2.0)
    asyncio.run(store.aclose())
    assert history(tmp_path, "event, capacity_kw, min_kw") == [
        ("start", 50.0, None), ("start", 60.0, None)]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


async def test_without_the_history_flag_no_history_is_kept(aiohttp_client: Any,
                                                          tmp_path: Path) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config(tmp_path)))
    assert (await client.post("/charge", json=CHARGE)).status == 200
    await client.close()
    assert history(tmp_path, "event") == []


def test_a_reserved_session_takes_capacity_but_shows_nowhere_until_confirmed() -> None:
    table = SessionTable(capacity_kw=10.0)
    table.reserve("a", "ev", 7.0, 20.0, now=1.0, epoch=4)
    assert table.get("a") is None and table.load_kw == 0.0 and not table.active
    assert table.forecast_kw(1.0, [1.0]) == [0.0]
    # Its power is taken: nothing admitted meanwhile can exceed the capacity.
    with pytest.raises(OverCapacity, match=r"load 0 kW \(\+7 kW being saved\) of 10 kW"):
        table.reserve("b", "ev", 7.0, 20.0, now=1.0)
    with pytest.raises(RuntimeError, match="being saved: wait for its save first"):
        table.fence("a", 2, now=1.0)
    with pytest.raises(RuntimeError, match="being saved: wait for its save first"):
        table.reserve("a", "ev", 7.0, 20.0, now=1.0)
    seq = table.load_seq
    session = table.confirm("a")
    assert table.get("a") is session and session.epoch == 4 and session.started_at == 1.0
    assert (table.load_kw, table.saving_kw, table.load_seq) == (7.0, 0.0, seq + 1)
    # It charges from its admission, as the forecast and `ends_at` say.
    assert session.credited_at == 1.0 and table.ends_at(session) == 1.0 + 20.0 / 7.0 * 60.0


def test_a_withdrawn_reservation_gives_its_capacity_back_and_keeps_the_fence() -> None:
    table = SessionTable(capacity_kw=10.0)
    table.fence("a", 2, now=0.0)
    table.reserve("a", "ev", 7.0, 20.0, now=1.0, epoch=2)
    table.withdraw("a")
    assert table.get("a") is None and table.saving_kw == 0.0 and not table.saving
    assert table.fences["a"][0] == 2          # still refuses copies older than epoch 2
    table.reserve("b", "ev", 10.0, 20.0, now=1.0)   # the whole capacity is free again


def test_over_capacity_only_when_the_load_exceeds_it() -> None:
    table = SessionTable(capacity_kw=10.0)
    table.admit("a", "ev", 10.0, 20.0, now=0.0)
    assert not table.over_capacity
    table.capacity_kw = 9.0
    assert table.over_capacity


def test_the_command_line_sets_the_tick_the_retention_the_history_and_the_slow_disk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRID_INTERNAL_TOKEN", "t0k")
    config = parse_args(["--id", "s1", "--capacity-kw", "50", "--tick-interval", "30",
                         "--ended-retention", "8", "--history", "--fault-file", "/tmp/f"])
    assert (config.tick_interval_s, config.retention_s, config.history, config.fault_file) == \
        (30.0, 8.0, True, "/tmp/f")
    default = parse_args(["--id", "s1", "--capacity-kw", "50"])
    assert (default.tick_interval_s, default.retention_s, default.history,
            default.fault_file) == (0.2, 600.0, False, None)
    for bad in (["--tick-interval", "0"], ["--ended-retention", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(["--id", "s1", "--capacity-kw", "50", *bad])
