"""The build at production shape, without GPUs (issue 31; results in docs/build.md).

Production shape: 64 pairs per shard, 512x512 PNGs (sim placeholders: noise, ~0.8 MB each, heavier than a real
portrait), SeaweedFS as the object store, a real Prefect server (SQLite), at least 64 workers (slots of threaded
Ray actors: a process per worker does not fit a small machine), and a plan of 1M pairs.

Two measurements, each saying what is measured and what is extrapolated:

``plan``    ``prepare()`` of a 1M-pair plan on SeaweedFS (measured): seconds, plan bytes, flow RSS, and the
            missing-shard scan over 15,625 planned shards.
``render``  The flow ``build_dataset`` in a child process (as a worker runs it) renders a subset of
            ``--shards`` shards at that shape (measured): flow CPU ms per shard (dispatch), busy %, finalize
            seconds and shard bytes read (counted at s3fs), manifest bytes, flow RSS, Prefect API p99 while one
            client polls like the UI. Per-shard and per-pair costs are then extrapolated to 1M pairs.

    python bench/scale_production.py [--shards 24] [--workers 64] [--pair-s 0.02]
Prints a table and appends its rows to docs/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale import _load, _poll, _rss_mb, _save, _table  # noqa: E402

PLANNED = 1_000_000
SHARD = 64
SIZE = 512


def plan_case(root: str, endpoint: str) -> dict:
    from facelift.config import resolve_config
    from facelift.tasks.build.steps import missing_shards, prepare

    cfg = resolve_config("sim", overrides={"plan.count": PLANNED, "plan.prompt.mode": "baseline", "storage.root": root,
                                           "storage.endpoint_url": endpoint, "plan.shard_size": SHARD})
    rss0, t0 = _rss_mb(), time.perf_counter()
    prepared = prepare(cfg)
    prepare_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    missing = missing_shards(prepared.dataset, prepared.plan)
    scan_s = time.perf_counter() - t1
    prepared.lease.release()
    return {"part": "production-plan", "pairs_planned": PLANNED, "shards_planned": len(missing),
            "prepare_s": round(prepare_s, 1), "missing_scan_s": round(scan_s, 2),
            "plan_mb": round(prepared.dataset.store.size("plan.parquet") / 1e6, 1),
            "rss_mb": round(_rss_mb()), "rss_before_mb": round(rss0)}


def render_child(args: argparse.Namespace) -> dict:
    from facelift.dataset import Dataset, shard_key
    from facelift.flows.build_dataset import build_dataset
    from facelift.testing import count_s3_reads

    read = count_s3_reads("/shards/")
    slots = min(64, args.workers)
    params = dict(profile="sim", mode="baseline", count=args.shards * SHARD, root=args.root,
                  endpoint_url=args.endpoint, overrides={
                      "plan.shard_size": SHARD, "generation.height": SIZE, "generation.width": SIZE,
                      "generation.sim_seconds_per_pair": args.pair_s, "ray.num_workers": args.workers,
                      "generation.sim_slots_per_actor": slots})
    lat: list[float] = []
    trace: list[tuple[float, float, float]] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(os.environ["PREFECT_API_URL"], stop, lat, trace), daemon=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    poller.start()
    try:
        result = build_dataset(**params)
    finally:
        stop.set()
        poller.join(5)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ds = Dataset.open(result["dataset_uri"], args.endpoint)
    info = ds.info()
    shard_bytes = sum(ds.store.size(shard_key(k)) for k in ds.committed_shards())
    manifest_bytes = ds.store.size("manifest.parquet")
    lat_ms = sorted(1e3 * x for x in lat) or [float("nan")]
    n, scale = args.shards, PLANNED / (args.shards * SHARD)
    finalize_s, finalize_read = info["timings"]["finalize_s"], read[0]  # nothing else reads shards in the flow
    return {"part": "production-render", "shards": n, "pairs": n * SHARD, "workers": args.workers,
            "slots_per_actor": slots, "pair_s": args.pair_s, "wall_s": round(wall, 1),
            "dispatch_cpu_ms_per_shard": round(1e3 * cpu / n, 1), "busy": result["workers_busy"],
            "flow_rss_peak_mb": round(_rss_mb()),
            "api_p50_ms": round(statistics.median(lat_ms), 1),
            "api_p99_ms": round(lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))], 1),
            "shard_mb": round(shard_bytes / n / 1e6, 1), "finalize_s": finalize_s,
            "finalize_read_kb": round(finalize_read / 1e3, 1),
            "finalize_read_pct": round(100 * finalize_read / shard_bytes, 3),
            "manifest_kb": round(manifest_bytes / 1e3, 1),
            "extrapolated_1m": {"finalize_s": round(finalize_s * scale, 1),
                                "finalize_read_mb": round(finalize_read * scale / 1e6, 1),
                                "shard_gb": round(shard_bytes * scale / 1e9, 1),
                                "manifest_mb": round(manifest_bytes * scale / 1e6, 1)}}


def render_case(args: argparse.Namespace, weed) -> dict:
    from facelift.stack.local import PrefectServer

    home = Path(tempfile.mkdtemp(prefix="scale-prod-", dir=args.tmp))
    server = PrefectServer(home / "prefect").start()
    try:
        env = {**server.env(), "RAY_TMPDIR": str(home / "ray"), "RAY_AUTH_MODE": "disabled",
               "FACELIFT_CACHE": str(home / "cache")}
        cmd = [sys.executable, __file__, "render-child", "--shards", str(args.shards), "--workers", str(args.workers),
               "--pair-s", str(args.pair_s), "--root", args.root, "--endpoint", weed.endpoint]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            raise SystemExit(f"production render failed (rc {out.returncode}): {out.stderr[-3000:]}")
        return json.loads(lines[-1][7:])
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", nargs="?", default="all", choices=["all", "render-child"])
    p.add_argument("--shards", type=int, default=24, help="shards rendered (of 15,625 for 1M pairs)")
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--pair-s", type=float, default=0.02, help="simulated render seconds per pair")
    p.add_argument("--root", default=None)
    p.add_argument("--endpoint", default=None)
    p.add_argument("--tmp", default=tempfile.gettempdir())
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    if args.part == "render-child":
        print("RESULT " + json.dumps(render_child(args)))  # noqa: T201 - read by the parent
        return
    from facelift.testing import SeaweedS3

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # SeaweedFS without auth; s3fs signs anyway
        os.environ.setdefault(key, "facelift")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    load = _load()
    weed = SeaweedS3(Path(tempfile.mkdtemp(prefix="scale-weed-", dir=args.tmp))).start()
    try:
        weed.make_bucket("facelift")
        plan = plan_case("s3://facelift/plan", weed.endpoint)
        print(_table([plan], list(plan)[1:]), flush=True)  # noqa: T201 - the benchmark's output
        args.root = "s3://facelift/render"
        render = render_case(args, weed)
    finally:
        weed.stop()
    cols = ["shards", "pairs", "workers", "wall_s", "dispatch_cpu_ms_per_shard", "busy", "flow_rss_peak_mb",
            "api_p50_ms", "api_p99_ms", "shard_mb", "finalize_s", "finalize_read_kb", "finalize_read_pct",
            "manifest_kb"]
    print(_table([render], cols))  # noqa: T201
    print(_table([render["extrapolated_1m"]], list(render["extrapolated_1m"])))  # noqa: T201
    machine = f"{load} at start, {_load()} at end"
    print(machine)  # noqa: T201
    if not args.no_save:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        _save([{**plan, "machine": machine, "measured": stamp}, {**render, "machine": machine, "measured": stamp}])


if __name__ == "__main__":
    main()
