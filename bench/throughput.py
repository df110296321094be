"""End-to-end throughput and latency, one run, same client (wrk) and payload:
(a) straight to one substation (the ceiling), (b) ingress -> balancer -> substation,
(b+key) the same with an Idempotency-Key on every request (two durable commits more),
(c) nginx least_conn in front of the substations (a user's obvious alternative).
Each with the stores' default durability (fsync per commit group) and with `process`
durability, so the cost of surviving a power loss is measured, not guessed. Then the keyed path
with the ingress store on PostgreSQL (full durability: `synchronous_commit = on`), with one
ingress and with two replicas sharing it (a wrk per replica, half the connections each)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from bench.stack import API_KEY, TOKEN, BenchStack, bench_stack
from gridlb.postgres import PostgresMissing, bin_dir
from gridlb.stack import free_port, wait_ready

# The smallest power and a tiny energy: capacity never runs out and sessions finish within a
# tick of the simulation.
LUA = """
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  local id = string.format("b%%d-%%d", math.random(1, 1000000000), math.random(1, 1000000000))
  local body = string.format(
    '{"session_id": "%%s", "vehicle_id": "ev-1", "requested_kw": 1.4, "energy_kwh": 0.001}', id)
  %(strip)s
  local headers = {["Content-Type"] = "application/json",
                   ["Authorization"] = "Bearer %(token)s"}
  %(key)s
  return wrk.format("POST", "/charge", headers, body)
end
"""
KEY = 'headers["Idempotency-Key"] = id'

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
    rows: list[dict[str, object]] = []
    seconds = 3 if quick else 10
    for durability in ("full", "process"):
        rows += _run_paths(durability, seconds)
    rows += _run_postgres_paths(seconds)
    return rows + _ratios(rows)


def run_wrk_split(urls: list[str], script: Path, connections: int, seconds: int
                  ) -> dict[str, float]:
    """One wrk per URL at once, the connections split between them: the sum of their rates,
    the worst of their percentiles."""
    with ThreadPoolExecutor(len(urls)) as pool:
        parts = list(pool.map(lambda u: run_wrk(u, script, connections // len(urls), seconds),
                              urls))
    return {"rps": sum(p["rps"] for p in parts),
            "p50_ms": max(p["p50_ms"] for p in parts), "p99_ms": max(p["p99_ms"] for p in parts),
            "non_2xx": sum(p["non_2xx"] for p in parts)}


def _run_postgres_paths(seconds: int) -> list[dict[str, object]]:
    """(b+key) with the ingress store on PostgreSQL: one ingress, then two replicas."""
    try:
        bin_dir()
    except PostgresMissing as exc:
        return [{"skipped": f"PostgreSQL paths: {exc}"}]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="sglb-wrk-") as tmp:
        script = Path(tmp) / "keyed.lua"
        script.write_text(LUA % {"token": API_KEY, "strip": STRIP, "key": KEY})
        for replicas, name in ((1, "b+key/pg: the same, store on PostgreSQL"),
                               (2, "b+key/pg2: the same, 2 ingress replicas on PostgreSQL")):
            with bench_stack(store="postgresql", ingresses=replicas) as stack:
                for connections in (16, 64):
                    rows.append({"durability": "full", "path": name,
                                 "connections": connections,
                                 **run_wrk_split(list(stack.ingress_urls), script, connections,
                                                 seconds)})
    return rows


def _run_paths(durability: str, seconds: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="sglb-wrk-") as tmp, \
            bench_stack(durability=durability) as stack:
        work = Path(tmp)
        scripts = {name: work / f"{name}.lua" for name in ("direct", "public", "keyed")}
        scripts["direct"].write_text(LUA % {"token": TOKEN, "strip": "", "key": ""})
        scripts["public"].write_text(LUA % {"token": API_KEY, "strip": STRIP, "key": ""})
        scripts["keyed"].write_text(LUA % {"token": API_KEY, "strip": STRIP, "key": KEY})
        with nginx(stack, work) as nginx_url:
            targets = [("a: direct to one substation", f"http://{stack.substation_addresses[0]}",
                        scripts["direct"]),
                       ("b: ingress -> balancer -> substation", stack.grid.ingress_url,
                        scripts["public"]),
                       ("b+key: the same with an Idempotency-Key", stack.grid.ingress_url,
                        scripts["keyed"])]
            if nginx_url:
                targets.append(("c: nginx least_conn -> substations", nginx_url,
                                scripts["direct"]))
            for connections in (16, 64):
                for name, url, script in targets:
                    rows.append({"durability": durability, "path": name,
                                 "connections": connections,
                                 **run_wrk(url, script, connections, seconds)})
    return rows


def _ratios(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    by = {(r["durability"], str(r["path"]).split(":")[0], r["connections"]): r for r in rows}
    ratios: list[dict[str, object]] = []
    for durability in ("full", "process"):
        for c in (16, 64):
            for num, den in (("b", "a"), ("b+key", "a"), ("b", "c"), ("b+key/pg", "a"),
                             ("b+key/pg2", "a"), ("b+key/pg", "b+key")):
                b, o = by.get((durability, num, c)), by.get((durability, den, c))
                if b and o and o["rps"]:
                    ratios.append({"durability": durability, "ratio": f"{num}/{den}",
                                   "connections": c,
                                   "value": float(b["rps"]) / float(o["rps"])})  # type: ignore[arg-type]
    return ratios
