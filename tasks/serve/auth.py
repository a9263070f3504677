"""The bearer-token API key of ``facelift serve``: ``Authorization: Bearer <key>`` on ``/generate`` and ``/compare``.

The key lives in a file (``facelift serve --api-key-file``; on Kubernetes a mounted Secret), read once by the
ingress replica; it is never taken from the environment or the Serve config, and never logged. ``/``, ``/healthz``
and ``/readyz`` stay open (the page asks for the key and sends it with each request).
"""

from __future__ import annotations

import hmac
from pathlib import Path


class ApiKeyError(RuntimeError):
    """The key file is missing, unreadable or empty."""


def read_api_key(path: str | Path) -> str:
    """The key in ``path`` (its first line, stripped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ApiKeyError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ApiKeyError(f"the API key file {path} is empty")
    return key


def bearer_ok(header: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``key`` as a bearer token (constant-time comparison)."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
