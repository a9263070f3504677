"""FLUX parts of the evaluation: the schnell + LoRA comparator row and the timing table (paper Fig. 8).

Pipelines load through ``models.flux.resolve_source`` (local folder, ``tiny://`` or a pinned hub snapshot)
and ``FluxPipeline.from_pretrained(folder)``; a LoRA loads with diffusers ``load_lora_weights`` from a hub
id, a local folder or a ``.safetensors`` file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from facelift.tasks.enhance import InferenceEngine, translate_batches

from facelift.config import StageConfig

log = logging.getLogger(__name__)


def load_t2i(stage: StageConfig, cache_dir: str, device: str, dtype: str) -> Any:
    """A text-to-image ``FluxPipeline`` for ``stage`` on ``device``."""
    from diffusers import FluxPipeline
    from facelift.models.flux import pick_device, resolve_source

    folder = resolve_source(stage, cache_dir)
    pipe = FluxPipeline.from_pretrained(folder, dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(pick_device(device))


def generate(pipe: Any, stage: StageConfig, prompts: list[str], seeds: list[int], size: int,
             batch_size: int = 4) -> torch.Tensor:
    """uint8 NCHW images, one per (prompt, seed), ``stage.steps`` steps at ``stage.guidance``."""
    out = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i:i + batch_size]]
        result = pipe(prompt=prompts[i:i + batch_size], height=size, width=size, num_inference_steps=stage.steps,
                      guidance_scale=stage.guidance, max_sequence_length=stage.max_sequence_length,
                      generator=gens, output_type="np")
        out.append(torch.from_numpy((np.asarray(result.images) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2))
    return torch.cat(out)


def lora_images(lora: str, stage: StageConfig, prompts: list[str], seeds: list[int], size: int, cache_dir: str,
                device: str, dtype: str, batch_size: int = 4) -> tuple[torch.Tensor, float]:
    """schnell + LoRA text-to-image for the given prompts/seeds: (uint8 images, seconds per image)."""
    pipe = load_t2i(stage, cache_dir, device, dtype)
    path = Path(lora).expanduser()
    try:
        if path.is_file():
            pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        else:
            pipe.load_lora_weights(str(path) if path.exists() else lora)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot load LoRA {lora!r} (a .safetensors file, a folder, or a hub id in the "
                                f"local HF cache): {exc}") from exc
    generate(pipe, stage, prompts[:1], seeds[:1], size, 1)  # warm-up
    start = time.perf_counter()
    images = generate(pipe, stage, prompts, seeds, size, batch_size)
    return images, (time.perf_counter() - start) / len(images)


def _per_image(fn: Any, n: int, repeats: int) -> float:
    fn()  # warm-up (allocations, kernels, compile caches)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def timing_table(schnell: StageConfig, dev: StageConfig, head: Any, resolutions: list[int], cache_dir: str,
                 device: str = "auto", dtype: str = "float32", n_images: int = 2, repeats: int = 1,
                 prompt: str = "A professional portrait of Jane Doe") -> pd.DataFrame:
    """Seconds per image: dev T2I, schnell T2I, the head alone and schnell + head, per resolution."""
    if not resolutions:
        raise ValueError("timing needs at least one resolution")
    pipes = {"schnell": load_t2i(schnell, cache_dir, device, dtype), "dev": load_t2i(dev, cache_dir, device, dtype)}
    stages = {"schnell": schnell, "dev": dev}
    engine = InferenceEngine.from_head(head, device=device, compile=False)
    prompts, seeds = [prompt] * n_images, list(range(n_images))
    records = []
    for res in resolutions:
        if res % 16:
            raise ValueError(f"resolution {res} is not a multiple of 16 (FLUX packs 2x2 latent patches)")
        t = {k: _per_image(lambda k=k, res=res: generate(pipes[k], stages[k], prompts, seeds, res, n_images), n_images,
                           repeats) for k in ("dev", "schnell")}
        sample = generate(pipes["schnell"], schnell, prompts, seeds, res, n_images)
        t["head"] = _per_image(lambda sample=sample: translate_batches(engine, sample, n_images), n_images, repeats)
        total = t["schnell"] + t["head"]
        records.append({"resolution": res, "dev_t2i_s": t["dev"], "schnell_t2i_s": t["schnell"], "head_s": t["head"],
                        "schnell_head_s": total, "saved_pct": 100.0 * (1 - total / t["dev"]),
                        "dev_steps": dev.steps, "schnell_steps": schnell.steps, "n_images": n_images})
        log.info("timing %dpx: dev %.3fs schnell %.3fs head %.4fs -> %.1f%% saved", res, t["dev"], t["schnell"],
                 t["head"], records[-1]["saved_pct"])
    return pd.DataFrame.from_records(records)


def timing_plot(timing: pd.DataFrame, title: str = "seconds per image") -> bytes:
    """Grouped bars per resolution (dev T2I, schnell T2I, schnell + head) with the saving annotated."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    x = np.arange(len(timing))
    for j, (col, label) in enumerate([("dev_t2i_s", "dev T2I"), ("schnell_t2i_s", "schnell T2I"),
                                      ("schnell_head_s", "schnell + head")]):
        ax.bar(x + (j - 1) * 0.27, timing[col], 0.27, label=label)
    for xi, (_, r) in zip(x, timing.iterrows(), strict=True):
        ax.annotate(f"-{r.saved_pct:.0f}%", (xi + 0.27, r.schnell_head_s), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{r}²" for r in timing["resolution"]])
    ax.set_ylabel("seconds / image")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
