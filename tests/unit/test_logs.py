"""Request ids, the access log and the log formats (gridlb/logs.py), on a bare app."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gridlb.http import bearer_token_middleware, json_errors_middleware
from gridlb.logs import (
    ACCESS_LOGGER,
    MAX_REQUEST_ID,
    access_log_middleware,
    current_request_id,
    formatter,
    log_startup,
    request_id,
    request_id_headers,
    request_id_middleware,
    setup_logging,
    valid_request_id,
)

GENERATED = re.compile(r"[0-9a-f]{32}")
AUTH = {"Authorization": "Bearer t0k"}


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back after a test that sets up logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    switches = {name: getattr(logging, name) for name in
                ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")}
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in switches.items():
        setattr(logging, name, value)
    logging.captureWarnings(False)


async def echo(request: web.Request) -> web.Response:
    """What the handler sees: the id in the context, and the headers of an outgoing call."""
    return web.json_response({"current": current_request_id(), "of_request": request_id(request),
                              "outgoing": request_id_headers({"Authorization": "Bearer x"})})


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("broken")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/items/1")


def app() -> web.Application:
    application = web.Application(middlewares=[
        request_id_middleware, access_log_middleware(), json_errors_middleware,
        bearer_token_middleware(["t0k"], open_paths=("/metrics",))])
    application.router.add_get("/items/{id}", echo)
    application.router.add_get("/boom", boom)
    application.router.add_get("/redirect", redirect)
    application.router.add_get("/metrics", echo)
    application.router.add_post("/only-post", echo)
    return application


@pytest.mark.parametrize("value", ["abc", "a" * MAX_REQUEST_ID, "req-1:2/3_x.y~z",
                                   "0af7651916cd43dd8448eb211c80319c", '"quoted"'])
def test_a_short_run_of_visible_ascii_is_a_request_id(value: str) -> None:
    assert valid_request_id(value)


@pytest.mark.parametrize("value", [None, "", "a" * (MAX_REQUEST_ID + 1), "has space",
                                   "new\nline", "tab\there", "caf\u00e9", "del\x7f",
                                   "nul\x00"])
def test_anything_else_is_not(value: str | None) -> None:
    assert not valid_request_id(value)


async def test_a_valid_incoming_id_is_kept_echoed_and_sent_on(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app())
    resp = await client.get("/items/7", headers={**AUTH, "X-Request-Id": "trace-42"})
    body = await resp.json()
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "trace-42"
    assert body == {"current": "trace-42", "of_request": "trace-42",
                    "outgoing": {"Authorization": "Bearer x", "X-Request-Id": "trace-42"}}


@pytest.mark.parametrize("sent", [None, "has space", "x" * 65, "caf\u00e9"])
async def test_a_missing_or_invalid_id_is_replaced_by_a_generated_one(
        aiohttp_client: Any, sent: str | None) -> None:
    client = await aiohttp_client(app())
    headers = {**AUTH, **({"X-Request-Id": sent} if sent is not None else {})}
    resp = await client.get("/items/7", headers=headers)
    rid = resp.headers["X-Request-Id"]
    assert GENERATED.fullmatch(rid) and rid != sent
    assert (await resp.json())["outgoing"]["X-Request-Id"] == rid


async def test_each_request_on_one_connection_gets_its_own_id(aiohttp_client: Any) -> None:
    """Requests on a keep-alive connection run in the connection's task: one request's id must
    not leak into the next."""
    client = await aiohttp_client(app())
    first = await client.get("/items/1", headers={**AUTH, "X-Request-Id": "first"})
    assert first.headers["X-Request-Id"] == "first"
    second = await client.get("/items/2", headers=AUTH)
    body = await second.json()
    assert body["current"] == second.headers["X-Request-Id"] != "first"
    assert current_request_id() is None      # nothing outside a request
    assert request_id_headers() == {}


@pytest.mark.parametrize(("method", "path", "headers", "status"), [
    ("GET", "/items/1", {}, 401),                 # refused by auth, inside
    ("GET", "/nowhere", AUTH, 404),               # aiohttp's own error
    ("GET", "/only-post", AUTH, 405),
    ("GET", "/boom", AUTH, 500),                  # an unexpected exception
    ("GET", "/redirect", AUTH, 302),              # an HTTPException passed through as is
])
async def test_every_error_echoes_the_id(aiohttp_client: Any, method: str, path: str,
                                         headers: dict[str, str], status: int) -> None:
    client = await aiohttp_client(app())
    resp = await client.request(method, path, headers={**headers, "X-Request-Id": "err-1"},
                                allow_redirects=False)
    assert resp.status == status and resp.headers["X-Request-Id"] == "err-1"


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER]


async def test_the_access_log_names_method_route_template_status_duration_remote_and_id(
        aiohttp_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS_LOGGER)
    client = await aiohttp_client(app())
    await client.get("/items/%0Aforged", headers={**AUTH, "X-Request-Id": "acc-1"})
    await client.get("/nowhere/x", headers={**AUTH, "X-Request-Id": "acc-2"})
    await client.get("/boom", headers={**AUTH, "X-Request-Id": "acc-3"})
    first, unmatched, failed = (vars(r) for r in access_records(caplog))
    assert (first["method"], first["route"], first["status"], first["remote"]) == \
        ("GET", "/items/{id}", 200, "127.0.0.1")
    assert first["levelno"] == logging.INFO and isinstance(first["duration_ms"], float)
    message = first["msg"] % first["args"]
    assert message.startswith("GET /items/{id} 200 ") and message.endswith(" remote=127.0.0.1")
    # The raw path is the client's text (here a newline): only the template is logged.
    assert "forged" not in message and "\n" not in message
    assert (unmatched["route"], unmatched["status"]) == ("unmatched", 404)
    assert (failed["status"], failed["levelno"]) == (500, logging.WARNING)


async def test_the_request_id_is_on_every_line_written_during_the_request(
        aiohttp_client: Any, root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("svc", "text", stream=stream)
    client = await aiohttp_client(app())
    await client.get("/boom", headers={**AUTH, "X-Request-Id": "line-1"})
    lines = stream.getvalue().splitlines()
    # The unhandled error's own line (and its traceback) and the access line.
    assert any("ERROR gridlb.http request_id=line-1 unhandled error on GET /boom" in line
               for line in lines), lines
    assert any("WARNING gridlb.access request_id=line-1 GET /boom 500 " in line
               for line in lines), lines


async def test_probes_and_scrapes_are_logged_at_debug_unless_they_fail(
        aiohttp_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS_LOGGER)
    client = await aiohttp_client(app())
    await client.get("/metrics")
    assert [r.levelno for r in access_records(caplog)] == [logging.DEBUG]


def record(message: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("ingress.views", logging.INFO, __file__, 1, message, args, None)
    if exc:
        try:
            raise ValueError("inner")
        except ValueError:
            rec.exc_info = sys.exc_info()
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_format_is_one_object_per_line_with_the_fields_and_extras() -> None:
    line = formatter("json").format(record("charge %s\nplaced", "ev-1", exc=True,
                                           request_id="r-1", service="ingress", status=200,
                                           route="/charge"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "ingress.views"
    assert (entry["service"], entry["request_id"]) == ("ingress", "r-1")
    assert entry["message"] == "charge ev-1\nplaced"
    assert (entry["status"], entry["route"]) == (200, "/charge")
    assert "ValueError: inner" in entry["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])


def test_setup_logging_json_writes_json_lines_with_service_and_no_request_id_outside_one(
        root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("balancer", "json", stream=stream)
    assert len(root_logger.handlers) == 1       # replaces what was there: one line per record
    log_startup("balancer", {"version": "1.2.3", "policy": "least-load"},
                logging.getLogger("balancer.app"))
    logging.getLogger("x").warning("odd %d", 5)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "balancer starting: version=1.2.3 policy=least-load"
    assert first["startup"] == {"version": "1.2.3", "policy": "least-load"}
    assert (first["service"], first["request_id"]) == ("balancer", "-")
    assert (second["level"], second["message"]) == ("WARNING", "odd 5")


def test_text_is_the_default_and_an_unknown_format_is_refused() -> None:
    text = formatter("text").format(record("hello", request_id="r-9", service="s"))
    assert text.endswith(" INFO ingress.views request_id=r-9 hello")
    with pytest.raises(ValueError, match="log format must be one of text, json, not 'xml'"):
        formatter("xml")


async def test_a_request_whose_client_went_away_is_logged_as_499(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    async def cancelled(request: web.Request) -> web.Response:
        raise asyncio.CancelledError

    request = make_mocked_request("POST", "/charge")
    with pytest.raises(asyncio.CancelledError):
        await access_log_middleware()(request, cancelled)
    (line,) = access_records(caplog)
    assert (vars(line)["status"], line.levelno) == (499, logging.INFO)
