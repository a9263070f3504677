"""Shard scheduling for the build: a Prefect task per shard over the Ray generation actors.

Workers hold few shards in flight (the UI shows real progress, not queued tasks); a shard's task retries on
the same actors, which Ray restarts after a crash; an actor whose restarts are exhausted is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from facelift.config import BuildConfig
from facelift.tasks.build import generate
from facelift.tasks.build import steps as build
from facelift.tasks.build.commit import PermanentCommitError


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


def _least_busy(pool: list[Any], busy: list[Any], depth: int | None = None) -> Any | None:
    """The actor of ``pool`` with the fewest shards in flight, if it has fewer than ``depth`` (None: any)."""
    load = {id(w): sum(w is b for b in busy) for w in pool}
    best = min(pool, key=lambda w: load[id(w)])
    return best if depth is None or load[id(best)] < depth else None


@dataclass
class ShardOutcome:
    """What one build run did with its shards: the results of committed ones, the reason of failed ones."""

    committed: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def rendered(self) -> int:
        """Pairs rendered by this run's shard calls (a spooled render committed later counts 0)."""
        return sum(r["rendered"] for r in self.committed)

    @property
    def from_spool(self) -> list[int]:
        return sorted(r["shard"] for r in self.committed if r["rendered"] == 0)


def run_shards(cfg: BuildConfig, prepared: build.Prepared, shards: list[int], progress: Any) -> ShardOutcome:
    """Keep every worker busy; returns what was committed and which shards failed for good (and why).

    One pool: each actor has one shard in flight. Pooled placement: each dev actor has two (the one it
    renders and the next, whose schnell half a schnell actor renders meanwhile)."""
    import ray

    logger = get_run_logger()
    started_ray = _ray_up(cfg)
    pools = generate.start_workers(cfg, prepared.dataset.uri)
    committers, depth = (pools["dev"], 2) if "dev" in pools else (pools["pair"], 1)
    task = generate_shard.with_options(retries=cfg.ray.shard_retries)
    todo, outcome, inflight, done = list(reversed(shards)), ShardOutcome(), {}, 0
    try:
        while todo or inflight:
            while todo:
                busy = [a for assigned in inflight.values() for a in assigned[:2]]
                worker = _least_busy(committers, busy, depth)
                if worker is None:
                    break
                schnell = _least_busy(pools["schnell"], busy) if "schnell" in pools else None
                shard = todo.pop()
                inflight[task.submit(shard, build.shard_rows(prepared.plan, shard), worker, schnell)] = \
                    (worker, schnell, shard)
            future = next(as_completed(list(inflight)))
            worker, schnell, shard = inflight.pop(future)
            future.wait()
            done += 1
            if future.state.is_completed():
                res = future.result()
                outcome.committed.append(res)
                logger.info("shard %05d committed: %d pairs (%d rendered), %.1f MB, %.2fs, rendered on %s", shard,
                            res["pairs"], res["rendered"], res["bytes"] / 1e6, res["seconds"], res["worker"])
            else:
                outcome.failed[shard] = str(future.state.message or future.state.name)
                logger.error("shard %05d failed after retries: %s", shard, future.state.message)
                if _permanent(future.state):  # e.g. revoked credentials: rendering more shards wastes the GPUs
                    logger.error("the store refused the commit for good: no further shard is started")
                    todo.clear()
                _replace_dead(cfg, prepared.dataset.uri, pools, [worker, schnell], logger)
            progress(done, len(shards))
    finally:
        for w in (a for pool in pools.values() for a in pool):
            ray.kill(w)
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
