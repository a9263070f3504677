"""Committing a rendered shard without ever throwing the render away.

A worker spools the shard's Parquet bytes to local disk before it uploads them, then retries the upload with
exponential backoff and jitter over those same bytes for up to ``storage.commit_retry_s`` (an object-store
outage costs waiting, not GPU time). If the budget runs out, or the worker dies mid-commit, the spooled copy
stays: the next attempt at that shard on this node (a task retry, a restarted actor, a rerun of the build)
commits it instead of rendering again. The spool is deleted once the shard object exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from facelift.config import StorageConfig
from facelift.dataset import Dataset, read_parquet_bytes, shard_schema, table_to_parquet_bytes
from facelift.errors import first_line
from facelift.lease import Fence, LeaseLost
from facelift.storage import PermanentStorageError, StorageError

log = logging.getLogger(__name__)


class CommitError(StorageError):
    """A shard's commit failed for the whole retry budget; its render is kept in the spool."""


class PermanentCommitError(CommitError):
    """The store refused a shard's commit for good (credentials denied/expired/revoked, no bucket): not retried,
    neither here nor by the shard task."""


class Spool:
    """Rendered shards of one dataset on this node's disk, waiting for their commit."""

    def __init__(self, cache_dir: str | os.PathLike[str], dataset_uri: str):
        key = hashlib.sha256(dataset_uri.encode()).hexdigest()[:16]
        self.dir = Path(cache_dir).expanduser() / "spool" / key

    def path(self, shard: int) -> Path:
        return self.dir / f"{shard:05d}.parquet"

    def save(self, shard: int, data: bytes) -> Path:
        """Write atomically (temp name, then rename): a half-written spool file never looks valid."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(shard)
        tmp = final.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, final)
        return final

    def load(self, shard: int, pair_ids: list[str]) -> tuple[bytes, pa.Table] | None:
        """The spooled shard, if it holds exactly these pairs in this order; a stale or corrupt file is removed."""
        path = self.path(shard)
        if not path.is_file():
            return None
        try:
            data = path.read_bytes()
            table = read_parquet_bytes(data)
            if table.column("pair_id").to_pylist() == pair_ids and table.schema.equals(shard_schema()):
                return data, table
            log.warning("spooled shard %05d at %s does not match the plan: rendering it again", shard, path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means "not spooled"
            log.warning("spooled shard %05d at %s is unreadable (%s): rendering it again", shard, path, exc)
        path.unlink(missing_ok=True)
        return None

    def drop(self, shard: int) -> None:
        self.path(shard).unlink(missing_ok=True)


def backoff_delays(policy: StorageConfig, rng: random.Random | None = None):
    """Exponential backoff with equal jitter: attempt k waits in [d/2, d], d = min(max, base * 2**k)."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        d = min(policy.commit_backoff_max_s, policy.commit_backoff_s * 2 ** attempt)
        yield d / 2 + rng.random() * d / 2
        attempt += 1


def commit_with_retry(dataset: Dataset, shard: int, data: bytes, policy: StorageConfig,
                      sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic,
                      kept_at: Path | None = None, fence: Fence | None = None) -> int:
    """Upload one shard object, retrying transient storage errors for ``policy.commit_retry_s`` seconds.

    Each failed attempt is logged once, naming the store (never its credentials). A permanent refusal
    (:class:`PermanentStorageError`: AccessDenied, ExpiredToken, ...) fails at once. ``fence``: each attempt
    first checks that the build's lease still holds (:class:`~facelift.lease.LeaseLost` at once if another
    writer took it over; an unreadable lease record is retried like the commit). Returns bytes written.
    """
    start, attempts = clock(), 0
    delays = backoff_delays(policy)
    while True:
        attempts += 1
        try:
            if fence is not None:
                fence.check()
            return dataset.commit_shard_bytes(shard, data)
        except LeaseLost:
            raise
        except PermanentStorageError as exc:
            kept = f"; the rendered shard is kept at {kept_at}" if kept_at else ""
            raise PermanentCommitError(f"shard {shard:05d}: {exc}{kept}") from None
        except StorageError as exc:
            waited, reason = clock() - start, first_line(exc) or type(exc).__name__
            delay = next(delays)
            if waited + delay > policy.commit_retry_s:
                kept = f"; the rendered shard is kept at {kept_at}" if kept_at else ""
                raise CommitError(f"shard {shard:05d}: commit to {dataset.store.where()} failed for {waited:.0f}s "
                                  f"({attempts} attempts): {reason}{kept}") from None
            log.warning("shard %05d: commit to %s failed (attempt %d, %.0fs so far): %s; retrying in %.1fs",
                        shard, dataset.store.where(), attempts, waited, reason, delay)
            sleep(delay)


def encode_shard(table: pa.Table) -> bytes:
    return table_to_parquet_bytes(table.cast(shard_schema()))
