"""The error conventions every service shares (gridlb/http.py), on a bare app."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from gridlb.errors import ErrorCode
from gridlb.http import (
    bearer_token_middleware,
    json_errors_middleware,
    json_response,
    read_json_object,
)


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("database password is hunter2")


async def fine(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def app() -> web.Application:
    application = web.Application(middlewares=[
        json_errors_middleware, bearer_token_middleware(["t0k"], open_paths=("/open",))])
    application.router.add_get("/boom", boom)
    application.router.add_get("/open", fine)
    application.router.add_post("/only-post", fine)
    return application


AUTH = {"Authorization": "Bearer t0k"}


async def test_an_unexpected_exception_is_a_500_json_error_without_its_trace(
        aiohttp_client: Any) -> None:
    client = await aiohttp_client(app())
    resp = await client.get("/boom", headers=AUTH)
    text = await resp.text()
    assert resp.status == 500 and resp.content_type == "application/json"
    assert (await resp.json())["error"] == ErrorCode.INTERNAL_ERROR
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text


async def test_aiohttps_own_errors_become_json_with_their_code(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app())
    resp = await client.get("/nowhere", headers=AUTH)
    assert resp.status == 404 and (await resp.json())["error"] == ErrorCode.NOT_FOUND
    resp = await client.get("/only-post", headers=AUTH)
    body = await resp.json()
    assert resp.status == 405 and body["error"] == ErrorCode.METHOD_NOT_ALLOWED
    assert resp.headers["Allow"] == "POST"


async def test_a_missing_or_wrong_bearer_key_is_401_unauthorized(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app())
    for headers in ({}, {"Authorization": "Basic dDBr"}, {"Authorization": "Bearer nope"}):
        resp = await client.get("/boom", headers=headers)
        assert resp.status == 401, headers
        assert (await resp.json())["error"] == ErrorCode.UNAUTHORIZED
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.get("/open")).status == 200


async def echo(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    return body if isinstance(body, web.Response) else json_response(body)


@pytest.mark.parametrize(("raw", "detail"), [
    (b'{"a": 1, "a": 1}', "the body repeats the key 'a'; send each key once"),
    (b'{"a": {"b": 1, "c": 2, "b": 3}}', "the body repeats the key 'b'; send each key once"),
    (b'{"a": [{"c": 1}, {"c": 2, "c": 3}]}', "the body repeats the key 'c'; send each key once"),
    (b'{"k": 1, "\\u006b": 2}', "the body repeats the key 'k'; send each key once"),
    (b'{"' + b"x" * 500 + b'": 1, "' + b"x" * 500 + b'": 2}',
     "the body repeats the key '" + "x" * 57 + "...'; send each key once"),
])
async def test_a_body_repeating_a_key_is_refused_naming_the_key(
        aiohttp_client: Any, raw: bytes, detail: str) -> None:
    application = web.Application()
    application.router.add_post("/echo", echo)
    client = await aiohttp_client(application)
    resp = await client.post("/echo", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert await resp.json() == {"error": ErrorCode.INVALID_BODY, "detail": detail}


async def test_the_same_key_in_different_objects_is_no_repeat(aiohttp_client: Any) -> None:
    application = web.Application()
    application.router.add_post("/echo", echo)
    client = await aiohttp_client(application)
    body = {"a": {"x": 1}, "b": {"x": 2}, "c": [{"x": 3}, {"x": 4}], "x": "x"}
    resp = await client.post("/echo", json=body)
    assert resp.status == 200 and await resp.json() == body


async def test_a_body_nested_deeper_than_pythons_parser_follows_is_refused_not_a_500(
        aiohttp_client: Any) -> None:
    # orjson reads up to 1024 levels; Python's parser recurses per level (on 3.11 it stops near
    # 1000; later versions may go deeper and then read it).
    application = web.Application()
    application.router.add_post("/echo", echo)
    client = await aiohttp_client(application)
    raw = b'{"a": ' + b"[" * 1020 + b"]" * 1020 + b"}"
    resp = await client.post("/echo", data=raw, headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert (resp.status, body) in (
        (400, {"error": ErrorCode.INVALID_BODY,
               "detail": "the body nests objects or arrays too deeply to be read"}),
        (200, orjson.loads(raw)))
