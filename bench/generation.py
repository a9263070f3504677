"""Where a FLUX pair's time goes, against the transformer-bound floor measured in the same run.

    python bench/generation.py                          # tiny arch on CPU (smoke test)
    python bench/generation.py --device cuda --arch full --modes eager stage regional fp8-regional

Measures, side by side: one transformer step (schnell, dev), VAE decode/encode, the floor for a pair
(S schnell steps + dev steps run + 2 decodes + 1 encode), then the production path end to end
(``models.flux.FluxPair.generate`` + PNG + Parquet commit via ``tasks.build.generate.render_shard``), its per-stage
breakdown — for each mode: eager, stage passes (pinned host copies; swap cost), regional or full
``torch.compile``, FP8 linears.
Writes ``generation.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from timing import sync  # bench/ is on sys.path when run as a script

log = logging.getLogger("bench.generation")


def timed(fn, device: str, reps: int) -> float:
    """Median seconds of ``fn`` after one warm-up, synchronising the GPU around each call."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def build_pair(arch: str, device: str, dtype, cfg):
    """A FluxPair with random weights built in memory (shared text encoders/VAE, as loading does)."""
    import torch
    from diffusers import FluxImg2ImgPipeline, FluxPipeline

    from facelift.models import flux_arch
    from facelift.models.flux import FluxPair
    from facelift.models.tiny_flux import clip_tokenizer, t5_tokenizer

    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            shared = flux_arch.shared_components(arch)
            t_s, t_d = flux_arch.transformer(arch, "schnell"), flux_arch.transformer(arch, "dev")
    finally:
        torch.set_default_dtype(prev)
    toks = {"tokenizer": clip_tokenizer(), "tokenizer_2": t5_tokenizer()}
    schnell = FluxPipeline(scheduler=flux_arch.scheduler("schnell"), transformer=t_s, **shared, **toks)
    dev = FluxImg2ImgPipeline(scheduler=flux_arch.scheduler("dev"), transformer=t_d, **shared, **toks)
    for pipe in (schnell, dev):
        pipe.set_progress_bar_config(disable=True)
    return FluxPair(schnell, dev, cfg.generation, device, True, time.perf_counter() - t0)


def transformer_inputs(model, batch: int, tokens: int, text: int, device: str, dtype, guidance: float = 3.5) -> dict:
    """Random keyword inputs for one denoising step of ``model`` (guidance only for a guidance-embedded one)."""
    import torch

    c = model.config
    args = dict(hidden_states=torch.randn(batch, tokens, c.in_channels), timestep=torch.full((batch,), 0.5),
                encoder_hidden_states=torch.randn(batch, text, c.joint_attention_dim),
                pooled_projections=torch.randn(batch, c.pooled_projection_dim),
                img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3))
    args = {k: v.to(device, dtype) for k, v in args.items()}
    if c.guidance_embeds:
        args["guidance"] = torch.full((batch,), guidance, device=device, dtype=torch.float32)
    return args


def floor(pair, cfg, batch: int, reps: int) -> dict[str, float]:
    """Per-image seconds of the pieces no pipeline can avoid."""
    import torch

    from facelift.models.flux import dev_steps_run

    g, dev_t, s_t, vae = cfg.generation, pair.dev.transformer, pair.schnell.transformer, pair.schnell.vae
    dtype, device = s_t.dtype, pair.device
    scale = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for FLUX.1's VAE
    tokens = (g.height // scale // 2) * (g.width // scale // 2)  # 2x2 latent patches
    text = g.schnell.max_sequence_length
    s_args = transformer_inputs(s_t, batch, tokens, text, device, dtype)
    d_args = transformer_inputs(dev_t, batch, tokens, text, device, dtype, g.dev.guidance)
    lat = torch.randn(batch, vae.config.latent_channels, g.height // scale, g.width // scale, device=device,
                      dtype=dtype)
    img = torch.randn(batch, 3, g.height, g.width, device=device, dtype=dtype)
    with torch.inference_mode():
        out = {
            "schnell_step": timed(lambda: s_t(**s_args), device, reps),
            "dev_step": timed(lambda: dev_t(**d_args), device, reps),
            "vae_decode": timed(lambda: vae.decode(lat), device, reps),
            "vae_encode": timed(lambda: vae.encode(img), device, reps),
        }
    out = {k: v / batch for k, v in out.items()}
    steps_run = dev_steps_run(g.dev.steps, g.dev.strength)
    out["floor_per_pair"] = (g.schnell.steps * out["schnell_step"] + steps_run * out["dev_step"]
                             + 2 * out["vae_decode"] + out["vae_encode"])
    return out


def end_to_end(pair, cfg, batches: int) -> dict[str, float]:
    """The production worker path: generate + PNG (overlapped) + Parquet shard commit to local disk."""
    from facelift.dataset import Dataset
    from facelift.storage import Store
    from facelift.tasks.build.generate import render_shard

    b = cfg.generation.batch_size
    rows = [{"pair_id": f"p{i}", "name": f"Person {i}", "nconst": f"nm{i:07d}", "weight": 1.0, "shard": 0,
             "prompt": f"A professional portrait of Person {i}", "seed": i} for i in range(b * batches)]
    t0 = time.perf_counter()
    render_shard(pair, cfg, rows[:b], "bench")  # warm-up batch (kernels, compilation)
    warmup = time.perf_counter() - t0
    ds = Dataset(Store(tempfile.mkdtemp()))
    t0 = time.perf_counter()
    table = render_shard(pair, cfg, rows, "bench")
    t_commit = time.perf_counter()
    size = ds.commit_shard(0, table)
    wall = time.perf_counter() - t0
    n = table.num_rows
    col = lambda c: sum(table.column(c).to_pylist()) / n  # noqa: E731
    return {"e2e_per_pair": wall / n, "encode": col("encode_s"), "schnell+vae_decode": col("schnell_s"),
            "dev(vae_enc+denoise+dec)": col("dev_s"), "png_cpu_s (overlapped)": col("png_s"),
            "commit": (time.perf_counter() - t_commit) / n, "shard_MB": size / 1e6, "warmup_batch_s": warmup}


def reset_compile(pair) -> None:
    """Back to eager transformers (``Module.compile`` only sets a compiled call on each module)."""
    for pipe in (pair.schnell, pair.dev):
        for module in pipe.transformer.modules():
            module._compiled_call_impl = None


def set_mode(pair, mode: str) -> None:
    """eager | stage (pinned host copies, one transformer held) | regional | full (torch.compile) |
    fp8-regional (FP8 linears, then regional compile; irreversible: run it last)."""
    from facelift.models.flux import compile_transformer, quantize_transformer

    pair.set_placement("stage" if mode == "stage" else "resident")
    reset_compile(pair)
    if mode == "fp8-regional":
        for pipe in (pair.schnell, pair.dev):
            quantize_transformer(pipe.transformer, pair.device)
    if mode in ("regional", "full", "fp8-regional"):
        for pipe in (pair.schnell, pair.dev):
            compile_transformer(pipe.transformer, mode.removeprefix("fp8-"))


def swap_cost(pair) -> dict[str, float]:
    """Stage placement: seconds to hold the other transformer (release is free), and to pin the copies."""
    t0 = time.perf_counter()
    pair.set_placement("stage")
    pin = time.perf_counter() - t0
    pair.hold("schnell")
    return {"pin_host_copies_s": pin, "swap_to_dev_s": pair.hold("dev"), "swap_to_schnell_s": pair.hold("schnell")}


FLOOR_KEYS = ("schnell_step", "dev_step", "vae_decode", "vae_encode", "floor_per_pair")
MODES = ("eager", "stage", "regional", "fp8-regional", "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["eager", "regional", "stage"], choices=MODES,
                        help="measured in this order (fp8-regional quantizes for good: put it after the others)")
    parser.add_argument("--budget-s", type=float, default=420, help="start no new mode past this time")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from facelift.config import resolve_config

    start = time.perf_counter()
    full = args.arch == "full"
    cfg = resolve_config("flux" if full else "tiny", environ={}, overrides={
        "generation.batch_size": args.batch, "generation.device": args.device,
        "generation.dtype": "bfloat16" if args.device.startswith("cuda") else "float32"})
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pair = build_pair(args.arch, args.device, dtype, cfg)
    log.info("built %s FLUX pair on %s in %.1fs", args.arch, args.device, pair.load_s)
    results: dict[str, dict[str, float]] = {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measurement: a run cut short still leaves its numbers
        (out / "generation.json").write_text(json.dumps({"device": device_name(args.device), "arch": args.arch,
                                                         "batch": args.batch, "results": results}, indent=2))

    for mode in args.modes:
        if time.perf_counter() - start > args.budget_s:
            log.info("%s: skipped (time budget)", mode)
            continue
        t0 = time.perf_counter()
        if mode == "stage":
            results["stage"] = swap_cost(pair)  # leaves the pair in stage placement
            save()
        set_mode(pair, mode)
        e = end_to_end(pair, cfg, args.batches)
        pair.set_placement("resident")  # the floor is measured with both transformers on the device
        same_floor = mode == "stage" and "eager" in results  # stage passes run the eager kernels
        f = {k: results["eager"][k] for k in FLOOR_KEYS} if same_floor else floor(pair, cfg, args.batch, args.reps)
        results[mode] = {**results.get(mode, {}), **f, **e, "floor_fraction": f["floor_per_pair"] / e["e2e_per_pair"],
                         "mode_wall_s": time.perf_counter() - t0}
        save()
        log.info("%s: %s", mode, results[mode])
    print(table(results, device_name(args.device), args.arch, args.batch))  # noqa: T201


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"


def table(results: dict[str, dict[str, float]], device: str, arch: str, batch: int) -> str:
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    lines = [f"FLUX pair generation, {arch} arch, {device}, batch {batch} (seconds per image/pair)", "",
             "| measure | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{r.get(k, float('nan')):.4g}" for r in results.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
