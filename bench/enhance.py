"""Enhance throughput (images/s) of the heads' generators, eager vs torch.compile, through the product's
``tasks.enhance.InferenceEngine`` (GPU: bf16 weights + channels_last).

    python bench/enhance.py                          # CPU: 64², batch 8, eager vs compiled (+ PNG file pipeline)
    python bench/enhance.py --device cuda --out OUT  # GPU: 512², batch 16, ESA-CycleGAN (target >= 600 img/s)

Two numbers per row: ``tensor`` = a float batch already on the device (the generator alone), ``uint8`` =
host uint8 batch -> device -> uint8 back (what the file pipeline pays, transfers included).
The GPU path imports only torch, numpy, ``models.heads`` and ``tasks.enhance`` (which import only torch).
Writes ``enhance.json`` to ``--out``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from timing import sync  # bench/ is on sys.path when run as a script

from facelift.models.heads import build_head
from facelift.tasks.enhance import InferenceEngine


def rate(fn, n_per_call: int, device: torch.device, min_s: float, warmup: int = 3, max_iters: int = 200) -> float:
    """Images/s: warm up, then run until ``min_s`` seconds (at least 3 calls) have passed."""
    for _ in range(warmup):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or (time.perf_counter() - start < min_s and calls < max_iters):
        fn()
        calls += 1
    sync(device)
    return calls * n_per_call / (time.perf_counter() - start)


def bench_head(name: str, flavor: str, device: str, size: int, batch: int, compiled: bool, min_s: float) -> dict:
    torch.manual_seed(0)
    head = build_head(name, flavor)
    params = sum(p.numel() for p in head.inference_module().parameters())
    t0 = time.perf_counter()
    engine = InferenceEngine.from_head(head, device=device, compile=compiled)
    x = (torch.rand(batch, 3, size, size) * 2 - 1).to(engine.device)
    u8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    engine(x)  # first call: compilation happens here
    sync(engine.device)
    first_s = time.perf_counter() - t0
    row = {"head": name, "flavor": flavor, "params_m": round(params / 1e6, 2), "size": size, "batch": batch,
           "compiled": compiled, **engine.describe(), "first_call_s": round(first_s, 1)}
    row["tensor_img_s"] = round(rate(lambda: engine(x), batch, engine.device, min_s), 1)
    row["uint8_img_s"] = round(rate(lambda: engine.run_uint8(u8), batch, engine.device, min_s), 1)
    return row


def bench_files(name: str, flavor: str, size: int, batch: int, n_files: int) -> dict:
    """CPU only: the whole file pipeline (PNG decode, compute, PNG encode) on a temp folder."""
    import tempfile

    import numpy as np
    from PIL import Image

    from facelift.tasks.enhance import enhance_files

    engine = InferenceEngine.from_head(build_head(name, flavor), device="cpu", compile=False)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        os.makedirs(f"{tmp}/in")
        for i in range(n_files):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(f"{tmp}/in/{i}.png")
        report = enhance_files(f"{tmp}/in", f"{tmp}/out", engine, batch_size=batch, progress=False)
    return {"head": name, "flavor": flavor, "size": size, "batch": batch, "files": n_files,
            "files_img_s": round(report.images_per_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--heads", default="esa_cyclegan", help="comma-separated: esa_cyclegan,cyclegan,unet_cbam")
    ap.add_argument("--flavor", default="full")
    ap.add_argument("--size", type=int, default=None, help="default 64 (cpu) / 512 (cuda)")
    ap.add_argument("--batch", type=int, default=None, help="default 8 (cpu) / 16 (cuda)")
    ap.add_argument("--min-s", type=float, default=None, help="seconds per measurement (default 2)")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--files", type=int, default=32, help="CPU: also time the PNG file pipeline on N files (0: off)")
    ap.add_argument("--out", default=None, help="folder for enhance.json (default $OUT or .)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    size, batch = args.size or (512 if cuda else 64), args.batch or (16 if cuda else 8)
    min_s = args.min_s or 2.0
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
              "torch": torch.__version__, "rows": [], "files": []}
    out = Path(args.out or os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    for name in args.heads.split(","):
        for compiled in ([False] if args.no_compile else [False, True]):
            try:
                row = bench_head(name, args.flavor, args.device, size, batch, compiled, min_s)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other rows
                row = {"head": name, "compiled": compiled, "error": f"{type(exc).__name__}: {exc}"[:300]}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            (out / "enhance.json").write_text(json.dumps(result, indent=2))  # partial results survive a timeout
            if cuda:
                torch.cuda.empty_cache()
    if not cuda and args.files:
        result["files"].append(bench_files(args.heads.split(",")[0], args.flavor, size, batch, args.files))
    (out / "enhance.json").write_text(json.dumps(result, indent=2))
    print(f"\n### enhance throughput on {result['device']} (torch {result['torch']})\n")
    print("| head | size | batch | mode | dtype | channels_last | tensor img/s | uint8 img/s | first call s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        if "error" in r:
            print(f"| {r['head']} | | | {'compiled' if r['compiled'] else 'eager'} | error: {r['error']} | | | | |")
            continue
        print(f"| {r['head']} ({r['params_m']}M) | {r['size']}² | {r['batch']} | "
              f"{'compiled' if r['compiled'] else 'eager'} | {r['dtype']} | {r['channels_last']} | "
              f"{r['tensor_img_s']} | {r['uint8_img_s']} | {r['first_call_s']} |")
    for f in result["files"]:
        print(f"\nPNG file pipeline ({f['files']} files, {f['size']}², batch {f['batch']}, eager): "
              f"{f['files_img_s']} img/s")


if __name__ == "__main__":
    main()
