"""FP8 (e4m3, rowwise-scaled ``torch._scaled_mm``) vs bf16 ``nn.Linear`` at FLUX transformer shapes.

    python bench/fp8_linear.py                          # CPU: small shapes (fp8 is emulated there: numerics only)
    python bench/fp8_linear.py --device cuda --out OUT  # GPU: FLUX.1 sizes, M = 4 images x (1024 + 256) tokens

Layers (K -> N): ``attn_proj`` 3072 -> 3072 (to_q/k/v/out), ``ff_up`` 3072 -> 12288, ``ff_down`` 12288 -> 3072
and ``single_fused`` 3072 -> 21504 (a single block's qkv + mlp-in projections as one matmul). Variants: bf16
eager / compiled, fp8 eager / compiled (activation quantization fused by inductor) and, on CUDA, fp8 compiled
with ``use_fast_accum``. Each row: ms per call, TFLOP/s, speedup over bf16 (same mode), relative error
against a float32 reference. Imports only torch and ``models.fp8`` (torch only). Writes ``fp8_linear.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from timing import sync  # bench/ is on sys.path when run as a script
from torch import nn

from facelift.models.fp8 import Fp8Linear, fp8_supported

log = logging.getLogger("bench.fp8_linear")

LAYERS = {"attn_proj": (3072, 3072), "ff_up": (3072, 12288), "ff_down": (12288, 3072), "single_fused": (3072, 21504)}
GPU_TOKENS = 4 * (1024 + 256)  # batch 4 at 512² (64x64 latents / 2x2 patches = 1024) + 256 T5 tokens
CPU_DIV, CPU_TOKENS = 12, 256  # CPU: every dim / 12 (still multiples of 16), 256 tokens


def time_ms(fn, device: torch.device, min_s: float, warmup: int = 3, chunks: int = 7) -> float:
    """Median over ``chunks`` timed chunks of the mean ms per call; the chunks together last about ``min_s``."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    per_chunk = max(1, min(200, int(min_s / chunks / max(time.perf_counter() - start, 1e-6))))
    means = []
    for _ in range(chunks):
        start = time.perf_counter()
        for _ in range(per_chunk):
            fn()
        sync(device)
        means.append((time.perf_counter() - start) * 1e3 / per_chunk)
    return statistics.median(means)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).norm() / ref.norm()).item()


def bench_layer(name: str, m: int, k: int, n: int, device: torch.device, fp8_ok: bool, min_s: float) -> list[dict]:
    torch.manual_seed(0)
    lin = nn.Linear(k, n, device=device, dtype=torch.bfloat16)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    ref = x.float() @ lin.weight.float().t() + lin.bias.float()
    modules: dict[str, nn.Module] = {"bf16": lin}
    if fp8_ok:
        modules["fp8"] = Fp8Linear.from_linear(lin)
        if device.type == "cuda":
            modules["fp8_fast_accum"] = Fp8Linear.from_linear(lin, fast_accum=True)
    rows = []
    for variant, mod in modules.items():
        for compiled in (False, True):
            if variant == "fp8_fast_accum" and not compiled:
                continue
            fn = torch.compile(mod, fullgraph=True, dynamic=False) if compiled else mod
            t0 = time.perf_counter()
            y = fn(x)  # compiles here on the first call
            sync(device)
            first_s = time.perf_counter() - t0
            ms = time_ms(lambda fn=fn: fn(x), device, min_s)
            w_bytes = sum(b.numel() * b.element_size() for b in mod.buffers()) or lin.weight.numel() * 2
            rows.append({"layer": name, "m": m, "k": k, "n": n, "variant": variant, "compiled": compiled,
                         "ms": round(ms, 4), "tflops": round(2 * m * k * n / ms / 1e9, 4),
                         "rel_err": round(rel_err(y, ref), 5), "weight_mb": round(w_bytes / 2**20, 1),
                         "first_call_s": round(first_s, 2)})
            log.info("%s %s%s: %.3f ms", name, variant, " compiled" if compiled else "", ms)
    for r in rows:  # speedup over bf16 in the same mode (eager vs eager, compiled vs compiled)
        base = next(b for b in rows if b["variant"] == "bf16" and b["compiled"] == r["compiled"])
        r["speedup_vs_bf16"] = round(base["ms"] / r["ms"], 2)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| layer | M x K x N | variant | mode | ms | TFLOP/s | vs bf16 | rel err vs fp32 | weight MiB |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['m']}x{r['k']}x{r['n']} | {r['variant']} | "
                     f"{'compiled' if r['compiled'] else 'eager'} | {r['ms']:.3f} | {r['tflops']:.3g} | "
                     f"{r['speedup_vs_bf16']:.2f}x | {r['rel_err']:.4f} | {r['weight_mb']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (small shapes) or cuda[:N] (FLUX.1 shapes)")
    p.add_argument("--tokens", type=int, default=None, help=f"M (default {GPU_TOKENS} on CUDA, {CPU_TOKENS} on CPU)")
    p.add_argument("--layers", default=",".join(LAYERS), help="comma-separated subset of " + ", ".join(LAYERS))
    p.add_argument("--min-s", type=float, default=None, help="seconds timed per row (default 0.5 CUDA, 0.3 CPU)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new layers after this many seconds (default 50 on CUDA: the GPU run must "
                        "stay under a minute; none on CPU)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: on a shared 2-core machine OpenMP spinning makes timings noisy)")
    p.add_argument("--out", default=None, help="directory for fp8_linear.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    unknown = set(args.layers.split(",")) - set(LAYERS)
    if unknown:
        p.error(f"unknown layer(s) {sorted(unknown)}; valid: {', '.join(LAYERS)}")
    gpu = device.type == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    m = args.tokens or (GPU_TOKENS if gpu else CPU_TOKENS)
    min_s = args.min_s if args.min_s is not None else (0.5 if gpu else 0.3)
    budget_s = args.budget_s if args.budget_s is not None else (50.0 if gpu else float("inf"))
    fp8_ok, why = fp8_supported(device)
    log.info("fp8 on %s: %s (%s)", device, fp8_ok, why)

    start = time.perf_counter()
    rows: list[dict] = []
    with torch.inference_mode():
        for name in args.layers.split(","):
            if time.perf_counter() - start > budget_s:
                log.warning("budget of %.0f s spent: skipping layer %s", budget_s, name)
                continue
            k, n = LAYERS[name]
            if not gpu:
                k, n = k // CPU_DIV, n // CPU_DIV
            rows.extend(bench_layer(name, m, k, n, device, fp8_ok, min_s))
    result = {
        "bench": "fp8_linear",
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "torch": torch.__version__,
        "dtype": "bfloat16",
        "fp8_supported": fp8_ok,
        "fp8_reason": why,
        "tokens": m,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    print(f"\n### fp8 vs bf16 linear on {result['device']} (torch {torch.__version__}; fp8: {why})\n")
    print(markdown(rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fp8_linear.json").write_text(json.dumps(result, indent=2))
        log.info("wrote %s", out / "fp8_linear.json")
    return result


if __name__ == "__main__":
    main()
