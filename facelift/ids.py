"""One rule for dataset and run ids, checked before any work, and Prefect artifact keys derived from them.

An id is 1 to 128 characters among letters, digits, ``.``, ``_`` and ``-``, and holds no ``..`` (nor is
``.``): it becomes one folder name (``datasets/<id>``, ``runs/<id>``), so ``/`` and ``..`` must never reach a
storage path.
"""

from __future__ import annotations

import hashlib
import json
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
    -> ``build-v1-2-<hash>``: the readable part, shortened to fit, then always 8 hex digits of the parts' hash
    (of their JSON list, so ``("a-b", "c")`` and ``("a", "b-c")`` differ too). No id can forge another's key: an id
    that already looks like ``v1-2-<hash>`` gets a hash of its own."""
    text = "-".join(parts)
    key = re.sub("-{2,}", "-", _KEY_BAD.sub("-", text.lower()).strip("-")) or "artifact"
    digest = hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()[:8]
    return f"{key[:ARTIFACT_KEY_LEN - 9].rstrip('-')}-{digest}"
