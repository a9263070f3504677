"""Training throughput (pairs/s) of each head, eager vs torch.compile, through the product's training step
(``models.heads.train_step``: every loss, every optimizer, the image pool, LR schedules).

    python bench/train_heads.py                          # CPU: 64², batch 2, full flavors, fp32
    python bench/train_heads.py --device cuda --out OUT  # GPU: 512², batch 16, bf16 autocast + channels_last

Target (H100/H200, 512², batch 16): ESA-CycleGAN >= 25 pairs/s compiled (eager bf16 anchor: 12.4 on an H200).
The GPU path imports only torch and ``models.heads`` / ``models.losses`` (torch-only at import). The
``lpips`` package is not installed on the GPU machine: there the U-Net's LPIPS term is replaced by a
same-cost stand-in (random AlexNet feature distance, ``perceptual=proxy``) and the table says so; on CPU
the real ``lpips`` loss runs with a random backbone (``lpips_pnet_rand``: same cost as the real weights).
Compiled rows run while ``--budget-s`` allows (ESA-CycleGAN first); the rest are reported as skipped.
Writes ``train_heads.json`` to ``--out``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.heads import HEADS, build_head, train_step  # noqa: E402

COMPILE_ORDER = ["esa_cyclegan", "cyclegan", "unet_cbam"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def perceptual_for(device: torch.device) -> tuple[dict, str]:
    if importlib.util.find_spec("lpips") is not None:
        return {"perceptual": "lpips", "lpips_pnet_rand": True}, "lpips (random backbone)"
    return {"perceptual": "proxy"}, "PROXY: lpips absent, random-AlexNet feature distance"


def bench_one(name: str, compiled: bool, args: argparse.Namespace, device: torch.device) -> dict:
    overrides, perceptual = perceptual_for(device) if name == "unet_cbam" else ({}, "n/a")
    torch.manual_seed(0)
    head = build_head(name, args.flavor, **overrides)
    cuda = device.type == "cuda"
    mem = torch.channels_last if cuda else torch.contiguous_format
    head.to(device, memory_format=mem).train()
    optimizers = head.configure_optimizers(total_steps=10_000)
    if compiled:
        head.compile_modules()
    shape = (args.batch, 3, args.size, args.size)
    batch = {k: (torch.rand(shape, device=device) * 2 - 1).contiguous(memory_format=mem)
             for k in ("schnell", "dev")}
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and args.bf16 else \
        contextlib.nullcontext
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        train_step(head, optimizers, batch, autocast)
    sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        losses = train_step(head, optimizers, batch, autocast)
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    assert all(torch.isfinite(v) for v in losses.values()), f"{name}: non-finite loss"
    row = {"head": name, "mode": "compiled" if compiled else "eager", "pairs_per_s": round(args.batch / median, 2),
           "ms_per_step": round(median * 1e3, 1), "warmup_s": round(warm_s, 1),
           "params_M": round(sum(p.numel() for p in head.parameters()) / 1e6, 2), "perceptual": perceptual}
    if cuda:
        row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del head, optimizers
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def run_row(name: str, compiled: bool, args: argparse.Namespace, device: torch.device) -> dict:
    """One table row; a failure (e.g. out of memory) becomes a row with the error, and the run goes on."""
    mode = "compiled" if compiled else "eager"
    try:
        row = bench_one(name, compiled, args, device)
        print(f"{name} {mode}: {row['pairs_per_s']} pairs/s", flush=True)
        return row
    except Exception as exc:  # noqa: BLE001 - report the failure in the table, keep going
        print(f"{name} {mode}: ERROR {exc!r}"[:300], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"head": name, "mode": mode, "note": f"error: {repr(exc)[:200]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=None, help="default 64 on cpu, 512 on cuda")
    parser.add_argument("--batch", type=int, default=None, help="default 2 on cpu, 16 on cuda")
    parser.add_argument("--flavor", default="full")
    parser.add_argument("--heads", nargs="*", default=list(HEADS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3 cpu, 6 cuda)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--budget-s", type=float, default=110.0, help="skip compiled rows past this")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")
    args.size = args.size or (512 if cuda else 64)
    args.batch = args.batch or (16 if cuda else 2)
    args.steps = args.steps or (6 if cuda else 3)
    args.bf16 = args.bf16 and cuda
    device = torch.device(args.device)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    card = torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)"
    start = time.perf_counter()
    rows = []
    for name in args.heads:
        rows.append(run_row(name, False, args, device))
    if not args.no_compile:
        for name in sorted(args.heads, key=lambda n: COMPILE_ORDER.index(n) if n in COMPILE_ORDER else 99):
            if time.perf_counter() - start > args.budget_s:
                rows.append({"head": name, "mode": "compiled", "note": "skipped: time budget"})
                continue
            rows.append(run_row(name, True, args, device))
    meta = {"device": card, "torch": torch.__version__, "size": args.size, "batch": args.batch,
            "flavor": args.flavor, "dtype": "bf16 autocast + channels_last" if args.bf16 else "fp32",
            "warmup": args.warmup, "timed_steps": args.steps, "total_s": round(time.perf_counter() - start, 1)}
    cols = ["head", "mode", "pairs_per_s", "ms_per_step", "warmup_s", "params_M", "perceptual"]
    if cuda:
        cols.append("peak_mem_GiB")
    cols.append("note")
    print(f"\n{card}, {args.size}², batch {args.batch}, {meta['dtype']}, flavor {args.flavor}, torch "
          f"{torch.__version__} (median of {args.steps} steps; warmup includes compilation)\n")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "train_heads.json", "w") as fh:
        json.dump({**meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
