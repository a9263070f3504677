"""Benchmark the dataset build's plumbing: orchestration overhead per shard, pairs/s with the tiny model
(two pair actors vs a schnell + a dev actor), and shard commit throughput to a local path and to SeaweedFS
S3 — measured side by side in one run.

    python bench/build_overhead.py [--shards 8] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")

log = logging.getLogger("bench")


def time_calls(fn, n: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def orchestration(cfg, n: int) -> dict[str, float]:
    """ms per no-op call: Ray actor alone, and a Prefect task wrapping the Ray actor call."""
    import ray
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from facelift.tasks.build.generate import start_workers

    worker = start_workers(cfg, str(Path(tempfile.mkdtemp()) / "datasets" / "x"))["pair"][0]
    ray_ms = 1000 * time_calls(lambda: ray.get(worker.info.remote()), n)

    @task(cache_policy=NO_CACHE)
    def noop(w):
        return ray.get(w.info.remote())

    @flow
    def many():
        t0 = time.perf_counter()
        for _ in range(n):
            noop(worker)
        return (time.perf_counter() - t0) / n

    prefect_ms = 1000 * many()
    ray.kill(worker)
    return {"ray_actor_call_ms": ray_ms, "prefect_task_plus_ray_call_ms": prefect_ms}


def build_throughput(root: str, shards: int, shard_size: int, endpoint: str | None) -> dict[str, float]:
    """Two builds (N and 2N shards): the difference isolates the marginal per-shard overhead from the
    fixed costs (Ray worker start + pipeline load, plan, manifest)."""
    from facelift.dataset import Dataset
    from facelift.flows.build_dataset import build_dataset

    runs = []
    for n in (shards, 2 * shards):
        t0 = time.perf_counter()
        result = build_dataset(count=n * shard_size, root=root, endpoint_url=endpoint,
                               overrides={"plan.shard_size": shard_size})
        wall = time.perf_counter() - t0
        manifest = Dataset.open(result["dataset_uri"], endpoint).manifest()
        gen = float(manifest[["encode_s", "schnell_s", "dev_s"]].sum().sum())  # PNG overlaps: overhead
        runs.append((n, len(manifest), wall, gen))
    (n1, _, w1, g1), (n2, p2, w2, g2) = runs
    per_shard = ((w2 - g2) - (w1 - g1)) / (n2 - n1)
    return {"pairs": p2, "wall_s": w2, "pairs_per_s": p2 / w2, "worker_render_s": g2,
            "fixed_cost_s": (w1 - g1) - n1 * per_shard, "overhead_per_shard_s": per_shard}


def placement_throughput(root: Path, shards: int, shard_size: int) -> dict[str, float]:
    """The same builds with two actors each holding both pipelines, and with a schnell actor feeding a dev
    actor (placement=pools), schnell made about as costly as dev (6 steps) so that a missing overlap of
    the two halves would show. Marginal pairs/s (a 1-shard build's fixed cost subtracted); for pools also
    the seconds each actor was busy: with overlap the wall time is near the larger, not the sum."""
    from facelift.dataset import Dataset
    from facelift.flows.build_dataset import build_dataset

    out: dict[str, float] = {}
    for name, over in (("pair_x2", {}), ("pools_1+1", {"generation.placement": "pools"})):
        over = {"plan.shard_size": shard_size, "ray.num_workers": 2, "generation.schnell.steps": 6,
                "generation.height": 128, "generation.width": 128, **over}
        walls = []
        for n in (1, shards):
            t0 = time.perf_counter()
            result = build_dataset(count=n * shard_size, root=str(root / name / str(n)), overrides=over)
            walls.append(time.perf_counter() - t0)
        wall = walls[1] - walls[0]
        out[f"{name}_marginal_pairs_per_s"] = (shards - 1) * shard_size / wall
        if name.startswith("pools"):
            m = Dataset.open(result["dataset_uri"]).manifest()
            share = (shards - 1) / shards  # the marginal shards' part of the busy time
            out[f"{name}_marginal_wall_s"] = wall
            out[f"{name}_schnell_actor_busy_s"] = float(m["encode_s"].sum() + m["schnell_s"].sum()) * share
            out[f"{name}_dev_actor_busy_s"] = float(m["dev_s"].sum()) * share
    return out


def commit_throughput(store, mb: int, n: int) -> float:
    data = os.urandom(mb << 20)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        store.write_bytes(f"bench/{i:05d}.parquet", data)
        times.append(time.perf_counter() - t0)
    return mb / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--mb", type=int, default=16)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    from facelift.config import resolve_config
    from facelift.storage import Store
    from facelift.testing import SeaweedS3

    tmp = Path(tempfile.mkdtemp(prefix="facelift-bench-"))
    os.environ.setdefault("FACELIFT_CACHE", str(tmp / "cache"))
    weed = SeaweedS3(tmp / "weed").start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        weed.make_bucket("bench")
        s3_root = f"s3://bench/{uuid.uuid4().hex}"
        rows = {
            **orchestration(resolve_config("tiny"), args.calls),
            **{f"local_{k}": v for k, v in build_throughput(str(tmp / "data"), args.shards, args.shard_size,
                                                           None).items()},
            **{f"s3_{k}": v for k, v in build_throughput(s3_root, args.shards, args.shard_size,
                                                        weed.endpoint).items()},
            **placement_throughput(tmp / "placement", args.shards, args.shard_size),
            "commit_local_MB_per_s": commit_throughput(Store(str(tmp / "commit")), args.mb, 5),
            "commit_seaweedfs_MB_per_s": commit_throughput(Store(s3_root, weed.endpoint), args.mb, 5),
        }
    finally:
        ray.shutdown()
        weed.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "build_overhead.json").write_text(json.dumps(rows, indent=2))
    table = ["| measure | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in rows.items()]
    print("\n".join(table))  # noqa: T201 - a benchmark prints its table


if __name__ == "__main__":
    main()
