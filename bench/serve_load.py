"""Load test of ``facelift serve`` (the product's Ray Serve app, in-process on a local Ray).

    python bench/serve_load.py                               # CPU, tiny models: 1/8/32 clients, burst, replica kill
    python bench/serve_load.py --profile flux --size 512 --num-gpus 1 --levels 1 8 32 --out OUT   # on a GPU

Every row is measured after a warm-up: each model replica runs one batch at every batch size before it is ready
(``ServeConfig.warmup_sizes``), then ``--warmup-requests`` requests at the batch size's concurrency are sent and
not counted (their time is reported as ``warmup``). Requests carry the API key (a fresh key file per run).
Rows: p50/p99 latency and images/s at each concurrency; a burst far beyond the queue (every answer must be 200
or 503 with Retry-After, every accepted request an image); a model replica killed under load (each request
completes or fails with a clear 503, and the app recovers: time until /readyz answers and a request succeeds).
Prints markdown tables; writes ``serve_load.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx

log = logging.getLogger("serve_load")
HEADERS: dict[str, str] = {}  # the API key, set by main()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def one(client: httpx.AsyncClient, i: int) -> tuple[int, float, httpx.Response]:
    """(status, seconds, response); a dropped connection is status 0 with a synthetic 599 response."""
    t0 = time.perf_counter()
    try:
        res = await client.post("/generate", json={"prompt": f"A professional portrait of person {i}", "seed": i},
                                headers=HEADERS)
    except httpx.HTTPError as exc:
        return 0, time.perf_counter() - t0, httpx.Response(599, json={"error": f"connection: {exc!r}"})
    return res.status_code, time.perf_counter() - t0, res


def closed_loop(c: httpx.AsyncClient, clients: int, n: int, out: list) -> asyncio.Future:
    """``n`` requests from ``clients`` concurrent clients, each sending its next request when the last returns;
    results are appended to ``out``."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            out.append(await one(c, i))

    return asyncio.gather(*(worker() for _ in range(clients)))


async def level(url: str, clients: int, n: int) -> dict:
    """``n`` requests from ``clients`` concurrent clients (each sends its next request when the last returns)."""
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
        out: list[tuple[int, float, httpx.Response]] = []
        t0 = time.perf_counter()
        await closed_loop(c, clients, n, out)
        wall = time.perf_counter() - t0
    ok = [lat for code, lat, _ in out if code == 200]
    batches = [int(r.headers.get("x-batch-size", 0)) for code, _, r in out if code == 200]
    return {"clients": clients, "requests": n, "ok": len(ok), "errors": n - len(ok),
            "p50_s": round(pct(ok, 50), 3), "p99_s": round(pct(ok, 99), 3), "images_per_s": round(len(ok) / wall, 2),
            "mean_batch": round(statistics.mean(batches), 2) if batches else 0}


async def burst(url: str, n: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=n)) as c:
        out = await asyncio.gather(*(one(c, i) for i in range(n)))
    codes = [code for code, _, _ in out]
    rejected = [r for code, _, r in out if code in (429, 503)]
    accepted = [r for code, _, r in out if code == 200]
    return {"sent": n, "accepted": len(accepted), "rejected": len(rejected),
            "other": sum(1 for code in codes if code not in (0, 200, 429, 503)), "dropped": codes.count(0),
            "rejected_with_retry_after": sum(1 for r in rejected if r.headers.get("retry-after")),
            "accepted_with_image": sum(1 for r in accepted if r.content[:4] == b"\x89PNG")}


def kill_model_replica() -> str:
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "ModelServer" in a["name"]]
    if not replicas:
        raise RuntimeError("no ModelServer replica actor found")
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    return replicas[0]["name"]


async def kill_under_load(url: str, clients: int, n: int, kill_after_s: float) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
        out: list[tuple[int, float, httpx.Response]] = []
        load = closed_loop(c, clients, n, out)
        await asyncio.sleep(kill_after_s)
        killed = await asyncio.to_thread(kill_model_replica)
        t_kill = time.perf_counter()
        await load
        recovered = None
        while time.perf_counter() - t_kill < 300:
            if (await c.get("/readyz")).status_code == 200 and (await one(c, 10**6))[0] == 200:
                recovered = time.perf_counter() - t_kill
                break
            await asyncio.sleep(0.5)
    codes = [code for code, _, _ in out]
    failed = [r for code, _, r in out if code != 200]
    clear = [r for r in failed if r.status_code in (503, 504) and "error" in r.json()]
    return {"killed": killed, "requests": n, "ok": codes.count(200), "failed": len(failed),
            "dropped_connections": codes.count(0),
            "failed_with_clear_error": len(clear), "examples": sorted({r.json()["error"][:90] for r in clear})[:2],
            "recovered_s": round(recovered, 1) if recovered is not None else None}


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", help="head folder or run URI (default: a random debug ESA-CycleGAN head)")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--queue", type=int, default=32)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=64, help="requests per level (at least the level)")
    ap.add_argument("--num-gpus", type=float, default=0)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--warmup-sizes", type=int, nargs="*", default=None,
                    help="batch sizes each replica runs before it is ready (default: 1..--batch; none: no warm-up)")
    ap.add_argument("--warmup-requests", type=int, default=16, help="sent first at --batch concurrency, not counted")
    ap.add_argument("--no-kill", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    from facelift.models.heads import build_head
    from facelift.tasks.serve import ServeConfig, serve_app, shutdown

    tmp = tempfile.mkdtemp(prefix="serve-load-")
    key_file = Path(tmp, "api-key")
    key_file.write_text(secrets.token_urlsafe(32))
    key_file.chmod(0o600)
    HEADERS["Authorization"] = f"Bearer {key_file.read_text()}"
    head = args.head
    if head is None:
        torch.manual_seed(0)
        head = build_head("esa_cyclegan", "debug").save(f"{tmp}/runs/bench/head")
    ray.init(include_dashboard=False, ignore_reinit_error=True)
    cfg = ServeConfig(head=head, profile=args.profile, size=args.size, max_batch_size=args.batch,
                      max_queued_requests=args.queue, num_gpus=args.num_gpus, port=args.port, batch_wait_s=0.05,
                      api_key_file=str(key_file), warmup_sizes=args.warmup_sizes)
    t0 = time.perf_counter()
    serve_app(cfg)  # returns once every replica has loaded and run its warm-up batches
    url = f"http://127.0.0.1:{args.port}"
    result: dict = {"config": cfg.model_dump(), "startup_s": round(time.perf_counter() - t0, 1),
                    "device": torch.cuda.get_device_name() if args.num_gpus and torch.cuda.is_available() else
                    f"CPU ({os.cpu_count()} cores)"}
    try:
        if args.warmup_requests:  # not counted: first HTTP connections, allocator growth, any lazy init
            result["warmup"] = asyncio.run(level(url, args.batch, args.warmup_requests))
        result["levels"] = [asyncio.run(level(url, c, max(args.requests, c))) for c in args.levels]
        log.info("%s", table(result["levels"], ["clients", "requests", "ok", "errors", "p50_s", "p99_s", "images_per_s",
                                       "mean_batch"]))
        n_burst = 4 * (cfg.max_ongoing_requests + cfg.max_queued_requests)
        result["burst"] = asyncio.run(burst(url, n_burst))
        log.info("%s", table([result["burst"]], list(result["burst"])))
        if not args.no_kill:
            result["kill"] = asyncio.run(kill_under_load(url, 16, 96, kill_after_s=1.0))
            log.info("%s", table([result["kill"]], [k for k in result["kill"] if k != "examples"]))
            log.info("errors seen: %s", result["kill"]["examples"])
    finally:
        shutdown()
        ray.shutdown()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "serve_load.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
