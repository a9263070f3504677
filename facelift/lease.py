"""One writer per dataset and per run: a lease object in the dataset's (or run's) folder, and a fence on it.

``lease.json`` holds the holder (host, pid, a random id), a **generation** number, the holder's ttl and, for
people, when it was taken and last renewed. Every change is a compare-and-swap on the object's version
(``If-None-Match: *`` / ``If-Match`` on S3; a lock plus rename on local disk), so of two writers exactly one
wins. The holder renews it from a background thread every ``ttl/4``.

Expiry never compares clocks between machines. A waiter judges a lease expired on its **own monotonic clock**:
the record must stay unchanged for the holder's ttl from the moment the waiter first saw that version (as
Kubernetes leader election does), so a waiter whose wall clock runs ahead cannot take a live lease. The holder,
in turn, stops trusting its lease once its last successful renewal is older than ``ttl - ttl/4`` on its own
monotonic clock (:meth:`Lease.check`), before any waiter can take it over.

Taking a lease over bumps the generation. Writers publish only under their generation: :class:`Fence` (picklable,
handed to Ray workers and trainers) reads the record before each shard commit, manifest write or checkpoint and
refuses once another generation holds it. Release marks the record released (an ``If-Match`` write, so a lease
that is no longer ours is left alone); the generation lives on in the object.

Fallback: a store that ignores ``If-None-Match`` (SeaweedFS, MinIO and AWS S3 honour it; checked for SeaweedFS
in tests/test_lease.py) would let both PUTs succeed; every acquire therefore reads the lease back after a short
settle delay and only proceeds if it is still its own.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from facelift.storage import StorageError, Store

log = logging.getLogger(__name__)
LEASE_FILE = "lease.json"


class LeaseHeld(StorageError):
    """Another writer holds the lease (after waiting ``wait_s``), or this writer lost it."""


class LeaseLost(LeaseHeld):
    """This writer's lease was taken over, or could not be renewed in time: it must stop writing."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def describe(lease: dict[str, Any]) -> str:
    return (f"{lease.get('holder')} (generation {lease.get('generation', 0)}, since "
            f"{_iso(lease.get('acquired', 0))}, last heartbeat {_iso(lease.get('heartbeat', 0))}, "
            f"ttl {lease.get('ttl_s', 0):.0f}s)")


def _parse(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def read_record(store: Store) -> tuple[dict[str, Any] | None, str | None]:
    """(record, version tag); (None, None) if there is none; ({}, tag) if it is unreadable."""
    try:
        data, tag = store.read_tagged(LEASE_FILE)
    except FileNotFoundError:
        return None, None
    return _parse(data), tag


@dataclass(frozen=True)
class Fence:
    """What a writer under a lease checks before it publishes (picklable: it travels to Ray workers)."""

    uri: str
    endpoint_url: str | None
    holder: str
    generation: int
    what: str

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the lease record still names this holder and generation."""
        record, _ = read_record(Store(self.uri, self.endpoint_url))
        if record and record.get("holder") == self.holder and record.get("generation") == self.generation \
                and not record.get("released"):
            return
        now = describe(record) if record and not record.get("released") else "nobody (released or deleted)"
        raise LeaseLost(f"{self.what}: this writer's lease (generation {self.generation}) is now held by {now}; "
                        f"stopping without writing")


class Lease:
    """``with Lease(store, "dataset v1"):`` -- ``store`` is the dataset's or run's folder."""

    def __init__(self, store: Store, what: str, ttl_s: float = 120.0, wait_s: float = 3600.0, poll_s: float = 2.0,
                 settle_s: float = 0.5, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.store, self.what, self.ttl_s, self.wait_s, self.poll_s = store, what, ttl_s, wait_s, poll_s
        self.settle_s, self.clock, self.monotonic = settle_s, clock, monotonic
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.generation = 0
        self.acquired_at: float | None = None
        self.lost: str | None = None
        self.on_lost: Callable[[str], None] | None = None  # called once, from the heartbeat thread
        self._renewed = 0.0  # monotonic time of the last successful write of our record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def margin_s(self) -> float:
        return self.ttl_s / 4

    @property
    def fence(self) -> Fence:
        return Fence(self.store.uri, self.store.endpoint_url, self.holder, self.generation, self.what)

    # -- the record -------------------------------------------------------------------------------
    def _record(self, generation: int, released: bool = False) -> bytes:
        now = self.clock()
        return json.dumps({"holder": self.holder, "what": self.what, "generation": generation,
                           "ttl_s": self.ttl_s, "acquired": self.acquired_at or now, "heartbeat": now,
                           **({"released": True} if released else {})}).encode()

    # -- acquire / renew / release ------------------------------------------------------------------
    def acquire(self) -> Lease:
        deadline = self.monotonic() + self.wait_s
        waiting, seen_tag, seen_at = False, None, 0.0
        while True:
            current, tag = read_record(self.store)
            if tag != seen_tag:  # a new version: its ttl counts from now, on this process's own clock
                seen_tag, seen_at = tag, self.monotonic()
            generation = int((current or {}).get("generation", 0)) + 1
            unchanged_s = self.monotonic() - seen_at
            got: bool | None = None
            if current is None:
                got = self.store.create_exclusive(LEASE_FILE, self._record(generation))
            elif current.get("released"):
                got = self.store.replace_if(LEASE_FILE, self._record(generation), tag)
            elif unchanged_s > float(current.get("ttl_s") or self.ttl_s):
                log.warning("%s: the lease of %s has not been renewed for %.0fs; taking it over", self.what,
                            describe(current) if current else "an unreadable record", unchanged_s)
                got = self.store.replace_if(LEASE_FILE, self._record(generation), tag)
            if got:
                time.sleep(self.settle_s)  # a store that ignores the condition: the last write wins, so check
                mine, _ = read_record(self.store)
                if mine and mine.get("holder") == self.holder and mine.get("generation") == generation:
                    self.generation, self.acquired_at = generation, self.clock()
                    self._renewed = self.monotonic()
                    self._start_heartbeat()
                    log.info("%s: lease taken by %s (generation %d)", self.what, self.holder, generation)
                    return self
            if got is not None:  # lost a race to take it: read who won
                current, _ = read_record(self.store)
            holder = describe(current) if current and not current.get("released") else "another writer"
            if self.monotonic() >= deadline:
                raise LeaseHeld(f"{self.what} is being written by {holder}"
                                + (f"; waited {self.wait_s:.0f}s" if self.wait_s else "")
                                + f". Run again once it has finished, or once its lease has gone unrenewed for "
                                  f"its ttl ({self.store.url(LEASE_FILE)})")
            if not waiting and current:
                log.warning("%s is being written by %s: waiting up to %.0fs for it", self.what, holder, self.wait_s)
                waiting = True
            time.sleep(min(self.poll_s, max(0.0, deadline - self.monotonic())))

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            log.error("%s: lease lost: %s", self.what, why)
            if self.on_lost is not None:
                self.on_lost(why)

    def _beat(self) -> None:
        wait = self.ttl_s / 4
        while not self._stop.wait(wait):
            wait = self.ttl_s / 16  # after a failure, try again sooner
            try:
                current, tag = read_record(self.store)
                if not current or current.get("holder") != self.holder or current.get("released") \
                        or current.get("generation") != self.generation:
                    self._lose(f"now held by {describe(current)}" if current else "the record was deleted")
                    return
                if self.store.replace_if(LEASE_FILE, self._record(self.generation), tag):
                    self._renewed, wait = self.monotonic(), self.ttl_s / 4
                    continue
                failure = "the record changed during the renewal"  # the next beat sees by whom
            except Exception as exc:  # noqa: BLE001 - an outage, a bad record, anything: keep trying until ttl
                failure = f"{type(exc).__name__}: {exc}"
            stale = self.monotonic() - self._renewed
            log.warning("%s: lease heartbeat failed (%.0fs since the last renewal): %s", self.what, stale, failure)
            if stale > self.ttl_s:
                self._lose(f"not renewed for {stale:.0f}s (ttl {self.ttl_s:.0f}s); last error: {failure}")
                return

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease was lost, or if its last renewal is too old to trust (a
        waiter may take it over ``ttl`` after it last saw it change): do not publish."""
        if self.lost:
            raise LeaseLost(f"{self.what}: this writer's lease was lost ({self.lost}); stopping")
        stale = self.monotonic() - self._renewed
        if self.acquired_at is not None and stale > self.ttl_s - self.margin_s:
            raise LeaseLost(f"{self.what}: this writer's lease was last renewed {stale:.0f}s ago (ttl "
                            f"{self.ttl_s:.0f}s): it may be taken over; stopping")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.acquired_at is None:
            return
        self.acquired_at = None
        try:
            current, tag = read_record(self.store)
            if current and current.get("holder") == self.holder and current.get("generation") == self.generation:
                self.store.replace_if(LEASE_FILE, self._record(self.generation, released=True), tag)
        except StorageError as exc:
            log.warning("%s: could not release the lease (it expires after %.0fs): %s", self.what, self.ttl_s, exc)

    def __enter__(self) -> Lease:
        return self if self.acquired_at is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_free(store: Store) -> bool:
    """Whether no writer holds ``store``'s lease (none was ever taken, or the last one was released)."""
    record, _ = read_record(store)
    return record is None or bool(record.get("released"))
