"""The balancer against a Prometheus behind auth, as clusters run it (Thanos, Mimir, OpenShift).

- A real Prometheus started with a `--web.config.file` that demands TLS (a CA made here) and
  basic auth (a bcrypt hash), scraping a real substation: the balancer's queries succeed with the
  CA and the password file, and fail with the reason named without them.
- A real Prometheus behind a gateway that demands a bearer token and a tenant header
  (`X-Scope-OrgID`), as Mimir's or an OAuth proxy would: a real balancer process routes with
  `--prometheus-bearer-token-file` and `--prometheus-header`, and keeps routing when the token
  file is rotated.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import requests
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from balancer.prom import QueryFailure, make_client, run_query
from balancer.promaccess import PrometheusAccess
from gridlb.promconfig import prometheus_command, render_prometheus_dir
from gridlb.stack import ProcessGroup, ServiceSpec, free_port, wait_ready
from tests.integration.conftest import Prometheus, http_json, wait_for

pytestmark = pytest.mark.integration

TOKEN = "access-test-token"
# The services refuse to start without their internal token.
SERVICE_ENV = {"GRID_INTERNAL_TOKEN": "access-test-internal-token"}


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_pki(directory: Path) -> Pki:
    ca_key, ca_cert = _ca("grid test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem",
              directory / "other-ca.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_key_pem(key))
    pki.other_ca.write_bytes(_ca("someone else")[1].public_bytes(serialization.Encoding.PEM))
    return pki


@dataclass
class Secured:
    url: str
    pki: Pki
    password_file: Path
    substation: str                 # the scraped substation's address


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A Prometheus that demands TLS and basic auth, scraping one real substation."""
    run = tmp_path_factory.mktemp("secured")
    pki = make_pki(run)
    password_file = run / "password"
    password_file.write_text("s3cret-password\n")
    web_config = run / "web.yml"
    web_config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki.cert), "key_file": str(pki.key)},
        "basic_auth_users": {"grid": bcrypt.hashpw(b"s3cret-password",
                                                   bcrypt.gensalt(rounds=4)).decode()}}))
    group = ProcessGroup(run / "logs")
    sub_port, prom_port = free_port(), free_port()
    try:
        sub = ServiceSpec("sub-tls", [sys.executable, "-m", "substation", "--id", "sub-tls",
                                      "--port", str(sub_port), "--capacity-kw", "100"],
                          f"http://127.0.0.1:{sub_port}/healthz", env=SERVICE_ENV)
        wait_ready(sub.ready_url, group.start(sub))
        config = render_prometheus_dir(run / "prom", 0.5,
                                       {"substation": [f"127.0.0.1:{sub_port}"]})
        argv = [*prometheus_command(config, run / "data", f"127.0.0.1:{prom_port}"),
                f"--web.config.file={web_config}"]
        proc = group.start(ServiceSpec("prometheus-tls", argv, ""))
        url = f"https://127.0.0.1:{prom_port}"

        def scraped() -> bool:
            assert proc.poll() is None, group.log_tail("prometheus-tls")
            try:
                resp = requests.get(f"{url}/api/v1/query", params={"query": "substation_load"},
                                    verify=str(pki.ca), auth=("grid", "s3cret-password"),
                                    timeout=2)
            except requests.RequestException:
                return False
            return resp.status_code == 200 and bool(resp.json()["data"]["result"])
        wait_for(scraped, "the secured Prometheus to scrape the substation")
        yield Secured(url, pki, password_file, f"127.0.0.1:{sub_port}")
    finally:
        group.stop_all()


def test_tls_and_basic_auth_with_the_ca_and_password_file(secured: Secured) -> None:
    access = PrometheusAccess(basic_auth_user="grid",
                              basic_auth_password_file=str(secured.password_file),
                              ca_file=str(secured.pki.ca))
    result = run_query(make_client(secured.url, 2.0, access=access),
                       'up{job="substation"}', {})
    assert [s["metric"]["instance"] for s in result] == [secured.substation]


@pytest.mark.parametrize(("access", "reason"), [
    ("no password", "http_401"),
    ("wrong password", "http_401"),
    ("another CA", "unreachable"),
])
def test_without_the_right_credentials_or_ca_the_reason_is_named(
        secured: Secured, tmp_path: Path, access: str, reason: str) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it")
    options = {
        "no password": PrometheusAccess(ca_file=str(secured.pki.ca)),
        "wrong password": PrometheusAccess(basic_auth_user="grid",
                                           basic_auth_password_file=str(wrong),
                                           ca_file=str(secured.pki.ca)),
        "another CA": PrometheusAccess(basic_auth_user="grid",
                                       basic_auth_password_file=str(secured.password_file),
                                       ca_file=str(secured.pki.other_ca)),
    }[access]
    with pytest.raises(QueryFailure) as failure:
        run_query(make_client(secured.url, 2.0, access=options), "up", {})
    assert failure.value.reason == reason, failure.value.detail
    if access == "another CA":
        assert "CERTIFICATE_VERIFY_FAILED" in failure.value.detail


def test_a_real_balancer_routes_through_tls_and_basic_auth(secured: Secured,
                                                           tmp_path: Path) -> None:
    port = free_port()
    group = ProcessGroup(tmp_path / "logs")
    try:
        spec = ServiceSpec("balancer", [
            sys.executable, "-m", "balancer", "--port", str(port),
            "--prometheus-url", secured.url, "--policy", "least-utilization",
            "--prometheus-ca-file", str(secured.pki.ca),
            "--prometheus-basic-auth-user", "grid",
            "--prometheus-basic-auth-password-file", str(secured.password_file)],
            f"http://127.0.0.1:{port}/healthz", env=SERVICE_ENV)
        wait_ready(spec.ready_url, group.start(spec))
        wait_for(lambda: http_json("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200,
                 "the balancer to read the secured Prometheus")
        view = http_json("GET", f"http://127.0.0.1:{port}/policy")[1]
        assert [(r["substation"], r["instance"]) for r in view["substations"]] == \
            [("sub-tls", secured.substation)]
        assert view["last_error"] is None
    finally:
        group.stop_all()


class Gateway:
    """A tenant gateway in front of a Prometheus: demands `Authorization: Bearer <token>` and
    `X-Scope-OrgID`, then proxies the query API. It runs on its own event loop in a thread."""

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream, self.token = upstream, token
        self.seen: list[tuple[str | None, str | None]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        auth, tenant = request.headers.get("Authorization"), request.headers.get("X-Scope-OrgID")
        self.seen.append((auth, tenant))
        if auth != f"Bearer {self.token}":
            return web.json_response({"status": "error", "error": "unauthorized"}, status=401)
        if tenant != "grid-a":
            return web.json_response({"status": "error", "error": "no tenant"}, status=400)
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.upstream}{request.path}", params=request.query) as resp:
            return web.Response(body=await resp.read(), status=resp.status,
                                content_type="application/json")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/api/v1/query", self._handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Gateway:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_a_bearer_token_and_tenant_header_reach_a_gateway_and_a_rotated_token_is_used(
        prometheus: Prometheus, cluster: Any, tmp_path: Path) -> None:
    c = cluster([("a", 100.0)])                  # a real substation scraped by `prometheus`
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    group = ProcessGroup(tmp_path / "logs")
    with Gateway(prometheus.url, TOKEN) as gateway:
        try:
            spec = ServiceSpec("balancer-gw", [
                sys.executable, "-m", "balancer", "--port", str(port),
                "--prometheus-url", f"http://127.0.0.1:{gateway.port}",
                "--prometheus-bearer-token-file", str(token_file),
                "--prometheus-header", "X-Scope-OrgID: grid-a", "--grid", "local"],
                f"http://127.0.0.1:{port}/healthz", env=SERVICE_ENV)
            wait_ready(spec.ready_url, group.start(spec))
            wait_for(lambda: http_json("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200,
                     "the balancer to read Prometheus through the gateway")
            assert (f"Bearer {TOKEN}", "grid-a") in gateway.seen
            view = http_json("GET", f"http://127.0.0.1:{port}/policy")[1]
            assert [r["substation"] for r in view["substations"]] == ["a"]
            gateway.token = "rotated-token"          # the old token is refused from now on
            token_file.write_text("rotated-token\n")
            since = time.time()
            wait_for(lambda: ("Bearer rotated-token", "grid-a") in gateway.seen and
                     (http_json("GET", f"http://127.0.0.1:{port}/policy")[1]["evaluated_at"]
                      or 0) > since, "an evaluation with the rotated token")
            assert c.addresses["a"] in {r["instance"] for r in http_json(
                "GET", f"http://127.0.0.1:{port}/policy")[1]["substations"]}
        finally:
            group.stop_all()
