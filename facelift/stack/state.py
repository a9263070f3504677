"""What each running service of the local stack was started with, and the anonymous probes ``up`` makes before
it says the stack is up.

``<stack>/state.json`` maps each service to a digest of the settings it was started with (auth on or off, ports,
database, the state format). ``up`` restarts a running service whose digest differs or is missing, so a server
started open (``STACK_AUTH=off``) or by an older facelift is not kept by a plain ``make stack``. Then, with auth
on, it asks each HTTP service something as an anonymous neighbour would, and refuses to report "up" unless each
answer is 401 or 403 (``/api/health`` needs no auth, so a health check alone cannot tell an open server).
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

FORMAT = 2  # bump when what a service is started with changes: running services are then restarted


def digest(settings: dict[str, Any]) -> str:
    text = json.dumps({"format": FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StackState:
    """``state.json``: service name -> digest of the settings it runs with."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def matches(self, name: str, want: str) -> bool:
        return self.load().get(name) == want

    def record(self, name: str, value: str | None) -> None:
        data = self.load()
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
        self.path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _status(url: str, data: bytes | None = None) -> int | str:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback services of this stack
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return f"unreachable ({exc})"


def anonymous_answers(api_url: str, s3_endpoint: str, bucket: str, filer_port: int | None) -> dict[str, int | str]:
    """What each service answers a request that carries no credentials."""
    answers: dict[str, int | str] = {
        "Prefect API (POST /flows/filter)": _status(f"{api_url}/flows/filter", b"{}"),
        f"S3 gateway (GET /{bucket})": _status(f"{s3_endpoint}/{bucket}"),
    }
    if filer_port:
        answers[f"SeaweedFS filer (127.0.0.1:{filer_port})"] = _status(f"http://127.0.0.1:{filer_port}/buckets/")
    return answers


def open_services(answers: dict[str, int | str]) -> list[str]:
    """The services among ``answers`` that did not refuse (401/403)."""
    return [f"{name} answered {code}" for name, code in answers.items() if code not in (401, 403)]


def flag_value(cmdline: tuple[str, ...], flag: str) -> int | None:
    """``-flag=N`` from a command line, as an int."""
    for arg in cmdline:
        if arg.startswith(f"-{flag}="):
            return int(arg.split("=", 1)[1])
    return None
