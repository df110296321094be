"""End-to-end throughput and latency, one run, same client (wrk) and payload:
(a) straight to one substation (the ceiling), (b) ingress -> balancer -> substation,
(c) nginx least_conn in front of the substations (a user's obvious alternative)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.stack import API_KEY, TOKEN, BenchStack, bench_stack
from gridlb.stack import free_port, wait_ready

# Tiny power and energy: capacity never runs out and sessions finish within a second.
LUA = """
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  local body = string.format(
    '{"session_id": "b%%d-%%d", "vehicle_id": "ev-1", "requested_kw": 0.001, "energy_kwh": 0.001}',
    math.random(1, 1000000000), math.random(1, 1000000000))
  %(strip)s
  return wrk.format(nil, "/charge", nil, body)
end
"""
# The public API rejects unknown fields: drop session_id for the ingress.
STRIP = 'body = body:gsub(\'"session_id": "[^"]*", \', "")'

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream substations {{
    least_conn;
    {servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://substations;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {p: _ms(v, u) for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": lat.get("50", 0.0), "p99_ms": lat.get("99", 0.0),
            "non_2xx": float(non2xx.group(1)) if non2xx else 0.0}


@contextmanager
def nginx(stack: BenchStack, work: Path) -> Iterator[str | None]:
    if shutil.which("nginx") is None:
        yield None
        return
    port = free_port()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / sub).mkdir(exist_ok=True)
    servers = "\n    ".join(f"server {a};" for a in stack.substation_addresses)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, servers=servers, port=port))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def run_throughput(quick: bool = False) -> list[dict[str, object]]:
    if shutil.which("wrk") is None:
        return [{"skipped": "wrk is not installed (make setup installs it on Debian)"}]
    seconds = 3 if quick else 10
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="sglb-wrk-") as tmp, bench_stack() as stack:
        work = Path(tmp)
        direct = work / "direct.lua"
        direct.write_text(LUA % {"token": TOKEN, "strip": ""})
        public = work / "public.lua"
        public.write_text(LUA % {"token": API_KEY, "strip": STRIP})
        with nginx(stack, work) as nginx_url:
            targets = [("a: direct to one substation", f"http://{stack.substation_addresses[0]}",
                        direct),
                       ("b: ingress -> balancer -> substation", stack.grid.ingress_url, public)]
            if nginx_url:
                targets.append(("c: nginx least_conn -> substations", nginx_url, direct))
            for connections in (16, 64):
                for name, url, script in targets:
                    rows.append({"path": name, "connections": connections,
                                 **run_wrk(url, script, connections, seconds)})
    by = {(r["path"][0], r["connections"]): r for r in rows}   # type: ignore[index]
    for c in (16, 64):
        b = by.get(("b", c))
        for other in ("a", "c"):
            o = by.get((other, c))
            if b and o and o["rps"]:
                rows.append({"ratio": f"b/{other}", "connections": c,
                             "value": float(b["rps"]) / float(o["rps"])})  # type: ignore[arg-type]
    return rows
