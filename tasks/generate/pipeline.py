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
import json
import logging
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from facelift.tasks.enhance import InferenceEngine

log = logging.getLogger(__name__)

PROVENANCE_KEY = "facelift"  # PNG text chunk holding the provenance as JSON


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


def head_run_id(head_uri: str) -> str:
    """The run id of a head URI (``<root>/runs/<id>`` or ``.../runs/<id>/head``), else the folder's name."""
    parts = [p for p in str(head_uri).rstrip("/").split("/") if p]
    if parts and parts[-1] == "head":
        parts = parts[:-1]
    return parts[-1] if parts else str(head_uri)


class Generator:
    """schnell + head, loaded once; ``generator(prompts, seeds)`` -> list of :class:`Generated`."""

    def __init__(self, head: str, options: GenerateOptions | None = None) -> None:
        from diffusers import FluxPipeline

        from facelift import __version__
        from facelift.config import resolve_config
        from facelift.models.flux import component_fingerprint, follow_hub_progress_setting, resolve_source
        from facelift.models.heads import load_head

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
        folder = resolve_source(self.stage, options.cache_dir or cfg.cache_dir)
        follow_hub_progress_setting()
        pipe = FluxPipeline.from_pretrained(folder, dtype=getattr(torch, dtype))
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.engine.device)
        self.base_provenance = {
            "schnell_model": self.stage.model, "schnell_revision": self.stage.revision or "",
            "schnell_transformer_sha256": component_fingerprint(folder, "transformer"),
            "steps": self.stage.steps, "guidance": self.stage.guidance,
            "max_sequence_length": self.stage.max_sequence_length, "size": self.size, "dtype": dtype,
            "head": loaded.name, "head_flavor": loaded.flavor, "head_uri": self.head_uri,
            "head_run_id": head_run_id(self.head_uri), "facelift_version": __version__, "profile": options.profile,
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
    """uint8 CHW -> PNG whose text chunks carry the provenance: one JSON chunk plus one chunk per key."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PROVENANCE_KEY, json.dumps(provenance, sort_keys=True))
    for key, value in provenance.items():
        info.add_itxt(key, str(value))
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(buf, "PNG", pnginfo=info,
                                                               compress_level=compress_level)
    return buf.getvalue()


def read_provenance(data: bytes) -> dict[str, Any]:
    """The provenance JSON of a PNG written by :func:`png_bytes` ({} if it has none)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        raw = img.text.get(PROVENANCE_KEY) if hasattr(img, "text") else None
    return json.loads(raw) if raw else {}


def write_generated(results: list[Generated], out: str, endpoint_url: str | None = None,
                    also_schnell: bool = False, start_index: int = 0) -> list[str]:
    """Write ``NNNN-s<seed>.png`` (schnell + head) and, if asked, ``NNNN-s<seed>-schnell.png``; returns URIs."""
    from facelift.storage import Store

    store = Store(out, endpoint_url)
    uris = []
    for i, g in enumerate(results, start=start_index):
        key = f"{i:04d}-s{g.seed}.png"
        store.write_bytes(key, png_bytes(g.enhanced, {**g.provenance, "image": "schnell+head"}))
        uris.append(store.url(key))
        if also_schnell:
            skey = posixpath.splitext(key)[0] + "-schnell.png"
            store.write_bytes(skey, png_bytes(g.schnell, {**g.provenance, "image": "schnell"}))
            uris.append(store.url(skey))
    return uris


def read_prompts(path: str, endpoint_url: str | None = None) -> list[str]:
    """Prompts from a text file, one per line (blank lines and ``#`` comments ignored)."""
    from facelift.storage import open_uri

    with open_uri(path, endpoint_url, mode="rt") as fh:
        prompts = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def run_generate(prompts: list[str], head: str, out: str, seed: int = 0, options: GenerateOptions | None = None,
                 also_schnell: bool = False) -> dict[str, Any]:
    """Generate one image per prompt (seeds ``seed``, ``seed + 1``, ...) and write them under ``out``."""
    if not prompts:
        raise ValueError("no prompts given")
    options = options or GenerateOptions()
    gen = Generator(head, options)
    t0 = time.perf_counter()
    results = gen(prompts, [seed + i for i in range(len(prompts))])
    seconds = time.perf_counter() - t0
    uris = write_generated(results, out, options.endpoint_url, also_schnell)
    n = len(results)
    return {"images": uris, "count": n, "seconds": round(seconds, 3),
            "schnell_s_per_image": round(sum(g.seconds["schnell_s"] for g in results) / n, 4),
            "head_s_per_image": round(sum(g.seconds["head_s"] for g in results) / n, 4),
            "provenance": gen.base_provenance}
