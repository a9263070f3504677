"""Completed downstream runs, indexed by what they computed, so a repeated trigger does not compute it again.

A dataset is identified by its URI and the version tag of its manifest (S3 ETag; locally inode, mtime and size):
the build's parameter fingerprint alone would name a dataset deleted and rebuilt at the same URI as the old one,
and its trigger would skip training it. A train run is keyed by (that identity, training config without its run
id/URI); an audit by (the datasets' identities, its options). When a run completes, a small record is written to
``<root>/runs/.done/<kind>-<key>.json`` naming the run; a triggered run with the same key finds it (one read) and
is skipped, with one log line saying which run it would repeat. While a run computes a key it holds a claim on
it (:func:`claim`: a lease taken by a create-exclusive write, renewed while it runs), so two triggered runs that
start together do not both compute it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from facelift.dataset import MANIFEST, Dataset, DatasetError
from facelift.lease import Lease, LeaseHeld
from facelift.storage import Store

log = logging.getLogger(__name__)
INDEX = "runs/.done"


def dataset_identity(ds: Dataset) -> str:
    """``<uri>@<manifest version tag>``: which dataset, and which build of it (a rebuild writes a new manifest)."""
    try:
        return f"{ds.uri}@{ds.store.tag(MANIFEST)}"
    except FileNotFoundError:
        raise DatasetError(f"dataset {ds.dataset_id} has no {MANIFEST}: the build has not finished") from None


def run_key(kind: str, fingerprints: list[str], config: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, "datasets": fingerprints, "config": config}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def train_key(cfg: Any) -> tuple[Store, str]:
    """(runs root, key) of a training config (a ``TrainConfig``): its dataset's fingerprint and every setting
    but where the run is written."""
    ds = Dataset.open(cfg.dataset_uri, cfg.endpoint_url)
    config = cfg.model_dump(mode="json", exclude={"run_id", "run_uri", "dataset_uri", "endpoint_url"})
    return ds.root_store(), run_key("train", [dataset_identity(ds)], config)


@contextlib.contextmanager
def claim(root: Store, key: str, what: str) -> Iterator[str | None]:
    """Hold the claim on computing ``key`` for the ``with`` block: yields None when this run holds it, else who
    does (the caller skips). The claim is a :class:`~facelift.lease.Lease` (create-exclusive, renewed while held,
    free again ttl after its holder died), released on exit."""
    lease = Lease(root.child(f"{INDEX}/{key}"), what, wait_s=0)
    try:
        lease.acquire()
    except LeaseHeld as exc:
        yield str(exc)
        return
    try:
        yield None
    finally:
        lease.release()


def find_completed(root: Store, key: str) -> dict[str, Any] | None:
    """The record of a completed run with this key, if any."""
    try:
        return json.loads(root.read_bytes(f"{INDEX}/{key}.json"))
    except FileNotFoundError:
        return None


def record_completed(root: Store, key: str, record: dict[str, Any]) -> None:
    root.write_bytes(f"{INDEX}/{key}.json", json.dumps({"key": key, **record}, indent=1, default=str).encode())


@contextlib.contextmanager
def unless_done(root: Store, key: str, kind: str, what: str, enabled: bool,
                logger: logging.Logger | logging.LoggerAdapter) -> Iterator[dict[str, Any] | None]:
    """Run the ``with`` block's computation of ``key`` once: yields None when the caller should compute it (it
    holds the claim for the block), else the completed run's result (``{}`` while another run holds the claim),
    after one log line saying why it is skipped. ``enabled`` False (an explicit run): always yields None."""
    if not enabled:
        yield None
        return
    record = find_completed(root, key)
    if record:
        logger.info(skip_line(kind, what, record))
        yield record.get("result", {})
        return
    with claim(root, key, f"{kind} of {what}") as busy:
        record = None if busy else find_completed(root, key)  # finished while this run was starting
        if busy or record:
            logger.info(skip_line(kind, what, record) if record else f"skipped: {busy}")
            yield (record or {}).get("result", {})
            return
        yield None


def skip_line(kind: str, what: str, record: dict[str, Any]) -> str:
    """The one log line of a skipped run."""
    return (f"skipped: this {kind} would repeat run {record.get('run_id')} ({record.get('run_uri')}), which "
            f"already completed for {what}; pass skip_completed=false to run it again")
