from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from substation.app import create_app, tick
from substation.config import SubstationConfig
from substation.state import TABLE

CHARGE = {"session_id": "s-1", "vehicle_id": "ev-1", "requested_kw": 7.0, "energy_kwh": 20.0}


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    app = create_app(SubstationConfig("s1", capacity_kw=10.0, speed_factor=60.0))
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def test_charge_then_read_then_stop(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/charge", json=CHARGE)
    body = await resp.json()
    assert resp.status == 200
    assert (body["state"], body["substation"], body["load_kw"], body["capacity_kw"]) == \
        ("charging", "s1", 7.0, 10.0)
    body = await (await client.get("/sessions/s-1")).json()
    assert body["state"] == "charging" and body["power_kw"] == 7.0
    body = await (await client.delete("/sessions/s-1")).json()
    assert body["state"] == "stopped" and body["load_kw"] == 0.0


async def test_over_capacity_is_refused_with_the_current_load(client: TestClient[Any, Any]
                                                              ) -> None:
    await client.post("/charge", json=CHARGE)
    resp = await client.post("/charge", json={**CHARGE, "session_id": "s-2"})
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "over_capacity"
    assert body["load_kw"] == 7.0 and "7 kW does not fit" in body["detail"]


async def test_a_retry_is_not_a_second_booking(client: TestClient[Any, Any]) -> None:
    await client.post("/charge", json=CHARGE)
    resp = await client.post("/charge", json=CHARGE)
    assert resp.status == 200 and resp.headers["X-Duplicate"] == "true"
    status = await (await client.get("/status")).json()
    assert status["load_kw"] == 7.0 and status["active_sessions"] == 1


async def test_a_repeat_of_a_stopped_session_says_stopped(client: TestClient[Any, Any]
                                                          ) -> None:
    await client.post("/charge", json=CHARGE)
    await client.delete("/sessions/s-1")
    resp = await client.post("/charge", json=CHARGE)
    body = await resp.json()
    assert resp.status == 200 and resp.headers["X-Duplicate"] == "true"
    assert body["state"] == "stopped" and body["load_kw"] == 0.0


async def test_answers_carry_a_rising_load_sequence(client: TestClient[Any, Any]) -> None:
    first = await (await client.post("/charge", json=CHARGE)).json()
    refused = await (await client.post("/charge", json={**CHARGE, "session_id": "s-2"})).json()
    stopped = await (await client.delete("/sessions/s-1")).json()
    assert first["load_seq"] == refused["load_seq"] < stopped["load_seq"]
    assert (first["load_kw"], refused["load_kw"], stopped["load_kw"]) == (7.0, 7.0, 0.0)


async def test_a_fence_answers_absent_then_refuses_older_copies(client: TestClient[Any, Any]
                                                                 ) -> None:
    resp = await client.post("/sessions/s-1/fence", json={"epoch": 2})
    body = await resp.json()
    assert resp.status == 200 and (body["state"], body["fenced_below"]) == ("absent", 2)
    resp = await client.post("/charge", json={**CHARGE, "epoch": 1})
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "session_fenced"
    assert "epoch 1 is older than the fence at epoch 2" in body["detail"]
    resp = await client.post("/charge", json={**CHARGE, "epoch": 2})
    assert resp.status == 200
    body = await (await client.post("/sessions/s-1/fence", json={"epoch": 7})).json()
    assert body["state"] == "charging"
    resp = await client.post("/sessions/s-1/fence", json={"epoch": "2"})
    assert resp.status == 422 and (await resp.json())["error"] == "invalid_request"


async def test_the_session_cap_refuses_with_its_own_code(aiohttp_client: Any) -> None:
    app = create_app(SubstationConfig("s1", capacity_kw=100.0, max_sessions=1))
    client = await aiohttp_client(app)
    assert (await client.post("/charge", json=CHARGE)).status == 200
    resp = await client.post("/charge", json={**CHARGE, "session_id": "s-2"})
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "too_many_sessions"
    assert body["load_kw"] == 7.0


async def test_the_internal_session_list_shows_every_session(client: TestClient[Any, Any]
                                                            ) -> None:
    await client.post("/charge", json=CHARGE)
    await client.post("/charge", json={**CHARGE, "session_id": "s-2", "requested_kw": 2.0})
    await client.delete("/sessions/s-2")
    body = await (await client.get("/sessions")).json()
    assert {s["session_id"]: s["state"] for s in body["sessions"]} == \
        {"s-1": "charging", "s-2": "stopped"}
    body = await (await client.get("/sessions?state=charging")).json()
    assert [s["session_id"] for s in body["sessions"]] == ["s-1"]


@pytest.mark.parametrize(("payload", "status", "error", "detail"), [
    ({**CHARGE, "requested_kw": 0}, 422, "invalid_request", "requested_kw: must be above 0"),
    ({**CHARGE, "requested_kw": 1.0}, 422, "invalid_request", "must be at least 1.4 kW"),
    ({**CHARGE, "energy_kwh": "lots"}, 422, "invalid_request", "energy_kwh"),
    ({**CHARGE, "requested_kw": 1e9}, 422, "invalid_request", "at most 1000 kW"),
    ({**CHARGE, "session_id": "a\nb"}, 422, "invalid_request", "session_id: must be visible"),
    ({**CHARGE, "epoch": 0}, 422, "invalid_request", "epoch: must be an integer"),
    ({**CHARGE, "colour": "red"}, 422, "invalid_request", "colour: unknown field"),
    ({k: v for k, v in CHARGE.items() if k != "vehicle_id"}, 422, "invalid_request",
     "vehicle_id"),
    ([CHARGE], 400, "invalid_body", "must be a JSON object"),
])
async def test_bad_input_gets_a_json_4xx(client: TestClient[Any, Any], payload: Any,
                                         status: int, error: str, detail: str) -> None:
    resp = await client.post("/charge", json=payload)
    body = await resp.json()
    assert resp.status == status and body["error"] == error and detail in body["detail"]


async def test_nan_and_malformed_json_are_refused(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/charge", data=b'{"requested_kw": NaN}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"] == "malformed_json"


async def test_unknown_session_is_404(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/sessions/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "unknown_session"
    resp = await client.delete("/sessions/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "unknown_session"


async def test_metrics_carry_the_seed_gauge_name_and_the_substation_label(
        client: TestClient[Any, Any]) -> None:
    await client.post("/charge", json=CHARGE)
    await client.post("/charge", json={**CHARGE, "session_id": "s-2"})
    assert client.app is not None
    tick(client.app, 10**10)   # far in the future: the session completes
    text = await (await client.get("/metrics")).text()
    assert 'substation_load{substation="s1"} 0.0' in text
    exported = {sample.name: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples}
    # Exact as a float: the balancer compares it with the numbers in the answers.
    assert exported["substation_load_seq"] == client.app[TABLE].load_seq
    assert 'substation_capacity_kw{substation="s1"} 10.0' in text
    assert 'substation_charge_requests_total{outcome="over_capacity",substation="s1"} 1.0' in text
    assert 'substation_energy_delivered_kwh_total{substation="s1"} 20.0' in text
    assert 'substation_sessions_ended_total{reason="completed",substation="s1"} 1.0' in text


async def test_internal_token_guards_everything_but_metrics_and_health(aiohttp_client: Any
                                                                       ) -> None:
    app = create_app(SubstationConfig("s1", capacity_kw=10.0, internal_token="t0k"))
    client = await aiohttp_client(app)
    resp = await client.post("/charge", json=CHARGE)
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/healthz")).status == 200
    resp = await client.post("/charge", json=CHARGE, headers={"Authorization": "Bearer t0k"})
    assert resp.status == 200


async def test_a_restarted_substation_resumes_its_sessions_and_fences(aiohttp_client: Any,
                                                                     tmp_path: Path) -> None:
    config = SubstationConfig("s1", capacity_kw=10.0, speed_factor=60.0,
                              state_path=str(tmp_path / "state.sqlite3"))
    first = await aiohttp_client(create_app(config))
    assert (await first.post("/charge", json=CHARGE)).status == 200
    assert (await first.post("/sessions/late/fence", json={"epoch": 3})).status == 200
    await first.close()
    again = await aiohttp_client(create_app(config))
    body = await (await again.get("/sessions/s-1")).json()
    assert body["state"] == "charging" and body["power_kw"] == 7.0
    status = await (await again.get("/status")).json()
    assert status["load_kw"] == 7.0 and status["active_sessions"] == 1
    # Its capacity is taken: a second 7 kW session does not fit on 10 kW.
    resp = await again.post("/charge", json={**CHARGE, "session_id": "s-2"})
    assert resp.status == 409 and (await resp.json())["error"] == "over_capacity"
    resp = await again.post("/charge", json={**CHARGE, "session_id": "late", "epoch": 2,
                                             "requested_kw": 2.0})
    assert resp.status == 409 and (await resp.json())["error"] == "session_fenced"


async def test_the_same_session_id_with_other_values_is_a_conflict(client: TestClient[Any, Any]
                                                                  ) -> None:
    await client.post("/charge", json=CHARGE)
    resp = await client.post("/charge", json={**CHARGE, "requested_kw": 2.0})
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "session_conflict"
    assert "exists with other values" in body["detail"]


async def test_every_answer_and_error_echoes_the_request_id(aiohttp_client: Any) -> None:
    app = create_app(SubstationConfig("s1", capacity_kw=10.0, internal_token="t0k"))
    client = await aiohttp_client(app)
    auth = {"Authorization": "Bearer t0k"}
    calls = [("POST", "/charge", auth, CHARGE, 200),
             ("POST", "/charge", auth, {**CHARGE, "session_id": "s-2"}, 409),
             ("POST", "/sessions/s-9/fence", auth, {"epoch": 2}, 200),
             ("POST", "/charge", auth, {"vehicle_id": "x"}, 422),
             ("POST", "/charge", {}, CHARGE, 401),
             ("GET", "/sessions/none", auth, None, 404),
             ("GET", "/metrics", {}, None, 200)]
    for n, (method, path, headers, body, status) in enumerate(calls):
        resp = await client.request(method, path, json=body,
                                    headers={**headers, "X-Request-Id": f"sub-{n}"})
        assert resp.status == status, (path, await resp.text())
        assert resp.headers["X-Request-Id"] == f"sub-{n}"


async def test_sessions_share_the_capacity_and_show_their_granted_power(
        aiohttp_client: Any) -> None:
    """Adaptive power at the substation's API: floors admitted beside each other, the capacity
    shared, granted_kw and will_complete_by_departure shown, the gauges set."""
    client = await aiohttp_client(create_app(SubstationConfig("s1", capacity_kw=10.0,
                                                              speed_factor=60.0)))
    flexible = {**CHARGE, "requested_kw": 10.0, "min_kw": 4.0}
    first = await (await client.post("/charge", json=flexible)).json()
    assert (first["granted_kw"], first["load_kw"]) == (10.0, 4.0)
    resp = await client.post("/charge", json={**flexible, "session_id": "s-2",
                                              "departure_at": 4e9})
    second = await resp.json()
    assert resp.status == 200 and second["will_complete_by_departure"] is True
    assert second["granted_kw"] == pytest.approx(6.0)   # least laxity: its departure first
    one = await (await client.get("/sessions/s-1")).json()
    assert one["granted_kw"] == pytest.approx(4.0) and "will_complete_by_departure" not in one
    status = await (await client.get("/status")).json()
    assert (status["load_kw"], status["granted_kw"], status["curtailed_kw"]) == \
        (8.0, pytest.approx(10.0), pytest.approx(10.0))
    resp = await client.post("/charge", json={**flexible, "session_id": "s-3"})
    assert resp.status == 409 and (await resp.json())["error"] == "over_capacity"
    text = await (await client.get("/metrics")).text()
    values = {(s.name, s.labels.get("substation")): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert values[("substation_committed_min_kw", "s1")] == 8.0
    assert values[("substation_granted_kw", "s1")] == pytest.approx(10.0)
    assert values[("substation_curtailed_kw", "s1")] == pytest.approx(10.0)
    await client.delete("/sessions/s-2")
    one = await (await client.get("/sessions/s-1")).json()
    client.app[TABLE].advance(time.time())    # rises wait for the next tick
    one = await (await client.get("/sessions/s-1")).json()
    assert one["granted_kw"] == 10.0


async def test_a_restart_keeps_floors_and_shares_again(aiohttp_client: Any, tmp_path: Path
                                                       ) -> None:
    config = SubstationConfig("s1", capacity_kw=10.0, speed_factor=60.0,
                              state_path=str(tmp_path / "state.sqlite3"))
    first = await aiohttp_client(create_app(config))
    for sid in ("a", "b"):
        assert (await first.post("/charge", json={**CHARGE, "session_id": sid,
                                                  "requested_kw": 10.0,
                                                  "min_kw": 5.0})).status == 200
    await first.close()
    again = await aiohttp_client(create_app(config))
    body = await (await again.get("/sessions/a")).json()
    assert (body["min_kw"], body["granted_kw"]) == (5.0, 5.0)
    resp = await again.post("/charge", json={**CHARGE, "session_id": "c", "requested_kw": 2.0})
    assert resp.status == 409 and (await resp.json())["error"] == "over_capacity"
