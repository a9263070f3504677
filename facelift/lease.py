"""One writer per dataset and per run: a lease object in the dataset's (or run's) folder.

``lease.json`` holds the holder (host, pid, a random id), when it was taken, its last heartbeat and its expiry.
It is created atomically (``O_EXCL`` on local disk, ``If-None-Match: *`` on S3), so of two writers exactly one
gets it. The holder renews it from a background thread every ``ttl/4``; a crashed holder stops renewing and
its lease expires after ``ttl``, when the next writer takes it over with a conditional replace (``If-Match`` on
the expired version). A second writer waits (``wait_s``), then exits with one line naming the holder.

Fallback: a store that ignores ``If-None-Match`` (SeaweedFS, MinIO and AWS S3 honour it; checked for SeaweedFS
in tests/test_lease.py) would let both PUTs succeed; every acquire therefore reads the lease back after a short
settle delay and only proceeds if it is still its own, which leaves a window only for writes in the same instant.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from facelift.storage import StorageError, Store

log = logging.getLogger(__name__)
LEASE_FILE = "lease.json"


class LeaseHeld(StorageError):
    """Another writer holds the lease (after waiting ``wait_s``), or this writer lost it."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def describe(lease: dict[str, Any]) -> str:
    return (f"{lease.get('holder')} (since {_iso(lease.get('acquired', 0))}, last heartbeat "
            f"{_iso(lease.get('heartbeat', 0))}, expires {_iso(lease.get('expires', 0))})")


class Lease:
    """``with Lease(store, "dataset v1"):`` -- ``store`` is the dataset's or run's folder."""

    def __init__(self, store: Store, what: str, ttl_s: float = 120.0, wait_s: float = 3600.0, poll_s: float = 2.0,
                 settle_s: float = 0.5, clock=time.time):
        self.store, self.what, self.ttl_s, self.wait_s, self.poll_s = store, what, ttl_s, wait_s, poll_s
        self.settle_s, self.clock = settle_s, clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.acquired_at: float | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record -------------------------------------------------------------------------------
    def _record(self) -> bytes:
        now = self.clock()
        return json.dumps({"holder": self.holder, "what": self.what, "acquired": self.acquired_at or now,
                           "heartbeat": now, "expires": now + self.ttl_s}).encode()

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(lease, version tag); (None, None) if there is none; ({}, tag) while one is being written."""
        try:
            data, tag = self.store.read_tagged(LEASE_FILE)
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(data), tag
        except ValueError:
            return {}, tag

    def _mine(self) -> bool:
        current, _ = self._read()
        return bool(current) and current.get("holder") == self.holder

    # -- acquire / renew / release ------------------------------------------------------------------
    def acquire(self) -> Lease:
        deadline = time.monotonic() + self.wait_s
        waiting, unreadable_since = False, None
        while True:
            current, tag = self._read()
            unreadable_since = (unreadable_since or time.monotonic()) if current == {} else None
            if current is None:
                got = self.store.create_exclusive(LEASE_FILE, self._record())
            elif current and current.get("expires", 0) < self.clock():
                log.warning("%s: the lease of %s has expired; taking it over", self.what, describe(current))
                got = self.store.replace_if(LEASE_FILE, self._record(), tag)
            elif unreadable_since is not None and time.monotonic() - unreadable_since > self.ttl_s:
                log.warning("%s: the lease object has been unreadable for %.0fs (a writer died creating it); "
                            "taking it over", self.what, self.ttl_s)
                got = self.store.replace_if(LEASE_FILE, self._record(), tag)
            else:
                got = None  # held and live: no attempt, and ``current`` is fresh
            if got:
                time.sleep(self.settle_s)  # a store that ignores the condition: the last write wins, so check
                if self._mine():
                    self.acquired_at = self.clock()
                    self._start_heartbeat()
                    log.info("%s: lease taken by %s", self.what, self.holder)
                    return self
            if got is not None:  # lost a race to take it: read who won
                current, _ = self._read()
            holder = describe(current) if current else "another writer"
            if time.monotonic() >= deadline:
                raise LeaseHeld(f"{self.what} is being written by {holder}"
                                + (f"; waited {self.wait_s:.0f}s" if self.wait_s else "")
                                + f". Run again once it has finished, or after its lease expires "
                                  f"({self.store.url(LEASE_FILE)})")
            if not waiting and current:
                log.warning("%s is being written by %s: waiting up to %.0fs for it", self.what, holder, self.wait_s)
                waiting = True
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                current, tag = self._read()
                if not current or current.get("holder") != self.holder:
                    self.lost = describe(current) if current else "nobody (it was deleted)"
                    log.error("%s: lease lost, now held by %s", self.what, self.lost)
                    return
                if not self.store.replace_if(LEASE_FILE, self._record(), tag):
                    continue  # changed under us: the next beat sees by whom
            except StorageError as exc:  # an outage: keep trying; the lease expires only after ttl
                log.warning("%s: lease heartbeat failed: %s", self.what, exc)

    def check(self) -> None:
        """Raise if the lease was lost (e.g. expired during an outage and taken over): do not publish."""
        if self.lost:
            raise LeaseHeld(f"{self.what}: this writer's lease was taken over by {self.lost}; stopping")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.acquired_at is None:
            return
        self.acquired_at = None
        try:
            if self._mine():
                self.store.delete(LEASE_FILE)
        except StorageError as exc:
            log.warning("%s: could not release the lease (it expires after %.0fs): %s", self.what, self.ttl_s, exc)

    def __enter__(self) -> Lease:
        return self if self.acquired_at is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
