"""The error conventions every service shares (gridlb/http.py), on a bare app."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gridlb.errors import ErrorCode
from gridlb.http import bearer_token_middleware, json_errors_middleware


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
