"""Logs every service shares: set-up (`--log-format text|json`), the request id and the access log.

A request id names one request across the three services. It is taken from the caller's
`X-Request-Id` when that is a short run of visible ASCII (anything else could forge log lines
or fill them), generated otherwise, kept in a context variable for the request's task (and the
tasks it starts), echoed in every answer's `X-Request-Id` header, stamped on every log line
written while the request is handled, and sent on the calls the request makes to the next
service (`request_id_headers()`). Background work (refresh loops, pruning) has no request id.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from gridlb.http import Handler

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID = 64
# Visible ASCII only (quotes included): no space and no control character, so an id is one word
# in a text log line and can never start a new one.
_REQUEST_ID_RE = re.compile(rf"[\x21-\x7E]{{1,{MAX_REQUEST_ID}}}")
LOG_FORMATS = ("text", "json")
# Probes and scrapes: successful answers are logged at DEBUG, or every scrape would be a line.
QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})

_current: ContextVar[str | None] = ContextVar("request_id", default=None)
_REQUEST_KEY = web.RequestKey("request_id", str)
ACCESS_LOGGER = "gridlb.access"

# LogRecord attributes that are not a caller's `extra` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "service"}


def valid_request_id(value: str | None) -> bool:
    return value is not None and _REQUEST_ID_RE.fullmatch(value) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being handled in this task, if any."""
    return _current.get()


def request_id_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """`headers` plus the current request's `X-Request-Id`, for a call to another service."""
    out = dict(headers or {})
    rid = _current.get()
    if rid is not None:
        out[REQUEST_ID_HEADER] = rid
    return out


def request_id(request: web.Request) -> str:
    """The id `request_id_middleware` gave this request."""
    return request.get(_REQUEST_KEY) or "-"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: every answer, errors included, carries the request's id."""
    presented = request.headers.get(REQUEST_ID_HEADER)
    rid = presented if presented is not None and valid_request_id(presented) else \
        new_request_id()
    request[_REQUEST_KEY] = rid
    token = _current.set(rid)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    finally:
        # Requests on one keep-alive connection share the connection's task: the next one
        # must not inherit this id.
        _current.reset(token)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    return response


def access_log_middleware(logger: logging.Logger | None = None) -> Middleware:
    """One line per answer: method, route template (never the raw path, which is the client's
    text), status, duration in ms, remote address; the request id comes with every line."""
    log = logger or logging.getLogger(ACCESS_LOGGER)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499        # nginx's word for "the client went away before the answer"
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            duration_ms = round((time.perf_counter() - started) * 1000.0, 3)
            level = logging.WARNING if status >= 500 else \
                logging.DEBUG if route in QUIET_PATHS and status < 400 else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "%s %s %d %.1f ms remote=%s", request.method, route, status,
                        duration_ms, request.remote or "-",
                        extra={"method": request.method, "route": route, "status": status,
                               "duration_ms": duration_ms, "remote": request.remote or "-"})

    return middleware


class _RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id ("-" outside a request) and the
    service's name."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get() or "-"
        record.service = self.service
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, service, request id, message, the
    caller's `extra` fields, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
                            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": getattr(record, "service", None),
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s"


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")


def setup_logging(service: str, log_format: str = "text", level: int = logging.INFO,
                  stream: Any = None) -> logging.Handler:
    """Send every logger's records to stderr (or `stream`) in `log_format`, replacing any
    handler the root logger had."""
    # Every request writes an access line, so the record's cost counts: skip what no line
    # shows (the caller's file and line, thread, process), as the logging HOWTO's
    # "Optimization" section describes: an access line then costs about 20 us (text) or 23 us
    # (JSON) instead of 45 and 59 (measured here on 2 cores, written to /dev/null).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(_RequestIdFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python's warnings would otherwise be printed as bare lines between the JSON ones.
    logging.captureWarnings(True)
    return handler


@dataclass(frozen=True)
class AuthDisabled:
    """A service started without its credentials (--insecure-no-auth): what it lacks, where it
    listens, and what anyone who reaches it can then do."""

    missing: str        # "no API keys", "no internal token"
    listen: str         # host:port
    exposure: str       # "can start and stop charging sessions"


def log_startup(service: str, fields: Mapping[str, Any], logger: logging.Logger | None = None,
                auth_disabled: AuthDisabled | None = None) -> None:
    """The service's start-up line: what it runs as, in `key=value` words (and as fields in
    JSON); and, when it runs without authentication, a warning that says so loudly, the same
    for every service."""
    logger = logger or logging.getLogger(service)
    words = " ".join(f"{k}={v}" for k, v in fields.items())
    logger.info("%s starting: %s", service, words, extra={"startup": dict(fields)})
    if auth_disabled is not None:
        logger.warning("AUTH DISABLED: %s (--insecure-no-auth): every caller that reaches %s %s",
                       auth_disabled.missing, auth_disabled.listen, auth_disabled.exposure)
