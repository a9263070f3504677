"""An append-only JSON-lines record of a run's per-item outcomes, kept in the output folder (or prefix).

``generate`` writes ``manifest.jsonl`` (one record per prompt: ok with its file, or failed with the error) and
``enhance`` writes ``enhance-manifest.jsonl`` (one record per output: its source and the head's weights hash);
a rerun reads it to skip what is done. Local folders get one appended, flushed line per record; object stores
have no append, so the whole object is rewritten every ``every`` records and on close (a run killed in between
loses at most those records: the next run redoes or re-checks those items). A torn last line is ignored.
Only the standard library is imported at module import time.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)


class Manifest:
    """``Manifest(store, "manifest.jsonl")``: ``records()`` reads it back, ``append(rec)`` adds a record."""

    def __init__(self, store: Any, name: str, every: int = 256) -> None:
        self.store, self.name, self.every = store, name, every
        self._records: list[dict[str, Any]] | None = None
        self._unsaved = 0

    def url(self) -> str:
        return self.store.url(self.name)

    def records(self) -> list[dict[str, Any]]:
        if self._records is None:
            try:
                raw = self.store.read_bytes(self.name).decode("utf-8", "replace")
            except FileNotFoundError:
                raw = ""
            self._records = []
            for line in raw.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: ignoring a torn or corrupt line", self.url())
                    continue
                if isinstance(rec, dict):
                    self._records.append(rec)
        return self._records

    def append(self, record: dict[str, Any]) -> None:
        records = self.records()
        records.append(record)
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        if self.store.is_local:
            from pathlib import Path

            path = Path(self.store.path(self.name))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a+b") as fh:  # appends always go to the end, whatever was read
                if fh.seek(0, 2):
                    fh.seek(-1, 2)
                    if fh.read(1) != b"\n":  # a torn last line (a killed run): end it, so this record stands alone
                        fh.write(b"\n")
                fh.write(line.encode("utf-8"))
                fh.flush()
            return
        self._unsaved += 1
        if self._unsaved >= self.every:
            self.flush()

    def flush(self) -> None:
        """Object stores: write every record so far (a no-op for local folders, which append as they go)."""
        if self.store.is_local or not self._unsaved:
            return
        data = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in self.records())
        self.store.write_bytes(self.name, data.encode())
        self._unsaved = 0
