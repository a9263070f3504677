"""FLUX parts of the evaluation: the schnell + LoRA comparator row and the timing table (paper Fig. 8).

Pipelines load through ``models.flux.resolve_source`` (local folder, ``tiny://`` or a pinned hub snapshot)
and ``FluxPipeline.from_pretrained(folder)``; a LoRA loads with diffusers ``load_lora_weights`` from a hub
id, a local folder or a ``.safetensors`` file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from facelift.config import StageConfig
from facelift.tasks.enhance import InferenceEngine, translate_batches
from facelift.tasks.evaluate.score import Timed

log = logging.getLogger(__name__)


def load_t2i(stage: StageConfig, cache_dir: str, device: str, dtype: str) -> Any:
    """A text-to-image ``FluxPipeline`` for ``stage`` on ``device``."""
    from diffusers import FluxPipeline

    from facelift.models.flux import follow_hub_progress_setting, pick_device, resolve_source

    folder = resolve_source(stage, cache_dir)
    follow_hub_progress_setting()
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


def load_lora_pipe(lora: str, stage: StageConfig, cache_dir: str, device: str, dtype: str) -> Any:
    """schnell text-to-image with ``lora`` loaded (a ``.safetensors`` file, a folder or a hub id)."""
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
    return pipe


class LoraSource:
    """The schnell + LoRA row: text-to-image from each input pair's prompt and seed, batch by batch (timed after
    a one-image warm-up; a ``tasks.evaluate.score.RowSource``)."""

    kind = "lora"
    name = "schnell + LoRA"

    def __init__(self, lora: str, stage: StageConfig, size: int, cache_dir: str, device: str, dtype: str,
                 batch_size: int = 4) -> None:
        self.pipe = load_lora_pipe(lora, stage, cache_dir, device, dtype)
        self.stage, self.size, self.batch_size = stage, size, batch_size
        self.source, self.notes = lora, {}
        self.timer = Timed()

    def make(self, batch: Any) -> torch.Tensor:
        return self.timer.run(lambda b, k: generate(self.pipe, self.stage, b.prompts[:k], b.seeds[:k], self.size,
                                                    self.batch_size), batch)

    def seconds_per_image(self) -> float | None:
        return self.timer.per_image()


_clock = time.perf_counter  # the timer (tests substitute a fake clock)


@dataclass(frozen=True)
class Timing:
    """Seconds per image over ``repeats`` timed runs (after one warm-up): the median and the range."""

    median: float
    low: float
    high: float
    repeats: int

    def as_dict(self, name: str) -> dict[str, float]:
        return {name: self.median, f"{name}_min": self.low, f"{name}_max": self.high}


def time_per_image(fn: Callable[[], Any], n: int, repeats: int = 3) -> Timing:
    """Time ``fn`` (which makes ``n`` images) ``repeats`` times after a warm-up call."""
    if repeats < 1 or n < 1:
        raise ValueError(f"timing needs repeats >= 1 and n >= 1, got repeats={repeats}, n={n}")
    fn()  # warm-up (allocations, kernels, compile caches)
    per_image = []
    for _ in range(repeats):
        start = _clock()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        per_image.append((_clock() - start) / n)
    return Timing(float(np.median(per_image)), min(per_image), max(per_image), repeats)


def timing_table(schnell: StageConfig, dev: StageConfig, head: Any, resolutions: list[int], cache_dir: str,
                 device: str = "auto", dtype: str = "float32", n_images: int = 2, repeats: int = 3,
                 prompt: str = "A professional portrait of Jane Doe") -> pd.DataFrame:
    """Seconds per image (median over ``repeats``, with min and max): dev T2I, schnell T2I, the head alone and
    schnell + head, per resolution; the saving from the medians, its range from the extremes."""
    if not resolutions:
        raise ValueError("timing needs at least one resolution")
    if repeats < 3:
        log.warning("timing with %d repeat(s): the median and spread need >= 3", repeats)
    pipes = {"schnell": load_t2i(schnell, cache_dir, device, dtype), "dev": load_t2i(dev, cache_dir, device, dtype)}
    stages = {"schnell": schnell, "dev": dev}
    engine = InferenceEngine.from_head(head, device=device, compile=False)
    prompts, seeds = [prompt] * n_images, list(range(n_images))
    records = []
    for res in resolutions:
        if res % 16:
            raise ValueError(f"resolution {res} is not a multiple of 16 (FLUX packs 2x2 latent patches)")
        t = {k: time_per_image(lambda k=k, res=res: generate(pipes[k], stages[k], prompts, seeds, res, n_images),
                               n_images, repeats) for k in ("dev", "schnell")}
        sample = generate(pipes["schnell"], schnell, prompts, seeds, res, n_images)
        t["head"] = time_per_image(lambda sample=sample: translate_batches(engine, sample, n_images), n_images,
                                   repeats)
        total = Timing(t["schnell"].median + t["head"].median, t["schnell"].low + t["head"].low,
                       t["schnell"].high + t["head"].high, repeats)
        records.append({"resolution": res, **t["dev"].as_dict("dev_t2i_s"), **t["schnell"].as_dict("schnell_t2i_s"),
                        **t["head"].as_dict("head_s"), **total.as_dict("schnell_head_s"),
                        "saved_pct": 100.0 * (1 - total.median / t["dev"].median),
                        "saved_pct_min": 100.0 * (1 - total.high / t["dev"].low),
                        "saved_pct_max": 100.0 * (1 - total.low / t["dev"].high),
                        "repeats": repeats, "dev_steps": dev.steps, "schnell_steps": schnell.steps,
                        "n_images": n_images})
        log.info("timing %dpx (median of %d): dev %.3fs schnell %.3fs head %.4fs -> %.1f%% saved", res, repeats,
                 t["dev"].median, t["schnell"].median, t["head"].median, records[-1]["saved_pct"])
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
