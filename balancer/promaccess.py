"""How the balancer authenticates to Prometheus: what clusters put in front of it.

Thanos, Mimir, Cortex and OpenShift's Prometheus sit behind a bearer token (a Kubernetes service
account token, rotated in place), basic auth, a private CA, a client certificate, or a tenant
header (`X-Scope-OrgID`). Config -> validate (every problem at once, naming the flag) -> a
`requests` session and auth that the Prometheus client uses for every query.

Secrets come from files, never from the command line (visible in `ps`): the bearer token file is
read again whenever it changes, so a rotated token is used from the next query on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
import requests.auth

# RFC 9110 field names: letters, digits and a few symbols.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class CredentialsUnreadable(requests.RequestException):
    """A credentials file could not be read at query time (deleted, unreadable, empty)."""


@dataclass(frozen=True)
class PrometheusAccess:
    bearer_token_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    ca_file: str | None = None          # verify the server against this CA (PEM)
    cert_file: str | None = None        # client certificate for mutual TLS (PEM)
    key_file: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)   # e.g. {"X-Scope-OrgID": "grid"}


def parse_header(text: str) -> tuple[str, str] | str:
    """ "Name: value" -> (name, value), or a sentence saying what is wrong."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _HEADER_NAME.fullmatch(name):
        return f"{text!r} is not 'Name: value'"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"{name}: the value has control characters"
    if name.lower() in ("authorization", "host", "content-length"):
        return f"{name}: set by the client itself (use the bearer token or basic auth options)"
    return name, value


def _readable(path: str, flag: str) -> str | None:
    if not os.path.isfile(path):
        return f"{flag}: {path}: no such file"
    if not os.access(path, os.R_OK):
        return f"{flag}: {path}: not readable"
    return None


def validate(access: PrometheusAccess) -> list[str]:
    """Every problem with `access`, each naming its flag; empty when it can be used."""
    problems: list[str] = []
    files = [("--prometheus-bearer-token-file", access.bearer_token_file),
             ("--prometheus-basic-auth-password-file", access.basic_auth_password_file),
             ("--prometheus-ca-file", access.ca_file),
             ("--prometheus-cert-file", access.cert_file),
             ("--prometheus-key-file", access.key_file)]
    problems += [p for flag, path in files if path and (p := _readable(path, flag))]
    if access.bearer_token_file and (access.basic_auth_user or access.basic_auth_password_file):
        problems.append("--prometheus-bearer-token-file and --prometheus-basic-auth-user: "
                        "choose one way to authenticate")
    if bool(access.basic_auth_user) != bool(access.basic_auth_password_file):
        problems.append("--prometheus-basic-auth-user and --prometheus-basic-auth-password-file "
                        "go together")
    if bool(access.cert_file) != bool(access.key_file):
        problems.append("--prometheus-cert-file and --prometheus-key-file go together")
    for name in access.headers:
        checked = parse_header(f"{name}: {access.headers[name]}")
        if isinstance(checked, str):
            problems.append(f"--prometheus-header: {checked}")
    return problems


def _read_secret(path: str) -> str:
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsUnreadable(f"{path}: {type(exc).__name__}: {exc}") from exc
    if not secret:
        raise CredentialsUnreadable(f"{path}: empty")
    return secret


class BearerTokenFile(requests.auth.AuthBase):
    """`Authorization: Bearer <the file's content>`, read again when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._token = ""

    def token(self) -> str:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise CredentialsUnreadable(f"{self.path}: {exc.strerror}") from exc
        version = (stat.st_mtime_ns, stat.st_size)
        if version != self._seen:
            self._token, self._seen = _read_secret(self.path), version
        return self._token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


class BasicAuthFile(requests.auth.AuthBase):
    """Basic auth whose password is read from a file (again when it changes)."""

    def __init__(self, user: str, password_file: str) -> None:
        self.user = user
        self.password = BearerTokenFile(password_file)   # the same rereading, another header

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        basic = requests.auth.HTTPBasicAuth(self.user, self.password.token())
        prepared: requests.PreparedRequest = basic(request)
        return prepared


def auth_for(access: PrometheusAccess) -> requests.auth.AuthBase | None:
    if access.bearer_token_file:
        return BearerTokenFile(access.bearer_token_file)
    if access.basic_auth_user and access.basic_auth_password_file:
        return BasicAuthFile(access.basic_auth_user, access.basic_auth_password_file)
    return None


def session_for(access: PrometheusAccess) -> requests.Session:
    session = requests.Session()
    session.verify = access.ca_file or True
    if access.cert_file and access.key_file:
        session.cert = (access.cert_file, access.key_file)
    return session


def headers_from(lines: Sequence[str]) -> dict[str, str] | list[str]:
    """--prometheus-header values -> headers, or the problems."""
    headers: dict[str, str] = {}
    problems: list[str] = []
    for line in lines:
        parsed = parse_header(line)
        if isinstance(parsed, str):
            problems.append(f"--prometheus-header: {parsed}")
        else:
            headers[parsed[0]] = parsed[1]
    return problems or headers
