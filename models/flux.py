"""FLUX pipeline loading and paired generation (schnell text-to-image, then dev image-to-image).

Every source resolves to a local diffusers folder first — a local path, the built-in ``tiny://`` model,
or a Hugging Face snapshot (hub id + pinned revision; the token comes from ``HF_TOKEN`` in the
environment and is never logged) — and is then loaded with ``from_pretrained(folder)``.
When schnell and dev ship identical text encoders and VAE (true for FLUX.1), dev reuses schnell's
modules (one copy in memory) and the prompt embeddings computed once per batch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelift.config import GenerationConfig, StageConfig

log = logging.getLogger(__name__)

SHARED_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


class FluxWeightsError(FileNotFoundError):
    """FLUX weights are missing: names the model, revision and every place that was looked at."""


def resolve_source(stage: StageConfig, cache_dir: str) -> Path:
    """A local diffusers folder for ``stage.model`` (built, found or taken from the HF cache)."""
    model = stage.model
    if model.startswith("tiny://"):
        from models.tiny_flux import ensure_tiny_flux

        return ensure_tiny_flux(cache_dir, model.removeprefix("tiny://"))
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise FluxWeightsError(f"{local} exists but is not a diffusers pipeline folder "
                                   f"(no model_index.json)")
        return local
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise FluxWeightsError(f"FLUX weights not found: {model!r} is neither an existing folder nor a "
                               f"hub id of the form owner/name")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        # diffusers layout only: skip the single-file checkpoints at the repo root
        folder = snapshot_download(model, revision=stage.revision, allow_patterns=["model_index.json", "*/*"])
        return Path(folder)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        offline = "offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "online"
        raise FluxWeightsError(
            f"FLUX weights not found: {model}@{stage.revision or 'main'} is not a local folder and could "
            f"not be taken from the Hugging Face cache {constants.HF_HUB_CACHE} ({offline}): "
            f"{type(exc).__name__}. Download it once (`huggingface-cli download {model}`, with HF_TOKEN "
            f"set for gated models) or point generation.*.model at a local folder."
        ) from None


def component_fingerprint(folder: Path, component: str) -> str:
    """Content hash of one pipeline component folder; HF-cache symlinks give the blob hash for free."""
    sub = folder / component
    if not sub.is_dir():
        return "missing"
    h = hashlib.sha256()
    for path in sorted(p for p in sub.rglob("*") if p.is_file()):
        h.update(path.relative_to(sub).as_posix().encode())
        target = path.resolve()
        if path.is_symlink() and target.parent.name == "blobs":
            h.update(target.name.encode())  # the LFS sha256 / git blob id
        else:
            with open(target, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this worker")
    return device


def dev_steps_run(steps: int, strength: float) -> int:
    """Denoising steps img2img actually runs (diffusers' get_timesteps)."""
    init = min(steps * strength, steps)
    return steps - int(max(steps - init, 0))


@dataclass
class FluxPair:
    """Both pipelines, loaded once per worker."""

    schnell: Any
    dev: Any
    cfg: GenerationConfig
    device: str
    shared: bool
    load_s: float
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, cfg: GenerationConfig, cache_dir: str) -> FluxPair:
        import torch
        from diffusers import FluxImg2ImgPipeline, FluxPipeline

        t0 = time.perf_counter()
        device = pick_device(cfg.device)
        dtype = getattr(torch, _DTYPES[cfg.dtype]) if device != "cpu" or cfg.dtype == "float32" \
            else torch.float32
        schnell_dir = resolve_source(cfg.schnell, cache_dir)
        dev_dir = resolve_source(cfg.dev, cache_dir)
        schnell = FluxPipeline.from_pretrained(schnell_dir, dtype=dtype)
        shared = cfg.share_text_encoders and all(
            component_fingerprint(schnell_dir, c) == component_fingerprint(dev_dir, c)
            for c in SHARED_COMPONENTS
        )
        reuse = {c: getattr(schnell, c) for c in SHARED_COMPONENTS} if shared else {}
        dev = FluxImg2ImgPipeline.from_pretrained(dev_dir, dtype=dtype, **reuse)
        for pipe in (schnell, dev):
            pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
        if cfg.compile and device.startswith("cuda"):
            schnell.transformer.compile(fullgraph=True)
            dev.transformer.compile(fullgraph=True)
        load_s = time.perf_counter() - t0
        log.info("loaded FLUX pair on %s (%s) in %.1fs; text encoders/VAE shared: %s",
                 device, dtype, load_s, shared)
        return cls(schnell, dev, cfg, device, shared, load_s,
                   {"schnell": str(schnell_dir), "dev": str(dev_dir)})

    def _encode(self, pipe: Any, prompts: list[str], max_len: int) -> tuple[Any, Any]:
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=pipe._execution_device,
                                               max_sequence_length=max_len)
        return embeds, pooled

    def _generators(self, seeds: list[int]) -> list[Any]:
        import torch

        gen_device = "cpu" if self.device == "cpu" else self.device
        return [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]

    def generate(self, prompts: list[str], seeds: list[int]) -> tuple[list[Any], list[Any], dict[str, float]]:
        """One batch: schnell images, dev images (PIL) and per-batch stage seconds."""
        import torch

        cfg, sync = self.cfg, (torch.cuda.synchronize if self.device.startswith("cuda") else lambda: None)
        timings: dict[str, float] = {}
        with torch.inference_mode():
            t0 = time.perf_counter()
            s_emb = self._encode(self.schnell, prompts, cfg.schnell.max_sequence_length)
            same_len = cfg.schnell.max_sequence_length == cfg.dev.max_sequence_length
            d_emb = s_emb if self.shared and same_len else self._encode(self.dev, prompts,
                                                                       cfg.dev.max_sequence_length)
            sync()
            timings["encode_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            schnell_images = self.schnell(
                prompt_embeds=s_emb[0], pooled_prompt_embeds=s_emb[1], num_inference_steps=cfg.schnell.steps,
                guidance_scale=cfg.schnell.guidance, height=cfg.height, width=cfg.width,
                generator=self._generators(seeds), output_type="pil",
            ).images
            sync()
            timings["schnell_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            dev_images = self.dev(
                prompt_embeds=d_emb[0], pooled_prompt_embeds=d_emb[1], image=schnell_images,
                strength=cfg.dev.strength, num_inference_steps=cfg.dev.steps, guidance_scale=cfg.dev.guidance,
                height=cfg.height, width=cfg.width, generator=self._generators([s + 1 for s in seeds]),
                output_type="pil",
            ).images
            sync()
            timings["dev_s"] = time.perf_counter() - t0
        return schnell_images, dev_images, timings
