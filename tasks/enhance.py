"""Apply a trained head to any images: a batched inference engine and a threaded file pipeline.

Engine (:class:`InferenceEngine`): the head's generator alone, on GPU in bf16 + channels_last and
``torch.compile``-d by default, fed uint8 batches (4x less host->device traffic than float) from pinned memory.

Sizes (``policy``): the heads are fully convolutional but need H and W divisible by ``size_multiple``.
- ``pad`` (default): reflect-pad bottom/right up to the next multiple, run, crop back: the output has the
  input's exact size and no resampling.
- ``resize``: resize to ``size`` x ``size`` (or the nearest multiples when ``size`` is None), run, resize back
  to the input size. Use it when a head should see the resolution it was trained at.
- ``tile``: run overlapping ``tile`` x ``tile`` windows and blend them (linear ramps): bounded memory for
  very large images.

Files (:func:`enhance_files`): decoding and encoding run in thread pools overlapped with compute; images of
equal size are batched together; a corrupt or unreadable file is reported and skipped, the rest go on.
Only torch and the standard library are imported at module import time (the GPU benchmark relies on it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

POLICIES = ("pad", "resize", "tile")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


class InferenceEngine:
    """A head generator prepared for fast inference. ``None`` options mean "best for the device"."""

    def __init__(self, module: nn.Module, size_multiple: int, device: str = "auto", dtype: str | None = None,
                 channels_last: bool | None = None, compile: bool | None = None, policy: str = "pad",
                 size: int | None = None, tile: int = 512, overlap: int = 32) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown size policy {policy!r}; valid: {', '.join(POLICIES)}")
        self.device = pick_device(device)
        cuda = self.device.type == "cuda"
        self.dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if cuda else torch.float32)
        self.channels_last = cuda if channels_last is None else channels_last
        self.multiple = int(size_multiple)
        if size is not None and size % self.multiple:
            raise ValueError(f"size {size} is not a multiple of the head's size multiple {self.multiple}")
        if tile % self.multiple or tile <= 2 * overlap:
            raise ValueError(f"tile {tile} must be a multiple of {self.multiple} and larger than 2*overlap")
        self.policy, self.size, self.tile, self.overlap = policy, size, tile, overlap
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        module = module.eval().requires_grad_(False).to(self.device, dtype=self.dtype, memory_format=fmt)
        self.compiled = bool(cuda if compile is None else compile)
        self.module: Callable[[torch.Tensor], torch.Tensor] = torch.compile(module) if self.compiled else module

    @classmethod
    def from_head(cls, head: Any, **kwargs: Any) -> InferenceEngine:
        return cls(head.inference_module(), head.size_multiple, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "channels_last": self.channels_last, "compiled": self.compiled, "policy": self.policy,
                "policy_size": self.size, "size_multiple": self.multiple}

    # -- compute ----------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float NCHW in [-1, 1] on the device, H and W multiples of ``multiple``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x.to(self.dtype)).float().clamp_(-1, 1)

    def _pad_run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            return self._forward(F.pad(x, (0, pw, 0, ph), mode=mode))[..., :h, :w]
        return self._forward(x)

    def _resize_run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        th, tw = (self.size, self.size) if self.size else (max(m, round(h / m) * m), max(m, round(w / m) * m))
        if (th, tw) == (h, w):
            return self._forward(x)
        y = self._forward(F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False, antialias=True))
        return F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(-1, 1)

    def _tile_run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        t, ov = self.tile, self.overlap
        if h <= t and w <= t:
            return self._pad_run(x)
        out = torch.zeros_like(x, dtype=torch.float32)
        weight = torch.zeros((1, 1, h, w), device=x.device)
        step = t - ov
        for top in _starts(h, t, step):
            for left in _starts(w, t, step):
                patch = x[..., top:top + t, left:left + t]
                y = self._pad_run(patch)
                ramp = _ramp(y.shape[-2], ov, top > 0, top + t < h, x.device)[:, None] * \
                    _ramp(y.shape[-1], ov, left > 0, left + t < w, x.device)[None, :]
                out[..., top:top + t, left:left + t] += y * ramp
                weight[..., top:top + t, left:left + t] += ramp
        return out / weight.clamp_min(1e-6)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float NCHW in [-1, 1] (any device, any size) -> float32 NCHW in [-1, 1] on the engine device."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected NCHW RGB images, got shape {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True).float()
        run = {"pad": self._pad_run, "resize": self._resize_run, "tile": self._tile_run}[self.policy]
        return run(x)

    @torch.inference_mode()
    def run_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW (CPU) -> uint8 NCHW (CPU); the transfer is uint8, the conversion on the device."""
        if self.device.type == "cuda":
            images = images.pin_memory()
        x = images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        y = self(x)
        return y.add_(1.0).mul_(127.5).round_().to(torch.uint8).cpu()


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def _ramp(n: int, overlap: int, fade_in: bool, fade_out: bool, device: torch.device) -> torch.Tensor:
    r = torch.ones(n, device=device)
    if overlap > 0:
        edge = torch.linspace(0, 1, overlap + 2, device=device)[1:-1]
        if fade_in:
            r[:overlap] = edge
        if fade_out:
            r[-overlap:] = edge.flip(0)
    return r


# -- files --------------------------------------------------------------------------------------------
@dataclass
class EnhanceReport:
    """What an enhance run did: counts, failures (path, reason), throughput and where outputs went."""

    processed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"processed": self.processed, "failed": [{"path": p, "error": e} for p, e in self.failed],
                "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
                "engine": self.engine, "outputs": len(self.outputs)}


def list_images(src: str, endpoint_url: str | None = None) -> tuple[str, list[str]]:
    """(base, image URIs) for a folder, a glob or an object-store prefix of PNG/JPEG/WebP files, or a file."""
    from facelift.storage import Store

    store = Store(src, endpoint_url)
    fs, path = store.fs, store.root
    prefix = "" if store.is_local else f"{store.protocol}://"
    if any(c in path for c in "*?["):
        base = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
        found = [p for p in fs.glob(path) if p.lower().endswith(IMAGE_SUFFIXES)]
    elif fs.isdir(path):
        base = path.rstrip("/")
        found = [p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES)]
    elif fs.isfile(path):
        base, found = path.rsplit("/", 1)[0], [path]
    else:
        raise FileNotFoundError(f"no such folder, file or prefix: {src}")
    if not found:
        raise FileNotFoundError(f"no PNG/JPEG/WebP images under {src}")
    return prefix + base, [prefix + p for p in sorted(found)]


def _decode(data: bytes) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def encode_image(image: torch.Tensor, suffix: str, quality: int = 95) -> bytes:
    """uint8 CHW -> PNG/JPEG/WebP bytes (format from the file suffix)."""
    import io

    from PIL import Image

    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported output format {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    buf = io.BytesIO()
    opts = {"compress_level": 1} if fmt == "PNG" else {"quality": quality}
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, fmt, **opts)
    return buf.getvalue()


def enhance_files(src: str, dst: str, engine: InferenceEngine, batch_size: int = 16, workers: int = 4,
                  out_format: str | None = None, endpoint_url: str | None = None,
                  progress: bool = True) -> EnhanceReport:
    """Enhance every image under ``src`` into ``dst`` (same relative names; ``out_format`` e.g. ".png")."""
    import posixpath
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm.auto import tqdm

    from facelift.storage import Store

    base, sources = list_images(src, endpoint_url)
    reader = Store(base, endpoint_url)
    out = Store(dst, endpoint_url)
    report = EnhanceReport(engine=engine.describe())
    start = time.perf_counter()

    def target_key(uri: str) -> str:
        rel = posixpath.relpath(uri.split("://", 1)[-1], base.split("://", 1)[-1])
        return posixpath.splitext(rel)[0] + out_format if out_format else rel

    def load(uri: str) -> torch.Tensor:
        return _decode(reader.fs.cat_file(uri.split("://", 1)[-1] if "://" in uri else uri))

    def save(key: str, image: torch.Tensor) -> str:
        out.write_bytes(key, encode_image(image, posixpath.splitext(key)[1]))
        return out.url(key)

    bar = tqdm(total=len(sources), unit="img", disable=not progress, desc="enhance")
    buckets: dict[tuple[int, int], list[tuple[str, torch.Tensor]]] = {}
    writes: list[Future[str]] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as dec, \
            ThreadPoolExecutor(workers, thread_name_prefix="encode") as enc:

        def flush(shape: tuple[int, int]) -> None:
            items = buckets.pop(shape)
            result = engine.run_uint8(torch.stack([t for _, t in items]))
            for (uri, _), image in zip(items, result, strict=True):
                writes.append(enc.submit(save, target_key(uri), image))
            report.processed += len(items)
            bar.update(len(items))

        window = max(2 * batch_size, 2 * workers)
        pending: list[tuple[str, Future[torch.Tensor]]] = []
        queue = iter(sources)
        for uri in queue:  # keep `window` decodes in flight, consume them in order
            pending.append((uri, dec.submit(load, uri)))
            if len(pending) < window:
                continue
            _consume(pending.pop(0), buckets, batch_size, flush, report, bar)
        while pending:
            _consume(pending.pop(0), buckets, batch_size, flush, report, bar)
        for shape in list(buckets):
            flush(shape)
        for fut in writes:
            report.outputs.append(fut.result())
    bar.close()
    report.seconds = time.perf_counter() - start
    for path, err in report.failed:
        log.warning("skipped %s: %s", path, err)
    log.info("enhanced %d images (%d skipped) in %.2fs: %.1f img/s", report.processed, len(report.failed),
             report.seconds, report.images_per_s)
    return report


def _consume(item: tuple[str, Any], buckets: dict, batch_size: int, flush: Callable[[tuple[int, int]], None],
             report: EnhanceReport, bar: Any) -> None:
    uri, fut = item
    try:
        image = fut.result()
    except Exception as exc:  # noqa: BLE001 - any unreadable/corrupt file is reported and skipped
        report.failed.append((uri, f"{type(exc).__name__}: {exc}"))
        bar.update(1)
        return
    shape = tuple(image.shape[-2:])
    buckets.setdefault(shape, []).append((uri, image))
    if len(buckets[shape]) >= batch_size:
        flush(shape)


def chunked(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def translate_batches(engine: InferenceEngine, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW through the engine, ``batch_size`` at a time (evaluation, API)."""
    parts = [engine.run_uint8(images[s]) for s in chunked(len(images), batch_size)]
    return torch.cat(parts) if parts else images.clone()


def run_enhance(src: str, dst: str, head: str, endpoint_url: str | None = None, device: str = "auto",
                batch_size: int = 16, policy: str = "pad", size: int | None = None, compile: bool | None = None,
                out_format: str | None = None, workers: int = 4, progress: bool = True) -> EnhanceReport:
    """Load the head (folder or run URI), prepare the engine, enhance ``src`` into ``dst``."""
    from facelift.models.heads import load_head

    engine = InferenceEngine.from_head(load_head(head, endpoint_url), device=device, policy=policy, size=size,
                                       compile=compile)
    report = enhance_files(src, dst, engine, batch_size=batch_size, workers=workers, out_format=out_format,
                           endpoint_url=endpoint_url, progress=progress)
    report.engine["head"] = head
    return report
