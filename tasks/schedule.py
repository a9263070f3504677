"""Shard scheduling for the build: a Prefect task per shard over a pool of Ray generation actors.

Each worker has at most one shard in flight (the UI shows real progress, not queued tasks); a shard's task
retries on the same actor, which Ray restarts after a crash; an actor whose restarts are exhausted is
replaced.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from facelift.config import BuildConfig
from tasks import build, generate


@task(cache_policy=NO_CACHE, retry_delay_seconds=2, task_run_name="shard-{shard:05d}")
def generate_shard(shard: int, rows: list[dict[str, Any]], worker: Any) -> dict[str, Any]:
    """Render and commit one shard on one Ray worker."""
    return generate.call_worker(worker, shard, rows)


def _ray_up(cfg: BuildConfig) -> bool:
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=cfg.ray.address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    return True


def run_shards(cfg: BuildConfig, prepared: build.Prepared, shards: list[int], progress: Any) -> list[int]:
    """Keep every worker busy with one shard at a time; returns the shards that failed for good."""
    import ray

    logger = get_run_logger()
    started_ray = _ray_up(cfg)
    workers = generate.start_workers(cfg, prepared.dataset.uri)
    task = generate_shard.with_options(retries=cfg.ray.shard_retries)
    todo, failed, inflight, done = list(reversed(shards)), [], {}, 0
    try:
        while todo or inflight:
            while todo and len(inflight) < len(workers):
                free = next(w for w in workers if all(w is not x for x, _ in inflight.values()))
                shard = todo.pop()
                inflight[task.submit(shard, build.shard_rows(prepared.plan, shard), free)] = (free, shard)
            future = next(as_completed(list(inflight)))
            worker, shard = inflight.pop(future)
            future.wait()
            done += 1
            if future.state.is_completed():
                res = future.result()
                logger.info("shard %05d committed: %d pairs, %.1f MB, %.2fs on %s", shard, res["pairs"],
                            res["bytes"] / 1e6, res["seconds"], res["worker"])
            else:
                failed.append(shard)
                logger.error("shard %05d failed after retries: %s", shard, future.state.message)
                if not generate.worker_alive(worker):  # restarts exhausted: replace it
                    logger.warning("worker died for good; starting a replacement")
                    workers[workers.index(worker)] = generate.start_worker(cfg, prepared.dataset.uri)
            progress(done, len(shards))
    finally:
        for w in workers:
            ray.kill(w)
        if started_ray:
            ray.shutdown()
    return failed
