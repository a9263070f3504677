"""Processes of the local stack: started in their own session, stopped by pid (never by name)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from facelift.testing import stop_pid


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


@dataclass(frozen=True)
class ProcRecord:
    """What a pid file records: the pid, the process's start time (clock ticks after boot, field 22 of
    ``/proc/<pid>/stat``) and its command line. After a reboot or pid reuse the pid names another process, whose
    start time or command line differs: ``matches()`` is False and the stack neither keeps nor stops it."""

    pid: int
    start: int
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcRecord | None:
        """The live process ``pid`` as a record; None if there is none (or only a zombie)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
        if fields[0] == "Z":
            return None
        return cls(pid, int(fields[19]), tuple(raw.decode(errors="replace").split("\0")[:-1]))

    def matches(self) -> bool:
        return ProcRecord.of(self.pid) == self

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, path: Path) -> ProcRecord | None:
        """The record in ``path``; None if absent, or a bare pid (an older stack's file: not verifiable)."""
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["start"]), tuple(data["cmdline"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None


def stop_worker(pid: int, timeout_s: float = 20.0) -> None:
    """Stop a Prefect worker: an idle worker ignores one SIGTERM, so SIGINT twice, then SIGKILL."""
    for _ in range(2):
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        stop_pid(pid, timeout_s=2)
    stop_group(pid)  # flow runs it started (same process group)


def stop_group(pgid: int, timeout_s: float = 10.0) -> None:
    """Stop what is left of a process group this module started (``start_new_session``: pgid = leader pid):
    flow-run subprocesses of a worker, raylet/GCS of a Ray head. SIGTERM, bounded wait, SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.2)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def spawn(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
