"""container/postgres-entrypoint.sh, the start of the PostgreSQL image built from Debian's
package where the official one cannot be pulled (docker-compose.postgres.yml), run here on the
host against the same package: the cluster is created once, with the user, password and database
from the environment, and password authentication is enforced."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gridlb import postgres as pg
from gridlb.promconfig import REPO_ROOT
from gridlb.stack import ProcessGroup, ServiceSpec, free_port, wait_ready

pytestmark = pytest.mark.integration
ENTRYPOINT = REPO_ROOT / "container" / "postgres-entrypoint.sh"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="gridlb-entrypoint-"))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir(mode=0o700)
    account = pg.run_as()
    shutil.chown(data, account.uid, account.gid)
    yield data
    shutil.rmtree(base, ignore_errors=True)


def test_the_image_entrypoint_creates_the_cluster_once_with_the_password(
        data_dir: Path, tmp_path: Path) -> None:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.fail("Debian's postgresql package is not installed: run `make setup`")
    port = free_port()
    good = f"postgresql://app:s3cret@127.0.0.1:{port}/appdb"
    spec = ServiceSpec(
        "postgres", ["sh", str(ENTRYPOINT), "postgres", "-c", f"port={port}",
                     "-c", "listen_addresses=127.0.0.1"],
        good, env={"PGDATA": str(data_dir), "POSTGRES_USER": "app",
                   "POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "appdb"},
        run_as=pg.run_as())
    group = ProcessGroup(tmp_path / "logs")
    try:
        wait_ready(spec.ready_url, group.start(spec), timeout_s=60)
        assert "created the database cluster" in group.log_tail("postgres", 50)
        with psycopg.connect(good) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == \
                ("app", "appdb")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://app:wrong@127.0.0.1:{port}/appdb").close()
        group.stop("postgres")
        (tmp_path / "logs" / "postgres.log").write_text("")
        wait_ready(spec.ready_url, group.start(spec), timeout_s=60)    # the data is kept
        assert "created the database cluster" not in group.log_tail("postgres", 50)
    finally:
        group.stop_all()


def test_the_image_entrypoint_refuses_to_start_without_a_password(data_dir: Path) -> None:
    done = subprocess.run(["sh", str(ENTRYPOINT), "postgres"], capture_output=True, text=True,
                          env={"PGDATA": str(data_dir), "PATH": "/usr/bin:/bin"}, timeout=30,
                          check=False)
    assert done.returncode != 0 and "POSTGRES_PASSWORD is required" in done.stderr
    assert not (data_dir / "PG_VERSION").exists()
