"""A PostgreSQL server of our own, for `make up` and the tests: find the binaries, create a data
directory once, the command that runs the server in the foreground, and whether it accepts
connections.

Debian installs PostgreSQL under /usr/lib/postgresql/<version>/bin (not on PATH); the newest
version there is used, else `initdb`/`postgres` on PATH. `initdb` and the server refuse to run as
root: as root they run as the `postgres` user (the package creates it), in a directory that user
owns. The server listens on 127.0.0.1 only, with `trust` authentication: it is a local
development database for processes of this machine, not a service for a network. Its data
directory is kept across restarts; `make reset` removes it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

DATABASE = "grid"
SUPERUSER = "grid"
_VERSION_DIR = re.compile(r"^\d+(\.\d+)?$")


class PostgresMissing(RuntimeError):
    """No PostgreSQL binaries were found."""


def bin_dir() -> Path:
    """Where `initdb` and `postgres` are: the newest /usr/lib/postgresql/<version>/bin, else
    PATH."""
    root = Path("/usr/lib/postgresql")
    versions = sorted((d for d in root.iterdir() if _VERSION_DIR.match(d.name)
                       and (d / "bin" / "initdb").exists()),
                      key=lambda d: tuple(int(p) for p in d.name.split("."))) \
        if root.is_dir() else []
    if versions:
        return versions[-1] / "bin"
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    raise PostgresMissing(
        "PostgreSQL is not installed: run `make setup` (Debian: apt-get install postgresql; "
        "elsewhere install PostgreSQL >= 13 with initdb and postgres)")


@dataclass(frozen=True)
class RunAs:
    """The account the server runs as: `postgres` when we are root, else ourselves (None)."""

    user: str | None
    uid: int
    gid: int


def run_as() -> RunAs:
    if os.geteuid() != 0:
        return RunAs(None, os.geteuid(), os.getegid())
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresMissing("running as root, PostgreSQL needs the `postgres` user (Debian's "
                              "postgresql package creates it)") from exc
    return RunAs("postgres", entry.pw_uid, entry.pw_gid)


def url(port: int, host: str = "127.0.0.1", database: str = DATABASE) -> str:
    return f"postgresql://{SUPERUSER}@{host}:{port}/{database}"


def init_data_dir(data_dir: Path, account: RunAs | None = None, sync: bool = True) -> bool:
    """Create the database cluster in `data_dir` (with the database `grid`) unless it exists.
    True when it was created now. `sync=False` skips initdb's own fsyncs (tests: seconds
    saved, and a lost temporary directory is no loss); the server always syncs its commits."""
    if (data_dir / "PG_VERSION").exists():
        return False
    account = account or run_as()
    binaries = bin_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    os.chown(data_dir, account.uid, account.gid)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    kwargs = {"user": account.uid, "group": account.gid, "extra_groups": []} \
        if account.user else {}
    for argv, stdin in (
            ([str(binaries / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", SUPERUSER,
              "-E", "UTF8", "--locale=C.UTF-8", *(() if sync else ("--no-sync",))], None),
            # Single-user mode: the database exists before any server starts.
            ([str(binaries / "postgres"), "--single", "-D", str(data_dir), "postgres"],
             f"CREATE DATABASE {DATABASE};\n")):
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env,
                              cwd="/", check=False, **kwargs)   # type: ignore[call-overload]
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed in {data_dir}: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")
    return True


def server_command(data_dir: Path, port: int, host: str = "127.0.0.1",
                   max_connections: int = 200) -> list[str]:
    """The server in the foreground (the supervisor stops it with SIGTERM: a smart shutdown
    once the ingress replicas, stopped first, have disconnected). No Unix socket: TCP on
    `host` only."""
    return [str(bin_dir() / "postgres"), "-D", str(data_dir), "-p", str(port),
            "-c", f"listen_addresses={host}", "-c", "unix_socket_directories=",
            "-c", f"max_connections={max_connections}",
            # Stated, not assumed (docs/design.md): a commit returns once its WAL is on disk.
            "-c", "synchronous_commit=on", "-c", "fsync=on"]


def accepts_connections(conninfo: str, timeout_s: float = 1.0) -> bool:
    """Whether the server answers a query now (not only accepts TCP: a starting server
    refuses sessions for a while)."""
    try:
        with psycopg.connect(conninfo, connect_timeout=max(1, round(timeout_s)),
                             autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False
