"""Messages that fit on one line: every failed command, shard and flow state ends in one."""

from __future__ import annotations


def first_line(message: object, limit: int = 500) -> str:
    """The first non-blank line of ``str(message)``, at most ``limit`` characters ("" if there is none)."""
    for line in str(message).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""
