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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelift.config import GenerationConfig, StageConfig

log = logging.getLogger(__name__)

SHARED_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")


class FluxWeightsError(FileNotFoundError):
    """FLUX weights are missing: names the model, revision and every place that was looked at."""


def resolve_source(stage: StageConfig, cache_dir: str) -> Path:
    """A local diffusers folder for ``stage.model`` (built, found or taken from the HF cache)."""
    model = stage.model
    if model.startswith("tiny://"):
        from facelift.models.tiny_flux import ensure_tiny_flux

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


def follow_hub_progress_setting() -> None:
    """diffusers draws its own loading bars: hide them when ``HF_HUB_DISABLE_PROGRESS_BARS`` hides the hub's."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled

    if are_progress_bars_disabled():
        diffusers_logging.disable_progress_bar()


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


class HostWeights:
    """A module's weights in (pinned, on CUDA) host memory, on the device only while held.

    Inference never changes weights, so releasing is free (the device copies are dropped, nothing is
    copied back) and holding is one host->device copy per tensor, from pinned memory at full PCIe speed."""

    def __init__(self, module: Any, device: str):
        self.device = device
        tensors = [*module.parameters(), *module.buffers()]
        if device.startswith("cuda") or any(t.device.type != "cpu" for t in tensors):
            hosts = host_copies([t.data for t in tensors], pin=device.startswith("cuda"))
        else:  # already in host memory and nothing to pin: keep the very same tensors
            hosts = [t.data for t in tensors]
        self.tensors: list[tuple[Any, Any]] = list(zip(tensors, hosts, strict=True))
        for t, host in self.tensors:
            t.data = host

    def hold(self) -> None:
        for t, host in self.tensors:
            t.data = host.to(self.device, non_blocking=True)

    def release(self) -> None:
        for t, host in self.tensors:
            t.data = host


def host_copies(tensors: list[Any], pin: bool, chunk_bytes: int = 1 << 30) -> list[Any]:
    """Copies of ``tensors`` in host memory, packed into few large buffers (pinned when ``pin``).

    The CUDA host allocator rounds every pinned allocation up to a power of two, so pinning a 12B
    model tensor by tensor can cost up to twice its size; ``chunk_bytes`` buffers (a power of two) waste
    only their tails. Each copy is a view of its chunk at a 512-byte aligned offset."""
    import torch

    copies, chunk, offset = [], None, 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if chunk is None or offset + nbytes > chunk.numel():
            size = max(chunk_bytes, 1 << max(nbytes - 1, 0).bit_length())
            chunk, offset = torch.empty(size, dtype=torch.uint8, pin_memory=pin), 0
        view = chunk[offset:offset + nbytes].view(t.dtype).view(t.shape)
        view.copy_(t)
        copies.append(view)
        offset += -(-nbytes // 512) * 512
    return copies


def compile_transformer(transformer: Any, mode: str) -> None:
    """``regional``: each repeated block class compiled once and reused by all its instances (and by both
    pipelines, which share the block code): minutes less than ``full``, the whole model as one graph."""
    if mode == "regional":
        transformer.compile_repeated_blocks(fullgraph=True)
    elif mode == "full":
        transformer.compile(fullgraph=True)
    elif mode != "none":
        raise ValueError(f"unknown compile mode {mode!r}; valid: none, regional, full")


def quantize_transformer(transformer: Any, device: str) -> dict[str, Any]:
    """FP8 (e4m3, rowwise scales) linears in the transformer blocks, via :mod:`models.fp8`; layers
    narrower than min(1024, model width) stay in high precision. A device without FP8 matmuls is an error."""
    from facelift.models.fp8 import DEFAULT_MIN_FEATURES, fp8_supported, quantize_linears

    ok, why = fp8_supported(device)
    if not ok:
        raise RuntimeError(f"generation.fp8 is set but {why}")
    if device == "cpu":
        log.warning("generation.fp8 on CPU: %s", why)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    return quantize_linears(transformer, min_features=min(DEFAULT_MIN_FEATURES, width))


@dataclass
class FluxPair:
    """Both pipelines, loaded once per worker (or one of them, for the schnell and dev actor pools)."""

    schnell: Any
    dev: Any
    cfg: GenerationConfig
    device: str
    shared: bool
    load_s: float
    sources: dict[str, str] = field(default_factory=dict)
    placement: str = "resident"  # or "stage": one transformer on the GPU at a time
    host: dict[str, HostWeights] | None = None  # stage placement: the transformers' host copies

    @classmethod
    def load(cls, cfg: GenerationConfig, cache_dir: str, role: str = "pair") -> FluxPair:
        """``role``: ``pair`` (both pipelines), ``schnell`` or ``dev`` (one, for pooled placement)."""
        import torch
        from diffusers import FluxImg2ImgPipeline, FluxPipeline

        if role not in ("pair", "schnell", "dev"):
            raise ValueError(f"unknown worker role {role!r}; valid: pair, schnell, dev")
        t0 = time.perf_counter()
        device = pick_device(cfg.device)
        dtype = torch.float32 if device == "cpu" else getattr(torch, cfg.dtype)  # no bf16 kernels worth it on CPU
        dirs = {v: resolve_source(getattr(cfg, v), cache_dir) for v in ("schnell", "dev") if role in (v, "pair")}
        follow_hub_progress_setting()
        schnell = FluxPipeline.from_pretrained(dirs["schnell"], dtype=dtype) if "schnell" in dirs else None
        shared = role == "pair" and cfg.share_text_encoders and all(
            component_fingerprint(dirs["schnell"], c) == component_fingerprint(dirs["dev"], c)
            for c in SHARED_COMPONENTS
        )
        reuse = {c: getattr(schnell, c) for c in SHARED_COMPONENTS} if shared else {}
        dev = FluxImg2ImgPipeline.from_pretrained(dirs["dev"], dtype=dtype, **reuse) if "dev" in dirs else None
        pipes = [p for p in (schnell, dev) if p is not None]
        weights = module_bytes(*pipes)
        if cfg.fp8:  # the transformers' block linears will hold one byte per weight instead of two
            weights -= sum(p.numel() * p.element_size() for pipe in pipes for p in pipe.transformer.parameters()) // 2
        placement = "resident" if role != "pair" else choose_placement(cfg.placement, device, weights)
        for pipe in pipes:
            pipe.set_progress_bar_config(disable=True)
            for name, module in pipe.components.items():  # shared modules move once
                if isinstance(module, torch.nn.Module) and not (placement == "stage" and name == "transformer"):
                    module.to(device)
            if cfg.fp8:
                quantize_transformer(pipe.transformer, device)
            compile_transformer(pipe.transformer, cfg.compile)
        pair = cls(schnell, dev, cfg, device, shared, 0.0, {k: str(v) for k, v in dirs.items()})
        pair.set_placement(placement)
        pair.load_s = time.perf_counter() - t0
        log.info("loaded FLUX %s on %s (%s) in %.1fs; text encoders/VAE shared: %s; placement: %s; "
                 "compile: %s; fp8: %s", role, device, dtype, pair.load_s, shared, placement, cfg.compile, cfg.fp8)
        return pair

    def set_placement(self, placement: str) -> None:
        """Switch between ``resident`` (both transformers on the device) and ``stage`` (host copies, one
        transformer held at a time)."""
        if placement == "stage" and self.host is None:
            self.host = {v: HostWeights(getattr(self, v).transformer, self.device) for v in ("schnell", "dev")}
        elif placement == "resident" and self.host is not None:
            for weights in self.host.values():
                weights.hold()
            self._sync()
            self.host = None  # the pinned copies are freed
        self.placement = placement

    def _encode(self, pipe: Any, prompts: list[str], max_len: int) -> tuple[Any, Any]:
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=pipe._execution_device,
                                               max_sequence_length=max_len)
        return embeds, pooled

    def _generators(self, seeds: list[int]) -> list[Any]:
        import torch

        gen_device = "cpu" if self.device == "cpu" else self.device
        return [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]

    def _sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def hold(self, variant: str) -> float:
        """Stage placement: hold ``variant``'s transformer on the device, release the other (seconds)."""
        if self.host is None:
            return 0.0
        t0 = time.perf_counter()
        self.host["dev" if variant == "schnell" else "schnell"].release()
        self.host[variant].hold()
        self._sync()
        return time.perf_counter() - t0

    def schnell_stage(self, prompts: list[str], seeds: list[int]) -> tuple[list[Any], Any, dict[str, float]]:
        """Prompt embeddings (for both pipelines) and the schnell images of one batch."""
        import torch

        cfg, timings = self.cfg, {}
        with torch.inference_mode():
            t0 = time.perf_counter()
            s_emb = self._encode(self.schnell, prompts, cfg.schnell.max_sequence_length)
            same_len = cfg.schnell.max_sequence_length == cfg.dev.max_sequence_length
            if self.dev is None:  # schnell pool: the dev actor encodes its own prompts
                d_emb = None
            else:
                d_emb = s_emb if self.shared and same_len else self._encode(self.dev, prompts,
                                                                           cfg.dev.max_sequence_length)
            self._sync()
            timings["encode_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            images = self.schnell(
                prompt_embeds=s_emb[0], pooled_prompt_embeds=s_emb[1], num_inference_steps=cfg.schnell.steps,
                guidance_scale=cfg.schnell.guidance, height=cfg.height, width=cfg.width,
                generator=self._generators(seeds), output_type="pil",
            ).images
            self._sync()
            timings["schnell_s"] = time.perf_counter() - t0
        return images, d_emb, timings

    def dev_stage(self, images: list[Any], d_emb: Any, seeds: list[int],
                  prompts: list[str] | None = None) -> tuple[list[Any], float]:
        """dev image-to-image from the schnell images of one batch, same prompts (embedded here when
        ``d_emb`` is None)."""
        import torch

        cfg = self.cfg
        with torch.inference_mode():
            t0 = time.perf_counter()
            if d_emb is None:
                d_emb = self._encode(self.dev, prompts or [], cfg.dev.max_sequence_length)
            out = self.dev(
                prompt_embeds=d_emb[0], pooled_prompt_embeds=d_emb[1], image=images,
                strength=cfg.dev.strength, num_inference_steps=cfg.dev.steps, guidance_scale=cfg.dev.guidance,
                height=cfg.height, width=cfg.width, generator=self._generators([s + 1 for s in seeds]),
                output_type="pil",
            ).images
            self._sync()
        return out, time.perf_counter() - t0

    def generate(self, prompts: list[str], seeds: list[int]) -> tuple[list[Any], list[Any], dict[str, float]]:
        """One batch: schnell images, dev images (PIL) and per-batch stage seconds."""
        return next(self.render_batches([(prompts, seeds)]))

    def render_batches(self, batches: list[tuple[list[str], list[int]]],
                       schnell: list[tuple[list[Any], dict[str, float]]] | None = None,
                       ) -> Iterator[tuple[list, list, dict]]:
        """Yield (schnell images, dev images, seconds) per batch, in order.

        Resident: schnell then dev per batch. Stage: schnell for every batch, one transformer swap, then dev
        for every batch (the swap seconds are spread over the batches' ``dev_s``). ``schnell`` given (dev
        pool): the batches' schnell images and seconds, rendered by a schnell actor; only dev runs here."""
        if schnell is not None:
            for (prompts, seeds), (s_imgs, t) in zip(batches, schnell, strict=True):
                d_imgs, dev_s = self.dev_stage(s_imgs, None, seeds, prompts)
                yield s_imgs, d_imgs, t | {"dev_s": dev_s}
            return
        if self.placement != "stage":
            for prompts, seeds in batches:
                s_imgs, d_emb, t = self.schnell_stage(prompts, seeds)
                d_imgs, t["dev_s"] = self.dev_stage(s_imgs, d_emb, seeds)
                yield s_imgs, d_imgs, t
            return
        self.hold("schnell")
        firsts = [self.schnell_stage(p, s) for p, s in batches]
        swap = self.hold("dev") / max(len(batches), 1)
        for (_, seeds), (s_imgs, d_emb, t) in zip(batches, firsts, strict=True):
            d_imgs, dev_s = self.dev_stage(s_imgs, d_emb, seeds)
            yield s_imgs, d_imgs, t | {"dev_s": dev_s + swap}

    def schnell_batches(self, batches: list[tuple[list[str], list[int]]]) -> list[tuple[list[Any], dict]]:
        """Schnell pool: the schnell images and seconds of every batch, for a dev actor to finish."""
        return [(images, t) for images, _, t in (self.schnell_stage(p, s) for p, s in batches)]


def module_bytes(*pipes: Any) -> int:
    """Bytes of all distinct weights of the pipelines (shared modules counted once)."""
    seen: set[int] = set()
    total = 0
    for pipe in pipes:
        for module in pipe.components.values():
            if hasattr(module, "parameters"):
                for p in module.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        total += p.numel() * p.element_size()
    return total


def choose_placement(requested: str, device: str, weight_bytes: int, headroom: int = 12 << 30) -> str:
    """``resident`` when both pipelines plus activation headroom fit the GPU, else ``stage``."""
    if requested in ("resident", "stage"):
        return requested  # "pools" is the scheduler's choice: a worker holding both pipelines decides as auto
    if not device.startswith("cuda"):
        return "resident"
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    return "resident" if weight_bytes + headroom <= total else "stage"
