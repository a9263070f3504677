"""Completed downstream runs, indexed by what they computed, so a repeated trigger does not compute it again.

A train run is identified by (dataset fingerprint, training config without its run id/URI); an audit by (the
datasets' fingerprints, its options); an evaluation by (dataset fingerprint, head runs, options). When a run
completes, a small record is written to ``<root>/runs/.done/<kind>-<key>.json`` naming the run; a triggered
run with the same key finds it (one read) and is skipped, with one log line saying which run it would repeat.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from facelift.dataset import Dataset
from facelift.storage import Store

log = logging.getLogger(__name__)
INDEX = "runs/.done"


def dataset_fingerprint(dataset_uri: str, endpoint_url: str | None = None) -> str:
    """The content fingerprint recorded in ``dataset.json`` (the URI itself if the dataset has none)."""
    info = Dataset.open(dataset_uri, endpoint_url).info()
    return str(info.get("fingerprint") or dataset_uri)


def run_key(kind: str, fingerprints: list[str], config: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, "datasets": fingerprints, "config": config}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def train_key(cfg: Any) -> tuple[Store, str]:
    """(runs root, key) of a training config (a ``TrainConfig``): its dataset's fingerprint and every setting
    but where the run is written."""
    root = Dataset(Store(cfg.dataset_uri, cfg.endpoint_url)).root_store()
    config = cfg.model_dump(mode="json", exclude={"run_id", "run_uri", "dataset_uri", "endpoint_url"})
    return root, run_key("train", [dataset_fingerprint(cfg.dataset_uri, cfg.endpoint_url)], config)


def find_completed(root: Store, key: str) -> dict[str, Any] | None:
    """The record of a completed run with this key, if any."""
    try:
        return json.loads(root.read_bytes(f"{INDEX}/{key}.json"))
    except FileNotFoundError:
        return None


def record_completed(root: Store, key: str, record: dict[str, Any]) -> None:
    root.write_bytes(f"{INDEX}/{key}.json", json.dumps({"key": key, **record}, indent=1, default=str).encode())


def skip_line(kind: str, what: str, record: dict[str, Any]) -> str:
    """The one log line of a skipped run."""
    return (f"skipped: this {kind} would repeat run {record.get('run_id')} ({record.get('run_uri')}), which "
            f"already completed for {what}; pass skip_completed=false to run it again")
