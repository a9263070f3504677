"""Training throughput (pairs/s) of each head, eager vs torch.compile, through the product's training step
(``models.heads.train_step``: every loss, every optimizer, the image pool, LR schedules).

    python bench/train_heads.py                          # CPU: 64², batch 2, full flavors, fp32
    python bench/train_heads.py --device cuda --out OUT  # GPU: 512², batch 16, bf16 autocast + channels_last

Target (H100/H200, 512², batch 16): ESA-CycleGAN >= 25 pairs/s compiled (eager bf16 anchor: 12.4 on an H200).
The GPU path imports only torch and ``models.heads`` / ``models.losses`` (torch-only at import). The
``lpips`` package is not installed on the GPU machine: there the U-Net's LPIPS term is replaced by a
same-cost stand-in (random AlexNet feature distance, ``perceptual=proxy``) and the table says so; on CPU
the real ``lpips`` loss runs with a random backbone (``lpips_pnet_rand``: same cost as the real weights).
Compile time (the first step) is reported apart from the steady state (median of the timed steps after
``--warmup`` steps). Row order: ESA-CycleGAN compiled first (the target), then every head eager, then the
other compiled rows, each started only while ``--budget-s`` allows (later rows: "skipped: time budget").
``--compile-modes regional full`` (default: regional, the product default); ``--cold`` disables the
compile caches (honest compile times on a machine that compiled before; a fresh GPU machine is cold).
``--real-input N``: the timed steps take their batches from N portrait-like PNG pairs (~460 KB each at
512²) through the product's input pipeline (``tasks.feed``: decode on ``--decode-workers`` threads
ahead, batches built and pinned on a background thread, then copied to the GPU), so a row measures
end-to-end pairs/s with the decode overlapped, not the step alone (the Parquet shard read is not included).
Writes ``train_heads.json`` to ``--out``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import time
from pathlib import Path

import torch
import torch._dynamo
from timing import sync  # bench/ is on sys.path when run as a script

from facelift.models.heads import COMPILE_MODES, DEFAULT_COMPILE, HEADS, build_head, train_step
from facelift.tasks.train.data import to_model

COMPILE_ORDER = ["esa_cyclegan", "cyclegan", "unet_cbam"]


def perceptual_for(device: torch.device) -> tuple[dict, str]:
    if importlib.util.find_spec("lpips") is not None:
        return {"perceptual": "lpips", "lpips_pnet_rand": True}, "lpips (random backbone)"
    return {"perceptual": "proxy"}, "PROXY: lpips absent, random-AlexNet feature distance"


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters  # also imports torch._dynamo for reset()

    return int(counters["stats"]["unique_graphs"])


def png_batches(n_pairs: int, size: int, batch: int, workers: int, pin: bool):
    """Endless training batches decoded from in-memory PNG pairs by the product's input pipeline."""
    import numpy as np

    from facelift.tasks.feed import BackgroundBatches, DecodeAhead, decode_rgb
    from facelift.testing import portrait_png

    rng = np.random.default_rng(0)
    pngs = [(portrait_png(rng, size), portrait_png(rng, size)) for _ in range(max(n_pairs, batch))]
    decoder = DecodeAhead(lambda pair: (decode_rgb(pair[0]), decode_rgb(pair[1])), workers, 4 * max(workers, 1))

    def gen():
        while True:
            decoder.reset(pngs, range(len(pngs)))
            for start in range(0, len(pngs) - batch + 1, batch):
                pairs = [decoder.get(i) for i in range(start, start + batch)]
                yield {"schnell": torch.stack([a for a, _ in pairs]), "dev": torch.stack([b for _, b in pairs])}, {}

    return BackgroundBatches(gen(), prefetch=4, pin_memory=pin)


def bench_one(name: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    overrides, perceptual = perceptual_for(device) if name == "unet_cbam" else ({}, "n/a")
    torch.manual_seed(0)
    head = build_head(name, args.flavor, **overrides)
    cuda = device.type == "cuda"
    mem = torch.channels_last if cuda else torch.contiguous_format
    head.to(device, memory_format=mem).train()
    optimizers = head.configure_optimizers(total_steps=10_000)
    if mode != "none":
        torch._dynamo.reset()  # each compiled row pays its own compilation
        head.compile_modules(mode)
    shape = (args.batch, 3, args.size, args.size)
    batch = {k: (torch.rand(shape, device=device) * 2 - 1).contiguous(memory_format=mem)
             for k in ("schnell", "dev")}
    stream = png_batches(args.real_input, args.size, args.batch, args.decode_workers, cuda) \
        if args.real_input else None

    def next_batch() -> dict[str, torch.Tensor]:
        if stream is None:
            return batch
        return to_model(next(stream), device, mem)  # uint8 copied, converted on the device, as in training

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and args.bf16 else \
        contextlib.nullcontext
    graphs0 = graphs_compiled()
    t0 = time.perf_counter()
    train_step(head, optimizers, batch, autocast)  # compiles every graph of the step
    sync(device)
    first_s = time.perf_counter() - t0
    graphs1 = graphs_compiled()
    t0 = time.perf_counter()
    for _ in range(args.warmup - 1):
        train_step(head, optimizers, batch, autocast)
    sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    t_all = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        losses = train_step(head, optimizers, next_batch(), autocast)
        sync(device)
        times.append(time.perf_counter() - t)
    mean_s = (time.perf_counter() - t_all) / args.steps
    if stream is not None:
        stream.close()
    times.sort()
    median = mean_s if stream is not None else times[len(times) // 2]  # real input: stalls count
    assert all(torch.isfinite(v) for v in losses.values()), f"{name}: non-finite loss"
    row = {"head": name, "mode": "eager" if mode == "none" else mode, "pairs_per_s": round(args.batch / median, 2),
           "ms_per_step": round(median * 1e3, 1), "first_step_s": round(first_s, 1),
           "compile_s": round(max(first_s - median, 0.0), 1) if mode != "none" else None,
           "later_warmup_s": round(warm_s, 1), "graphs": graphs1 - graphs0,
           "late_graphs": graphs_compiled() - graphs1,  # compiled after the first step: recompiles (want 0)
           "params_M": round(sum(p.numel() for p in head.parameters()) / 1e6, 2), "perceptual": perceptual,
           "input": f"{args.size}² PNG, {args.decode_workers} decode threads" if stream else "synthetic tensors"}
    if cuda:
        row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del head, optimizers
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def run_row(name: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One table row; a failure (e.g. out of memory) becomes a row with the error, and the run goes on."""
    label = "eager" if mode == "none" else mode
    try:
        row = bench_one(name, mode, args, device)
        print(f"{name} {label}: {row['pairs_per_s']} pairs/s ({row['ms_per_step']} ms/step), first step "
              f"{row['first_step_s']} s, {row['graphs']} graphs (+{row['late_graphs']} later)", flush=True)
        return row
    except Exception as exc:  # noqa: BLE001 - report the failure in the table, keep going
        print(f"{name} {label}: ERROR {exc!r}"[:300], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"head": name, "mode": label, "note": f"error: {repr(exc)[:200]}"}


def plan_rows(heads: list[str], modes: list[str]) -> list[tuple[str, str]]:
    """(head, mode) in run order: the first head of COMPILE_ORDER compiled (first mode), every head eager,
    then the other modes of that head and the other heads' compiled rows."""
    ordered = sorted(heads, key=lambda n: COMPILE_ORDER.index(n) if n in COMPILE_ORDER else 99)
    if not modes:
        return [(h, "none") for h in heads]
    first = ordered[0]
    rows = [(first, modes[0])] + [(h, "none") for h in heads]
    rows += [(first, m) for m in modes[1:]] + [(h, m) for h in ordered[1:] for m in modes]
    return rows


def disable_compile_caches() -> None:
    """Cold compilation (no FX graph / AOT / kernel caches from earlier runs on this machine)."""
    import torch._inductor.config

    for config in (getattr(torch.compiler, "config", None), torch._inductor.config):
        if config is not None and hasattr(config, "force_disable_caches"):
            config.force_disable_caches = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=None, help="default 64 on cpu, 512 on cuda")
    parser.add_argument("--batch", type=int, default=None, help="default 2 on cpu, 16 on cuda")
    parser.add_argument("--flavor", default="full")
    parser.add_argument("--heads", nargs="*", default=list(HEADS))
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps, the first compiles (>= 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3 cpu, 6 cuda)")
    parser.add_argument("--compile-modes", nargs="*", default=[DEFAULT_COMPILE],
                        choices=[m for m in COMPILE_MODES if m != "none"])
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--cold", action="store_true", help="disable the compile caches")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--budget-s", type=float, default=110.0, help="start no row past this many seconds")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--real-input", type=int, default=0, metavar="N",
                        help="feed N real PNG pairs through the input pipeline (0: synthetic tensors)")
    parser.add_argument("--decode-workers", type=int, default=2, help="decode threads with --real-input")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step compiles)")
    args.size = args.size or (512 if cuda else 64)
    args.batch = args.batch or (16 if cuda else 2)
    args.steps = args.steps or (6 if cuda else 3)
    args.bf16 = args.bf16 and cuda
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cold:
        disable_compile_caches()
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    card = torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    start = time.perf_counter()
    meta = {"device": card, "torch": torch.__version__, "size": args.size, "batch": args.batch,
            "flavor": args.flavor, "dtype": "bf16 autocast + channels_last" if args.bf16 else "fp32",
            "warmup": args.warmup, "timed_steps": args.steps, "cold_compile": args.cold}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name, mode in plan_rows(args.heads, [] if args.no_compile else args.compile_modes):
        if time.perf_counter() - start > args.budget_s:
            rows.append({"head": name, "mode": "eager" if mode == "none" else mode, "note": "skipped: time budget"})
            continue
        rows.append(run_row(name, mode, args, device))
        meta["total_s"] = round(time.perf_counter() - start, 1)
        with open(out / "train_heads.json", "w") as fh:  # after every row: a killed run keeps its rows
            json.dump({**meta, "rows": rows}, fh, indent=2)
    meta["total_s"] = round(time.perf_counter() - start, 1)
    cols = ["head", "mode", "pairs_per_s", "ms_per_step", "first_step_s", "compile_s", "graphs", "late_graphs",
            "params_M", "perceptual", "input"]
    if cuda:
        cols.append("peak_mem_GiB")
    cols.append("note")
    print(f"\n{card}, {args.size}², batch {args.batch}, {meta['dtype']}, flavor {args.flavor}, torch "
          f"{torch.__version__} (median of {args.steps} steps after {args.warmup} warmup; first_step_s "
          f"includes compilation{', cold caches' if args.cold else ''}; total {meta['total_s']} s)\n")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in cols) + " |")
    with open(out / "train_heads.json", "w") as fh:
        json.dump({**meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
