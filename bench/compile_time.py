"""Compile time of the FLUX transformers: regional (each repeated block once) vs whole-model torch.compile.

    python bench/compile_time.py                       # CPU: tiny width, FLUX.1's 19 + 38 blocks
    python bench/compile_time.py --device cuda --arch full

Builds a schnell and a dev transformer (random weights; same block classes), compiles both the same way and
times, for each model in turn: the warm-up (first 3 calls: compilation and any recompiles) and the steady
step (median of 9). Regional compilation compiles each block class once, so the dev model (and every block
after the first) reuses the schnell model's compiled code; whole-model compilation starts over per model.
Prints a markdown table and writes ``compile_time.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from generation import timed, transformer_inputs  # bench/ is on sys.path when run as a script
from timing import sync

log = logging.getLogger("bench.compile_time")


def build(arch: str, layers: tuple[int, int], device: str, dtype: torch.dtype) -> list[torch.nn.Module]:
    from facelift.models.flux_arch import transformer

    with torch.device(device):
        models = [transformer(arch, v, num_layers=layers[0], num_single_layers=layers[1]) for v in ("schnell", "dev")]
    return [m.to(dtype).eval() for m in models]


def measure(model: torch.nn.Module, args: dict, device: str) -> tuple[float, float]:
    """Seconds of the first 3 calls (compilation and any recompiles), then the median step of 9."""
    t0 = time.perf_counter()
    for _ in range(3):
        model(**args)
    sync(device)
    warm = time.perf_counter() - t0
    return warm, timed(lambda: model(**args), device, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--layers", default="19,38", help="double,single blocks (FLUX.1: 19,38)")
    parser.add_argument("--modes", nargs="+", default=["none", "regional", "full"])
    parser.add_argument("--cold", action="store_true", help="disable the compile caches of earlier runs")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from train_heads import disable_compile_caches  # bench/ is on sys.path when run as a script

    from facelift.models.flux import compile_transformer

    if args.cold:
        disable_compile_caches()

    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    layers = tuple(int(x) for x in args.layers.split(","))
    batch, tokens, text = (4, 1024, 256) if args.arch == "full" else (2, 64, 32)
    rows = []
    for mode in args.modes:
        torch._dynamo.reset()
        models = build(args.arch, layers, args.device, dtype)
        with torch.inference_mode():
            for m in models:
                compile_transformer(m, mode)
            for name, m in zip(("schnell", "dev"), models, strict=True):
                warm, step = measure(m, transformer_inputs(m, batch, tokens, text, args.device, dtype), args.device)
                rows.append({"mode": mode, "model": name, "warmup_3_calls_s": round(warm, 2),
                             "compile_s": round(max(warm - 3 * step, 0.0), 2), "step_ms": round(step * 1e3, 2)})
                log.info("%s", rows[-1])
        del models
    card = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"\nFLUX transformer compile time, {args.arch} width, {layers[0]}+{layers[1]} blocks, {card}, "  # noqa: T201
          f"batch {batch}, {tokens} image + {text} text tokens, {'cold' if args.cold else 'warm'} caches\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))  # noqa: T201
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")  # noqa: T201
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_time.json").write_text(json.dumps({"device": card, "arch": args.arch, "layers": layers,
                                                       "cold": args.cold, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
