"""The run manifest (``tasks/enhance/manifest.py``) that generate and enhance resume from."""

from __future__ import annotations

from facelift.storage import Store
from facelift.tasks.enhance.manifest import Manifest


def test_a_torn_last_line_loses_only_itself(tmp_path) -> None:
    """A run killed mid-write leaves a torn last line; the next run's records are kept (before the fix the first
    new record was glued onto the torn line and dropped with it)."""
    (tmp_path / "m.jsonl").write_text('{"a": 1}\n{"b": ')
    m = Manifest(Store(str(tmp_path)), "m.jsonl")
    m.append({"c": 3})
    m.append({"d": 4})
    assert Manifest(Store(str(tmp_path)), "m.jsonl").records() == [{"a": 1}, {"c": 3}, {"d": 4}]
