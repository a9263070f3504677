"""One rule for dataset and run ids, checked before any work, and Prefect artifact keys derived from them.

An id is 1 to 128 characters among letters, digits, ``.``, ``_`` and ``-``, and holds no ``..`` (nor is
``.``): it becomes one folder name (``datasets/<id>``, ``runs/<id>``), so ``/`` and ``..`` must never reach a
storage path.
"""

from __future__ import annotations

import hashlib
import re

MAX_ID_LEN = 128
_ID = re.compile(r"[A-Za-z0-9._-]+")
_KEY_BAD = re.compile(r"[^a-z0-9-]+")
ARTIFACT_KEY_LEN = 60


class IdError(ValueError):
    """A dataset or run id breaks the id rule."""


def check_id(value: str, what: str = "dataset id") -> str:
    """``value`` if it is a valid id, else :class:`IdError` with one line saying what is wrong."""
    if not isinstance(value, str) or not value:
        raise IdError(f"{what} must be a non-empty string")
    problem = None
    if len(value) > MAX_ID_LEN:
        problem = f"is {len(value)} characters long (at most {MAX_ID_LEN})"
    elif not _ID.fullmatch(value):
        bad = sorted({c for c in value if not _ID.fullmatch(c)})
        problem = f"contains {' '.join(repr(c) for c in bad)}"
    elif ".." in value or value == ".":
        problem = "contains '..'" if ".." in value else "is '.'"
    if problem:
        raise IdError(f"{what} {value[:140]!r} {problem}: use letters, digits, '.', '_' and '-' (no '..', at most "
                      f"{MAX_ID_LEN} characters)")
    return value


def artifact_key(*parts: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) from any text, e.g. ``("build", "v1.2")``
    -> ``build-v1-2-<hash>``. Keys that had to change (case, ``.``, ``_``) or be shortened get 8 hex
    digits of the original's hash, so two ids never share a key."""
    text = "-".join(parts)
    key = _KEY_BAD.sub("-", text.lower()).strip("-") or "artifact"
    key = re.sub("-{2,}", "-", key)
    if key != text or len(key) > ARTIFACT_KEY_LEN:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        key = f"{key[:ARTIFACT_KEY_LEN - 9].rstrip('-')}-{digest}"
    return key
