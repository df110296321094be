"""Prometheus access options (balancer/promaccess.py): validation and the credentials files."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import requests

from balancer.__main__ import parse_args
from balancer.prom import QueryFailure, make_client, run_query
from balancer.promaccess import (
    BasicAuthFile,
    BearerTokenFile,
    CredentialsUnreadable,
    PrometheusAccess,
    headers_from,
    parse_header,
    validate,
)


def prepared() -> requests.PreparedRequest:
    return requests.Request("GET", "http://127.0.0.1:1/api/v1/query").prepare()


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    access = PrometheusAccess(bearer_token_file=str(token), basic_auth_user="grid",
                              ca_file=str(tmp_path / "missing-ca.pem"),
                              cert_file=str(token), headers={"Bad Name": "x"})
    problems = validate(access)
    assert problems == [
        f"--prometheus-ca-file: {tmp_path / 'missing-ca.pem'}: no such file",
        "--prometheus-bearer-token-file and --prometheus-basic-auth-user: choose one way to "
        "authenticate",
        "--prometheus-basic-auth-user and --prometheus-basic-auth-password-file go together",
        "--prometheus-cert-file and --prometheus-key-file go together",
        "--prometheus-header: 'Bad Name: x' is not 'Name: value'",
    ]
    assert validate(PrometheusAccess()) == []


@pytest.mark.parametrize(("line", "parsed"), [
    ("X-Scope-OrgID: grid-a", ("X-Scope-OrgID", "grid-a")),
    ("  X-Tenant :  a b ", ("X-Tenant", "a b")),
    ("no colon", "'no colon' is not 'Name: value'"),
    (": empty", "': empty' is not 'Name: value'"),
    ("X-A: \x01", "X-A: the value has control characters"),
    ("Authorization: Bearer x", "Authorization: set by the client itself (use the bearer token "
                                "or basic auth options)"),
])
def test_headers_are_parsed_or_refused_with_a_reason(line: str, parsed: object) -> None:
    assert parse_header(line) == parsed


def test_the_command_line_refuses_bad_access_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRID_INTERNAL_TOKEN", "t0k")
    with pytest.raises(SystemExit):
        parse_args(["--prometheus-ca-file", str(tmp_path / "nope.pem"),
                    "--prometheus-header", "oops"])
    err = capsys.readouterr().err
    assert "--prometheus-header: 'oops' is not 'Name: value'" in err
    config = parse_args(["--prometheus-header", "X-Scope-OrgID: a",
                         "--prometheus-header", "X-B: 2"])
    assert dict(config.prometheus_access.headers) == {"X-Scope-OrgID": "a", "X-B": "2"}
    assert headers_from(["a b: c"]) == ["--prometheus-header: 'a b: c' is not 'Name: value'"]


def test_a_rotated_bearer_token_is_used_from_the_next_query(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    auth = BearerTokenFile(str(token))
    assert auth(prepared()).headers["Authorization"] == "Bearer first"
    token.write_text("second-token\n")          # a kubelet swaps the projected token in place
    assert auth(prepared()).headers["Authorization"] == "Bearer second-token"


def test_basic_auth_reads_its_password_from_a_file(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    header = BasicAuthFile("grid", str(password))(prepared()).headers["Authorization"]
    assert header == "Basic " + base64.b64encode(b"grid:s3cret").decode()


@pytest.mark.parametrize("content", [None, ""])
def test_an_unreadable_or_empty_token_fails_the_query_as_credentials(
        tmp_path: Path, content: str | None) -> None:
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    with pytest.raises(CredentialsUnreadable, match="token"):
        BearerTokenFile(str(token))(prepared())
    client = make_client("http://127.0.0.1:1", 0.5,
                         access=PrometheusAccess(bearer_token_file=str(token)))
    with pytest.raises(QueryFailure) as failure:
        run_query(client, "up", {})
    assert failure.value.reason == "credentials" and str(token) in failure.value.detail
