"""The build's orchestration at the paper's scale and beyond, without GPUs (issue 24; results in docs/build.md).

Three parts, each bounded, each saying what is real and what is simulated:

``loop``    The real scheduler (:class:`LeastBusy` picks, :class:`ShardRows`) drives W simulated workers over a
            virtual clock (no sleeping, no Prefect, no Ray): the scheduler's own CPU time per shard and its heap
            comparisons per pick, beside the scan it replaced (``legacy``), for W up to 512.
``prefect`` The real flow ``build_dataset`` with ``--profile sim`` in this process, against a real Prefect server
            (SQLite or PostgreSQL, started here): a real Prefect task per shard, real Ray actors, real commits
            and manifest. Only the renderer is simulated (it sleeps the shard time), and the W workers are slots
            of threaded Ray actors (``generation.sim_slots_per_actor``; a process per worker does not fit here).
            One client polls the flow run as the UI does (flow run + task-run count, every 0.5 s).
``cli``     ``facelift build --profile sim`` as users run it (Prefect's ephemeral server, one actor per worker),
            at two sizes: the per-shard time must not grow with the number of shards.

    python bench/scale.py loop [--workers 64 256 512]
    python bench/scale.py prefect --shards 2188 --workers 64 --shard-s 2 [--db sqlite|postgres]
    python bench/scale.py cli --shards 500 5000 --workers 16
Each prints a table and appends its rows to docs/results/scale.json.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "scale.json"
log = logging.getLogger("bench.scale")


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _save(rows: list[dict]) -> None:
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(old + rows, indent=1) + "\n")


def _table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


# --- loop: the real scheduler over simulated workers on a virtual clock ----------------------------------
def _legacy_least_busy(pool: list[int], busy: list[int]) -> int:
    """The pick this issue replaced: recount every in-flight shard for every worker (O(W x in-flight))."""
    load = {w: sum(w == b for b in busy) for w in pool}
    return min(pool, key=lambda w: load[w])


def loop_case(workers: int, shards: int, shard_s: float, legacy_picks: int = 300) -> dict:
    import pandas as pd

    from facelift.tasks.build.placement import LeastBusy, ShardRows

    plan = pd.DataFrame({"pair_id": [f"p{i}" for i in range(shards)], "name": "n", "nconst": None,
                         "prompt": "a portrait", "seed": range(shards), "shard": range(shards), "weight": 1.0})
    lb, rows_of, events, now, spent, busy_s = LeastBusy(workers, 1), ShardRows(plan), [], 0.0, 0.0, 0.0
    todo = list(range(shards - 1, -1, -1))
    while todo or events:
        t0 = time.perf_counter()
        while todo and (w := lb.pick()) is not None:
            rows_of(todo.pop())
            heapq.heappush(events, (now + shard_s, w))
        spent += time.perf_counter() - t0
        now, w = heapq.heappop(events)
        busy_s += shard_s
        t0 = time.perf_counter()
        lb.release(w)
        spent += time.perf_counter() - t0
    picks = lb.counter.comparisons
    pool, inflight = list(range(workers)), list(range(workers - 1))  # a full pool, one worker free
    t0 = time.perf_counter()
    for _ in range(legacy_picks):
        _legacy_least_busy(pool, inflight)
    legacy = (time.perf_counter() - t0) / legacy_picks
    return {"part": "loop", "workers": workers, "shards": shards, "shard_s": shard_s,
            "scheduler_us_per_shard": round(1e6 * spent / shards, 1),
            "comparisons_per_shard": round(picks / shards, 1),
            "legacy_pick_us": round(1e6 * legacy, 1),
            "virtual_busy": round(busy_s / (workers * now), 4), "machine": _load()}


# --- prefect: the real flow against a real server, simulated renderer ------------------------------------
def _poll(api: str, stop: threading.Event, lat: list[float], trace: list[tuple[float, float, float]]) -> None:
    """One client watching the newest flow run as the UI does: the run, and its completed task-run count.
    Also samples this process's CPU time (with the wall clock), for the steady-state cost per shard."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=api) as client:  # the client the UI's API calls go through (CSRF included)
        run_id = None
        while not stop.is_set():
            trace.append((time.time(), time.process_time(), _rss_now_mb()))
            t0 = time.perf_counter()
            try:
                if run_id is None:
                    runs = client.request("POST", "/flow_runs/filter",
                                          json={"sort": "START_TIME_DESC", "limit": 1}).json()
                    run_id = runs[0]["id"] if runs else None
                else:
                    client.request("GET", f"/flow_runs/{run_id}")
                    lat.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    client.request("POST", "/task_runs/count", json={
                        "flow_runs": {"id": {"any_": [run_id]}},
                        "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
                lat.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - a failed poll counts with its latency
                log.warning("poll failed: %s", exc)
                lat.append(time.perf_counter() - t0)
            stop.wait(0.5)


def _steady(trace: list[tuple[float, float, float]], commits: list[float]) -> dict:
    """Flow-process CPU ms per shard and shards/s between the 10 % and the 90 % commit (shard object mtimes):
    the steady state, without worker start, manifest or the last round's tail."""
    if len(commits) < 20 or len(trace) < 2:
        return {"steady_cpu_ms_per_shard": None, "steady_shards_per_s": None, "rss_during_shards_mb": None}
    i, j = len(commits) // 10, (9 * len(commits)) // 10
    cpu = [c for t, c, _ in trace if commits[i] <= t <= commits[j]]
    rss = [r for t, _, r in trace if t <= commits[-1]]  # while shards run: before the manifest
    n = j - i
    return {"steady_cpu_ms_per_shard": round(1e3 * (cpu[-1] - cpu[0]) / n, 2) if len(cpu) > 1 else None,
            "rss_during_shards_mb": round(max(rss)) if rss else None,
            "steady_shards_per_s": round(n / (commits[j] - commits[i]), 1)}


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prefect_child(args: argparse.Namespace) -> dict:
    """Runs inside the child process whose environment points at the server: the flow process."""
    from facelift.dataset import Dataset
    from facelift.flows.build_dataset import build_dataset

    slots = min(args.slots, args.workers)
    params = dict(profile="sim", mode="baseline", count=args.shards, root=args.root, overrides={
        "plan.shard_size": 1, "generation.height": 16, "generation.width": 16,
        "generation.sim_seconds_per_pair": args.shard_s, "ray.num_workers": args.workers,
        "generation.sim_slots_per_actor": slots})
    lat: list[float] = []
    trace: list[tuple[float, float, float]] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(os.environ["PREFECT_API_URL"], stop, lat, trace), daemon=True)
    rss0, cpu0, t0 = _rss_mb(), time.process_time(), time.perf_counter()
    poller.start()
    try:
        result = build_dataset(**params)
    finally:
        stop.set()
        poller.join(5)
    wall, cpu, rss = time.perf_counter() - t0, time.process_time() - cpu0, _rss_mb()
    info = Dataset.open(result["dataset_uri"]).info()
    t1 = time.perf_counter()
    again = build_dataset(**params)
    resume = time.perf_counter() - t1
    assert again["generated_shards"] == 0, again
    lat_ms = sorted(1e3 * x for x in lat) or [float("nan")]
    commits = sorted(p.stat().st_mtime for p in Path(result["dataset_uri"]).glob("shards/*.parquet"))
    steady = _steady(trace, commits)
    return {"part": "prefect", "shards": args.shards, "workers": args.workers, "slots_per_actor": slots,
            "shard_s": args.shard_s, "db": args.db, "wall_s": round(wall, 1),
            "orchestration_ms_per_shard": round(1e3 * cpu / args.shards, 2),
            "wall_ms_per_shard": round(1e3 * wall / args.shards, 1),
            "busy": result["workers_busy"], **steady, "rss_start_mb": round(rss0), "rss_peak_mb": round(rss),
            "api_p50_ms": round(statistics.median(lat_ms), 1),
            "api_p99_ms": round(lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))], 1),
            "api_polls": len(lat), "manifest_s": info["timings"]["finalize_s"], "resume_s": round(resume, 1)}


def prefect_case(args: argparse.Namespace) -> dict:
    """Start the server (and PostgreSQL), run :func:`prefect_child` in a fresh process, measure the database."""
    from facelift.stack.local import PrefectServer
    from facelift.stack.postgres import Postgres
    from facelift.testing import free_port

    home = Path(tempfile.mkdtemp(prefix="scale-", dir=args.tmp))
    home.chmod(0o755)  # PostgreSQL runs as the postgres user when we are root
    pg = Postgres(home / "pg", free_port()).start() if args.db == "postgres" else None
    server = PrefectServer(home / "prefect", database_url=pg.url if pg else None).start()
    try:
        env = {**server.env(), "RAY_TMPDIR": str(home / "ray"), "RAY_AUTH_MODE": "disabled",
               "FACELIFT_CACHE": str(home / "cache")}
        cmd = [sys.executable, __file__, "prefect-child", "--shards", str(args.shards), "--workers",
               str(args.workers), "--shard-s", str(args.shard_s), "--slots", str(args.slots), "--db", args.db,
               "--root", str(home / "data")]
        load = _load()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            raise SystemExit(f"scale run failed (rc {out.returncode}): {out.stderr[-3000:]}")
        row = json.loads(lines[-1][7:])
        db = home / "prefect" / "prefect.db"
        size = pg.size_bytes() if pg else sum(p.stat().st_size for p in db.parent.glob("prefect.db*"))
        row.update(db_mb=round(size / 1e6, 1), machine=f"{load} at start, {_load()} at end")
        return row
    finally:
        server.stop()
        if pg:
            pg.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(home)], check=False)


# --- cli: `facelift build --profile sim` at two sizes -----------------------------------------------------
def cli_case(shards: int, workers: int, tmp: str) -> dict:
    home = Path(tempfile.mkdtemp(prefix="scale-cli-", dir=tmp))
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "RAY_TMPDIR": str(home / "ray"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_AUTH_MODE": "disabled",
           "FACELIFT_CACHE": str(home / "cache"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    env.pop("PREFECT_API_URL", None)
    cmd = [str(Path(sys.executable).parent / "facelift"), "build", "--profile", "sim", "--mode", "baseline",
           "--count", str(shards), "--workers", str(workers), "--out", str(home / "data"),
           "--set", "plan.shard_size=1", "--set", "generation.height=16", "--set", "generation.width=16"]
    load, t0 = _load(), time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], env=env, capture_output=True, text=True,
                         check=False)
    wall = time.perf_counter() - t0
    done = sorted(p.stat().st_mtime for p in (home / "data").glob("datasets/*/shards/*.parquet"))
    subprocess.run(["rm", "-rf", str(home)], check=False)
    if out.returncode:
        raise SystemExit(f"facelift build failed: {out.stderr[-3000:]}")
    res = json.loads(out.stdout[out.stdout.index("{"):])
    rss = [int(ln.split()[1]) for ln in out.stderr.splitlines() if ln.startswith("MAXRSS")]
    i, j = len(done) // 10, (9 * len(done)) // 10  # commit times of the 10 %..90 % shards: no start, no tail
    return {"part": "cli", "shards": shards, "workers": workers, "wall_s": round(wall, 1),
            "s_per_shard": round(wall / shards, 4), "shards_committed": res["shards"],
            "steady_s_per_shard": round((done[j] - done[i]) / (j - i), 4) if j > i else None,
            "peak_rss_mb": round(rss[-1] / 1024) if rss else None, "machine": f"{load} at start, {_load()} at end"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=["loop", "prefect", "prefect-child", "cli"])
    p.add_argument("--workers", type=int, nargs="+", default=[64, 256, 512])
    p.add_argument("--shards", type=int, nargs="+", default=[2188])
    p.add_argument("--shard-s", type=float, nargs="+", default=[2.0])
    p.add_argument("--slots", type=int, default=64, help="simulated workers per Ray actor (prefect part)")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--root", default=None)
    p.add_argument("--tmp", default=tempfile.gettempdir())
    p.add_argument("--keep", action="store_true", help="keep the server's folder (prefect part)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.part == "prefect-child":
        one = argparse.Namespace(**{**vars(args), "shards": args.shards[0], "workers": args.workers[0],
                                    "shard_s": args.shard_s[0]})
        print("RESULT " + json.dumps(prefect_child(one)))  # noqa: T201 - read by the parent
        return
    rows, cols = [], []
    if args.part == "loop":
        cols = ["workers", "shards", "scheduler_us_per_shard", "comparisons_per_shard", "legacy_pick_us",
                "virtual_busy"]
        rows = [loop_case(w, s, t) for w in args.workers for s in args.shards for t in args.shard_s]
    elif args.part == "prefect":
        cols = ["shards", "workers", "shard_s", "db", "wall_s", "orchestration_ms_per_shard", "steady_cpu_ms_per_shard",
                "steady_shards_per_s", "busy", "rss_peak_mb",
                "api_p50_ms", "api_p99_ms", "db_mb", "manifest_s", "resume_s"]
        for s in args.shards:
            for w in args.workers:
                for t in args.shard_s:
                    one = argparse.Namespace(**{**vars(args), "shards": s, "workers": w, "shard_s": t})
                    rows.append(prefect_case(one))
                    print(_table(rows[-1:], cols), flush=True)  # noqa: T201 - progress of a long run
    else:
        cols = ["shards", "workers", "wall_s", "s_per_shard", "steady_s_per_shard", "peak_rss_mb"]
        rows = [cli_case(s, w, args.tmp) for w in args.workers for s in args.shards]
    print(_table(rows, cols))  # noqa: T201 - the benchmark's output
    print(rows[-1].get("machine", ""))  # noqa: T201
    if not args.no_save:
        _save([{**r, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} for r in rows])


if __name__ == "__main__":
    main()
