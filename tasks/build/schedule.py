"""Shard scheduling for the build: a Prefect task per shard over the Ray generation actors.

Workers hold few shards in flight (the UI shows real progress, not queued tasks); a shard's task retries on
the same actors, which Ray restarts after a crash; an actor whose restarts are exhausted is replaced.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from facelift.config import BuildConfig
from facelift.tasks.build import generate
from facelift.tasks.build import steps as build
from facelift.tasks.build.commit import PermanentCommitError
from facelift.tasks.build.placement import LeastBusy, ShardRows


def _permanent(state: Any) -> bool:
    """Whether a failed shard state holds a permanent store refusal (no retry fixes it)."""
    try:
        return isinstance(state.result(raise_on_failure=False), PermanentCommitError)
    except Exception:  # noqa: BLE001 - an unreadable result is not a known permanent error
        return False


@task(cache_policy=NO_CACHE, retry_delay_seconds=2, task_run_name="shard-{shard:05d}",
      retry_condition_fn=lambda task, run, state: not _permanent(state))
def generate_shard(shard: int, rows: list[dict[str, Any]], worker: Any, schnell_worker: Any = None) -> dict[str, Any]:
    """Render and commit one shard on one Ray worker (its schnell half first on a schnell actor, if pooled)."""
    return generate.call_worker(worker, shard, rows, schnell_worker)


def _ray_up(cfg: BuildConfig) -> bool:
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=cfg.ray.address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    return True


@dataclass
class ShardOutcome:
    """What one build run did with its shards: counts of committed ones (constant memory per shard: no per-shard
    results are kept), the reason of each failed one, and the run's timing for the busy fraction."""

    committed: int = 0
    rendered: int = 0  # pairs rendered by this run's shard calls (a spooled render committed later counts 0)
    spooled: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    worker_seconds: float = 0.0  # sum of the committed shards' call times on their workers
    wall_seconds: float = 0.0  # from the first submit to the last result
    workers: int = 0

    def add(self, res: dict[str, Any]) -> None:
        self.committed += 1
        self.rendered += res["rendered"]
        self.worker_seconds += res["seconds"]
        if res["rendered"] == 0:
            self.spooled.append(res["shard"])

    @property
    def from_spool(self) -> list[int]:
        return sorted(self.spooled)

    @property
    def busy_fraction(self) -> float:
        """Share of the workers' time spent on shard calls while shards were running (1.0: never idle)."""
        return self.worker_seconds / (self.workers * self.wall_seconds) if self.wall_seconds else 0.0


def run_shards(cfg: BuildConfig, prepared: build.Prepared, shards: list[int], progress: Any) -> ShardOutcome:
    """Keep every worker busy; returns what was committed and which shards failed for good (and why).

    One pool: each actor has one shard in flight. Pooled placement: each dev actor has two (the one it
    renders and the next, whose schnell half a schnell actor renders meanwhile). A pick is O(log W)
    (:class:`~facelift.tasks.build.placement.LeastBusy`); finished shards arrive on a queue (no scan of the
    shards in flight), so the flow's cost per shard does not grow with the number of workers or shards."""
    import ray

    logger = get_run_logger()
    started_ray = _ray_up(cfg)
    pools = generate.start_workers(cfg, prepared.dataset.uri)
    role, depth = ("dev", 2) if "dev" in pools else ("pair", 1)
    committers = LeastBusy(len(pools[role]), depth)
    schnells = LeastBusy(len(pools["schnell"])) if "schnell" in pools else None
    rows_of = ShardRows(prepared.plan)
    task = generate_shard.with_options(retries=cfg.ray.shard_retries)
    todo, outcome, inflight, done = list(reversed(shards)), ShardOutcome(workers=len(pools[role])), {}, 0
    finished: queue.SimpleQueue = queue.SimpleQueue()
    t0 = time.perf_counter()
    try:
        while todo or inflight:
            while todo and (w := committers.pick()) is not None:
                s = schnells.pick() if schnells is not None else None
                shard = todo.pop()
                future = task.submit(shard, rows_of(shard), pools[role][w],
                                     pools["schnell"][s] if s is not None else None)
                inflight[future] = (w, s, shard)
                future.add_done_callback(finished.put)
            future = finished.get()
            w, s, shard = inflight.pop(future)
            future.wait()
            committers.release(w)
            if s is not None:
                schnells.release(s)
            done += 1
            if future.state.is_completed():
                res = future.result()
                outcome.add(res)
                logger.info("shard %05d committed: %d pairs (%d rendered), %.1f MB, %.2fs, rendered on %s", shard,
                            res["pairs"], res["rendered"], res["bytes"] / 1e6, res["seconds"], res["worker"])
            else:
                outcome.failed[shard] = str(future.state.message or future.state.name)
                logger.error("shard %05d failed after retries: %s", shard, future.state.message)
                if _permanent(future.state):  # e.g. revoked credentials: rendering more shards wastes the GPUs
                    logger.error("the store refused the commit for good: no further shard is started")
                    todo.clear()
                suspects = [pools[role][w]] + ([pools["schnell"][s]] if s is not None else [])
                _replace_dead(cfg, prepared.dataset.uri, pools, suspects, logger)
            progress(done, len(shards))
        outcome.wall_seconds = time.perf_counter() - t0
    finally:
        generate.stop_workers(pools)
        if started_ray:
            ray.shutdown()
    return outcome


def _replace_dead(cfg: BuildConfig, dataset_uri: str, pools: dict[str, list[Any]], suspects: list[Any],
                  logger: Any) -> None:
    """Replace those of the failed shard's actors whose restarts are exhausted (only they are asked:
    a busy actor would answer only after its current shard)."""
    for role, pool in pools.items():
        for i, worker in enumerate(pool):
            if any(worker is s for s in suspects) and not generate.worker_alive(worker):
                logger.warning("%s worker died for good; starting a replacement", role)
                pool[i] = generate.start_worker(cfg, dataset_uri, role)
