"""An optional PostgreSQL database for the local stack's Prefect server (SQLite stays the default).

``STACK_DATABASE=postgres make stack`` (or ``python -m facelift.cli.localstack up``) starts Debian's PostgreSQL
(``apt-get install -y postgresql``) on 127.0.0.1 with its data under ``.stack/postgres`` and points the Prefect
server at it (``PREFECT_API_DATABASE_CONNECTION_URL``, asyncpg); ``make stack-down`` stops it by its pid. Prefect's
docs recommend PostgreSQL for production: SQLite serialises writers ("database is locked" under load).
Every login needs the role's password (``scram-sha-256``, socket and loopback alike; the stack keeps it in
``.stack/secrets/postgres-password``): ``trust`` would make every local user a superuser, and a superuser runs
code as the operator (``COPY ... FROM PROGRAM``). PostgreSQL refuses to run as root: as root the server runs as
the ``postgres`` system user (``setpriv``), which owns the data folder.
"""

from __future__ import annotations

import glob
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from facelift.stack.procs import spawn

log = logging.getLogger(__name__)
DATABASE = "prefect"
USER = "facelift"


class PostgresError(RuntimeError):
    """PostgreSQL is missing, or did not start."""


def bindir() -> Path:
    """The folder of ``initdb``/``postgres`` (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    if exe:
        return Path(exe).parent
    raise PostgresError("PostgreSQL is not installed (Debian: apt-get install -y postgresql); "
                        "or run the stack with SQLite (unset STACK_DATABASE)")


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]


@dataclass
class Postgres:
    """One PostgreSQL cluster in ``dir`` (data in ``dir/data``, socket and log beside it)."""

    dir: Path
    port: int = 5433
    pid: int | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    @property
    def url(self) -> str:
        """The server's connection URL: it holds the password (give it to the Prefect server only)."""
        return (f"postgresql+asyncpg://{USER}:{urllib.parse.quote(self.password, safe='')}@127.0.0.1:{self.port}/"
                f"{DATABASE}")

    def _run(self, tool: str, *args: str) -> str:
        proc = subprocess.run(_as_owner([str(bindir() / tool), *args]), capture_output=True, text=True,
                              timeout=120, check=False, env={**os.environ, "PGPASSWORD": self.password})
        if proc.returncode:
            raise PostgresError(f"{tool} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        return proc.stdout

    def _psql(self, sql: str, db: str = "postgres") -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", db, "-tAc", sql).strip()

    def ready(self) -> bool:
        try:
            self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-q")
        except PostgresError:
            return False
        return True

    def start(self, timeout_s: float = 60.0) -> Postgres:
        """initdb on first use, start the server in its own session, create the Prefect database."""
        data = self.dir / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        if not (data / "PG_VERSION").is_file():
            pwfile = self.dir / ".initdb-password"  # read by initdb (as the data folder's owner), then removed
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            try:
                self._run("initdb", "-D", str(data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
                          "-E", "UTF8", "--no-sync")
            finally:
                pwfile.unlink(missing_ok=True)
        hba = data / "pg_hba.conf"
        if any(line.split()[-1:] == ["trust"] for line in _readable(hba).splitlines()
               if line.strip() and not line.lstrip().startswith("#")):
            raise PostgresError(f"{data} was made with --auth=trust (an older facelift): every local user could log "
                                f"in as a superuser. Stop the stack and delete {self.dir} (its Prefect history), "
                                "then start it again")
        cmd = _as_owner([str(bindir() / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                         "-k", str(self.dir), "-c", "max_connections=200", "-c", "fsync=on"])
        proc = spawn(cmd, dict(os.environ), self.dir / "postgres.log", self.dir)
        self.pid = proc.pid
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PostgresError(f"PostgreSQL did not start on port {self.port}; see {self.dir / 'postgres.log'}")
            time.sleep(0.3)
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":
            self._psql(f"CREATE DATABASE {DATABASE}")
        log.info("postgres up on 127.0.0.1:%d (pid %d, data %s)", self.port, self.pid, data)
        return self

    def size_bytes(self) -> int:
        """Size of the Prefect database (what the server stored)."""
        return int(self._psql(f"SELECT pg_database_size('{DATABASE}')"))

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, then exit), SIGKILL after ``timeout_s``."""
        from facelift.testing import stop_pid

        if self.pid:
            stop_pid(self.pid, timeout_s, sig=signal.SIGINT)
        self.pid = None


def _readable(path: Path) -> str:
    """``path``'s text, or "" if it is absent."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def for_stack(stack_dir: Path, pid: int | None = None,
              password: Callable[[], str] = lambda: "") -> Postgres | None:
    """The stack's database server when ``STACK_DATABASE=postgres`` (else None: Prefect's SQLite); ``password``
    is asked for only then (it creates the secret on first use)."""
    choice = os.environ.get("STACK_DATABASE", "sqlite").lower()
    if choice not in ("sqlite", "postgres", "postgresql"):
        raise PostgresError(f"STACK_DATABASE={choice!r}: use sqlite (default) or postgres")
    if choice == "sqlite":
        return None
    return Postgres(stack_dir / "postgres", int(os.environ.get("STACK_POSTGRES_PORT", "5433")), pid, password())
