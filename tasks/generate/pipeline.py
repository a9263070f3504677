"""schnell text-to-image, then the head: the method's payoff as one object that loads its models once.

:class:`Generator` holds the FLUX.1-schnell pipeline (resolved like the dataset build: a hub id + pinned
revision, a local folder or ``tiny://schnell``) and a trained head in an :class:`InferenceEngine`. Calling it
with prompts and seeds runs schnell in batches (one CPU ``torch.Generator`` per image, so an image depends only
on its prompt and seed, not on its batch) and the head on the batch, and returns both images with their
provenance. Used by ``facelift generate``, ``facelift.api.generate``, the ``generate-images`` flow and the
Ray Serve application.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from facelift.tasks.enhance import InferenceEngine
from facelift.tasks.enhance.metadata import PROVENANCE_KEY, head_run_id, public_uri

log = logging.getLogger(__name__)

__all__ = ["PROVENANCE_KEY", "GenerateOptions", "Generated", "Generator", "head_run_id", "png_bytes",
           "provenance_params", "read_prompts", "read_provenance"]


@dataclass(frozen=True)
class GenerateOptions:
    """How to generate: the FLUX profile (tiny or flux), size, batch, device; ``None`` = the profile's value."""

    profile: str = "tiny"
    size: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    dtype: str | None = None
    compile: bool | None = None
    endpoint_url: str | None = None
    cache_dir: str | None = None


@dataclass
class Generated:
    """One prompt's result: uint8 CHW images (schnell alone, schnell + head), provenance and timings."""

    prompt: str
    seed: int
    schnell: torch.Tensor
    enhanced: torch.Tensor
    provenance: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


class Generator:
    """schnell + head, loaded once; ``generator(prompts, seeds)`` -> list of :class:`Generated`."""

    def __init__(self, head: str, options: GenerateOptions | None = None) -> None:
        from diffusers import FluxPipeline

        from facelift import __version__
        from facelift.config import resolve_config
        from facelift.models.flux import follow_hub_progress_setting, resolve_source
        from facelift.models.heads import load_head
        from facelift.tasks.enhance.metadata import head_sha256
        from facelift.tasks.generate.provenance import snapshot_commit, transformer_sha256

        options = options or GenerateOptions()
        cfg = resolve_config(options.profile)
        self.options, self.stage = options, cfg.generation.schnell
        self.size = options.size or cfg.generation.height
        if self.size % 16:
            raise ValueError(f"size {self.size} is not a multiple of 16 (FLUX packs 2x2 latent patches)")
        self.batch_size = options.batch_size or cfg.generation.batch_size
        self.head_uri = str(head)
        loaded = load_head(self.head_uri, options.endpoint_url)  # fail fast on a bad head, before FLUX loads
        self.engine = InferenceEngine.from_head(loaded, device=options.device, compile=options.compile)
        dtype = options.dtype or (cfg.generation.dtype if self.engine.device.type == "cuda" else "float32")
        cache_dir = options.cache_dir or cfg.cache_dir
        folder = resolve_source(self.stage, cache_dir)
        commit = snapshot_commit(folder)
        follow_hub_progress_setting()
        pipe = FluxPipeline.from_pretrained(folder, dtype=getattr(torch, dtype))
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.engine.device)
        self.base_provenance = {
            "schnell_model": self.stage.model, "schnell_revision": self.stage.revision or commit,
            "schnell_commit": commit, "schnell_transformer_sha256": transformer_sha256(folder, cache_dir=cache_dir),
            "steps": self.stage.steps, "guidance": self.stage.guidance,
            "max_sequence_length": self.stage.max_sequence_length, "size": self.size, "dtype": dtype,
            "head": loaded.name, "head_flavor": loaded.flavor, "head_uri": public_uri(self.head_uri),
            "head_run_id": head_run_id(self.head_uri), "head_sha256": head_sha256(self.head_uri, options.endpoint_url),
            "facelift_version": __version__, "profile": options.profile,
        }
        log.info("generator ready: %s (%s) + head %s on %s", self.stage.model, dtype, self.head_uri,
                 self.engine.device)

    def schnell(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """uint8 NCHW schnell images, one per (prompt, seed)."""
        import numpy as np

        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        result = self.pipe(prompt=list(prompts), height=self.size, width=self.size,
                           num_inference_steps=self.stage.steps, guidance_scale=self.stage.guidance,
                           max_sequence_length=self.stage.max_sequence_length, generator=gens, output_type="np")
        return torch.from_numpy((np.asarray(result.images) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Generated]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if any(not p.strip() for p in prompts):
            raise ValueError("empty prompt")
        out: list[Generated] = []
        for i in range(0, len(prompts), self.batch_size):
            ps, ss = prompts[i:i + self.batch_size], [int(s) for s in seeds[i:i + self.batch_size]]
            t0 = time.perf_counter()
            base = self.schnell(ps, ss)
            t1 = time.perf_counter()
            enhanced = self.engine.run_uint8(base)
            t2 = time.perf_counter()
            n = len(ps)
            for j, (prompt, seed) in enumerate(zip(ps, ss, strict=True)):
                out.append(Generated(prompt, seed, base[j], enhanced[j],
                                     {"prompt": prompt, "seed": seed, **self.base_provenance},
                                     {"schnell_s": (t1 - t0) / n, "head_s": (t2 - t1) / n}))
        return out


def png_bytes(image: torch.Tensor, provenance: dict[str, Any], compress_level: int = 6) -> bytes:
    """uint8 CHW -> PNG carrying the provenance: ``facelift`` (JSON), A1111 ``parameters`` and XMP (IPTC)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(buf, "PNG", compress_level=compress_level,
                                                               **provenance_params("PNG", provenance))
    return buf.getvalue()


def provenance_params(fmt: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """``PIL.Image.save`` keyword arguments that write a generated image's provenance in ``fmt``."""
    from facelift.tasks.enhance.metadata import save_params
    from facelift.tasks.generate.provenance import a1111_parameters

    return save_params(fmt, provenance, a1111_parameters(provenance))


def read_provenance(data: bytes) -> dict[str, Any]:
    """The provenance of an image written by facelift (PNG text chunk, else XMP); {} if it has none."""
    from PIL import Image

    from facelift.tasks.enhance.metadata import read_metadata

    with Image.open(io.BytesIO(data)) as img:
        return read_metadata(img)[0]


def read_prompts(path: str, endpoint_url: str | None = None) -> list[str]:
    """Prompts from a text file, one per line (blank lines and ``#`` comments ignored)."""
    from facelift.storage import open_uri

    with open_uri(path, endpoint_url, mode="rt") as fh:
        prompts = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts
