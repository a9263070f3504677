"""What a generated image records about how it was made (no secrets: ids, revisions, hashes, settings).

- ``schnell_revision``: the pinned revision, else the commit of the Hugging Face snapshot actually loaded (the
  snapshot folder's name *is* the commit: ``.../models--owner--name/snapshots/<commit>``); ``schnell_commit``
  holds the snapshot commit alone ("" for a local folder or the tiny model).
- ``schnell_transformer_sha256``: sha256 over the transformer folder's files' *bytes* (each file's sha256 is
  memoised by (path, size, mtime), so a second load costs no read), not over blob ids.
- ``head_sha256``: sha256 of the head's weights file.
- :func:`a1111_parameters`: the ``parameters`` text AUTOMATIC1111's web UI writes (and Civitai, InvokeAI and
  most image browsers read).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from facelift.tasks.enhance.metadata import a1111_value

_COMMIT = re.compile(r"[0-9a-f]{40}")


def snapshot_commit(folder: str | Path) -> str:
    """The commit of a Hugging Face cache snapshot folder, or "" for any other folder."""
    path = Path(folder)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--") and \
            _COMMIT.fullmatch(path.name):
        return path.name
    return ""


def transformer_sha256(folder: str | Path, component: str = "transformer", cache_dir: str | None = None) -> str:
    """sha256 over (relative name, sha256 of the bytes) of every file of ``folder/component``; "missing" if none.

    Each file's sha256 is kept in ``cache_dir/file-sha256.json`` keyed by (resolved path, size, mtime), so the
    ~24 GB FLUX transformer is read once per machine, not once per process."""
    sub = Path(folder) / component
    if not sub.is_dir():
        return "missing"
    cache = _HashCache(Path(cache_dir) / "file-sha256.json" if cache_dir else None)
    h = hashlib.sha256()
    for path in sorted(p for p in sub.rglob("*") if p.is_file()):
        h.update(path.relative_to(sub).as_posix().encode() + b"\0")
        h.update(cache.sha256(path.resolve()).encode())  # symlinks into blobs/: the blob's bytes
    cache.save()
    return h.hexdigest()


class _HashCache:
    """File sha256s keyed by (path, size, mtime_ns), in memory and optionally in a JSON file."""

    _memory: dict[str, str] = {}

    def __init__(self, file: Path | None) -> None:
        self.file, self.dirty = file, False
        if file is not None and file.is_file():
            try:
                stored = json.loads(file.read_text())
                self._memory.update({k: v for k, v in stored.items() if isinstance(v, str)})
            except (OSError, ValueError, AttributeError):
                pass  # a corrupt cache is rebuilt

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self._memory:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            self._memory[key] = digest.hexdigest()
            self.dirty = True
        return self._memory[key]

    def save(self) -> None:
        if self.file is None or not self.dirty:
            return
        import os
        import tempfile

        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".file-sha256-")
            with os.fdopen(fd, "w") as fh:
                json.dump(self._memory, fh)
            os.replace(tmp, self.file)
        except OSError:
            pass  # the cache is an optimisation only


def a1111_parameters(provenance: dict[str, Any]) -> str:
    """AUTOMATIC1111's ``parameters`` text: the prompt, then one line of ``Key: value`` pairs."""
    size = provenance.get("size", "")
    fields = {
        "Steps": provenance.get("steps"),
        "Sampler": "Euler",  # FLUX's flow-matching Euler scheduler
        "CFG scale": provenance.get("guidance"),
        "Seed": provenance.get("seed"),
        "Size": f"{size}x{size}",
        "Model hash": str(provenance.get("schnell_transformer_sha256", ""))[:10],
        "Model": str(provenance.get("schnell_model", "")).rsplit("/", 1)[-1],
        "Model revision": provenance.get("schnell_revision") or None,
        "Head": provenance.get("head"),
        "Head hash": str(provenance.get("head_sha256", ""))[:10] or None,
        "Head run": provenance.get("head_run_id"),
        "Version": f"facelift {provenance.get('facelift_version', '')}".strip(),
    }
    line = ", ".join(f"{k}: {a1111_value(v)}" for k, v in fields.items() if v not in (None, ""))
    prompt = str(provenance.get("prompt", "")).replace("\n", " ")
    return f"{prompt}\n{line}"

