"""The local stack's optional PostgreSQL (facelift/stack/postgres.py): start, a Prefect server on it, stop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from facelift.stack import postgres
from facelift.stack.local import PrefectServer, Stack, pid_alive
from facelift.testing import free_port

try:
    postgres.bindir()
    HAVE_PG = True
except postgres.PostgresError:
    HAVE_PG = False

FLOW = """
from prefect import flow, task
@task
def double(x): return 2 * x
@flow
def tiny(): return sum(double(i) for i in range(3))
print("result", tiny())
"""


@pytest.mark.slow  # ~50 s: a Prefect server migrating a fresh PostgreSQL database
@pytest.mark.skipif(not HAVE_PG, reason="Debian's postgresql package is not installed")
def test_prefect_server_runs_flows_on_postgres_and_both_stop(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="facelift-pg-", dir="/tmp"))  # as root the server runs as `postgres`,
    home.chmod(0o755)  # which must reach its folder (pytest's tmp_path is private to root)
    pg = postgres.Postgres(home / "pg", free_port()).start()
    server = None
    try:
        before = pg.size_bytes()
        server = PrefectServer(tmp_path / "prefect", database_url=pg.url).start()
        env = server.env()
        assert "PREFECT_API_DATABASE_CONNECTION_URL" not in env  # clients never get the database password
        # a neighbour without the password is refused, over TCP and over the server's socket (old: --auth=trust)
        for host in ("127.0.0.1", str(home / "pg")):
            psql = [str(postgres.bindir() / "psql"), "-h", host, "-p", str(pg.port), "-U", postgres.USER, "-d",
                    postgres.DATABASE, "-w", "-tAc", "SELECT 1"]
            who = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"] if os.geteuid() == 0 else []
            got = subprocess.run([*who, *psql], capture_output=True, text=True, timeout=60,
                                 env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
            assert got.returncode != 0 and "password" in got.stderr, (host, got.stdout, got.stderr)
        out = subprocess.run([sys.executable, "-c", FLOW], env=env, capture_output=True, text=True, timeout=300)
        assert "result 6" in out.stdout, out.stderr[-2000:]
        runs = pg._psql("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'", postgres.DATABASE)
        assert int(runs) == 1 and pg.size_bytes() > before  # Prefect's tables and the run live in PostgreSQL
        assert not (tmp_path / "prefect" / "prefect.db").exists()  # not in SQLite
    finally:
        if server:
            server.stop()
        pid = pg.pid
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)
    assert not pid_alive(pid)


def test_stack_database_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("STACK_DATABASE", raising=False)
    assert Stack(tmp_path).database is None and Stack(tmp_path).server.database_url is None
    monkeypatch.setenv("STACK_DATABASE", "postgres")
    monkeypatch.setenv("STACK_POSTGRES_PORT", "5999")
    stack = Stack(tmp_path)
    url = stack.server.database_url
    password = (tmp_path / "secrets" / "postgres-password").read_text().strip()  # made on first use, 0600
    assert url == f"postgresql+asyncpg://facelift:{password}@127.0.0.1:5999/prefect"
    assert password not in json.dumps(stack.env())  # the server's alone
    assert "postgres" in stack.status()
    monkeypatch.setenv("STACK_DATABASE", "mysql")
    with pytest.raises(postgres.PostgresError, match="use sqlite"):
        Stack(tmp_path).database  # noqa: B018
    assert os.environ["STACK_DATABASE"] == "mysql"
