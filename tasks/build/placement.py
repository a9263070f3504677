"""Which worker gets the next shard: a least-busy pick in O(log W), free of Ray and Prefect (pure, testable).

:class:`LeastBusy` keeps one heap entry per worker keyed by (shards in flight, last assignment): a pick takes the
least loaded worker, ties go to the one assigned longest ago (round robin among equals, so equal workers get equal
shares). Updating a worker's load pushes a fresh entry and marks the old one stale (lazy deletion); the heap is
compacted when stale entries outnumber live ones, so every pick and release costs O(log W) amortised comparisons.
:class:`ShardRows` hands out one shard's plan rows in O(log S) from a plan sorted once.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa


@dataclass
class Counter:
    """Heap comparisons made (the unit of work of a pick; the tests bound it by c·log2(W))."""

    comparisons: int = 0


class _Entry:
    __slots__ = ("counter", "key", "version", "worker")

    def __init__(self, key: tuple[int, int], worker: int, version: int, counter: Counter):
        self.key, self.worker, self.version, self.counter = key, worker, version, counter

    def __lt__(self, other: _Entry) -> bool:
        self.counter.comparisons += 1
        return (self.key, self.worker) < (other.key, other.worker)


@dataclass
class LeastBusy:
    """``n`` workers with shards in flight; :meth:`pick` the least busy one with fewer than ``depth`` in flight."""

    n: int
    depth: int | None = None
    counter: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.load = [0] * self.n
        self._last = list(range(-self.n, 0))  # sequence of each worker's last assignment (initially: by index)
        self._version = [0] * self.n
        self._seq = 0
        self.down: set[int] = set()  # workers taken out of the pool (dead, hung, restarting): never picked
        self._heap = [_Entry((0, self._last[i]), i, 0, self.counter) for i in range(self.n)]
        heapq.heapify(self._heap)

    @property
    def in_flight(self) -> int:
        return sum(self.load)

    def _push(self, worker: int) -> None:
        self._version[worker] += 1
        entry = _Entry((self.load[worker], self._last[worker]), worker, self._version[worker], self.counter)
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * self.n + 16:  # compaction: O(W), once per >= W updates
            self._heap = [e for e in self._heap if e.version == self._version[e.worker]]
            heapq.heapify(self._heap)

    def peek(self) -> int | None:
        """The least busy worker, or None if every worker already has ``depth`` shards in flight (or is down)."""
        heap = self._heap
        while heap and (heap[0].version != self._version[heap[0].worker] or heap[0].worker in self.down):
            heapq.heappop(heap)  # drop stale entries and workers that are down
        if not heap:
            return None
        best = heap[0].worker
        return best if self.depth is None or self.load[best] < self.depth else None

    def acquire(self, worker: int) -> None:
        """Count one more shard in flight on ``worker``."""
        self._seq += 1
        self._last[worker] = self._seq
        self.load[worker] += 1
        self._push(worker)

    def pick(self) -> int | None:
        """Reserve and return the least busy worker, or None when all are full."""
        worker = self.peek()
        if worker is not None:
            self.acquire(worker)
        return worker

    def release(self, worker: int) -> None:
        """One shard of ``worker`` finished (committed or failed)."""
        if self.load[worker] <= 0:
            raise ValueError(f"worker {worker} has no shard in flight")
        self.load[worker] -= 1
        if worker not in self.down:
            self._push(worker)

    def take_down(self, worker: int) -> None:
        """Take ``worker`` out of the pool until :meth:`bring_up` (its shards in flight are still released)."""
        self.down.add(worker)

    def bring_up(self, worker: int) -> None:
        """Put ``worker`` back into the pool."""
        if worker in self.down:
            self.down.discard(worker)
            self._push(worker)

    @property
    def up(self) -> int:
        return self.n - len(self.down)


class ShardRows:
    """One shard's plan rows (as the workers take them) without scanning the whole plan for each shard: the plan
    is sorted by shard once into an Arrow table (zero-copy slices), and a shard is found by binary search."""

    def __init__(self, plan: pd.DataFrame):
        ordered = plan.sort_values("shard", kind="stable")
        self._shards = ordered["shard"].to_numpy()
        self._table = pa.Table.from_pandas(ordered, preserve_index=False)

    def __call__(self, shard: int) -> list[dict[str, Any]]:
        lo, hi = (int(i) for i in np.searchsorted(self._shards, [shard, shard + 1]))
        return self._table.slice(lo, hi - lo).to_pylist()
