"""The batched inference engine: a head's generator prepared for fast inference, any image size.

Engine (:class:`InferenceEngine`): the head's generator alone, on GPU in bf16 + channels_last and
``torch.compile``-d by default, fed uint8 batches (4x less host->device traffic than float) from pinned memory.

Sizes (``policy``): the heads are fully convolutional but need H and W divisible by ``size_multiple``.
- ``pad`` (default): reflect-pad bottom/right up to the next multiple, run, crop back: the output has the
  input's exact size and no resampling.
- ``resize``: resize to ``size`` x ``size`` (or the nearest multiples when ``size`` is None), run, resize back
  to the input size. Use it when a head should see the resolution it was trained at.
- ``tile``: run overlapping ``tile`` x ``tile`` windows and blend them (linear ramps): bounded memory for
  very large images.

Used by ``facelift enhance`` (:mod:`.files`), evaluation and the Python API. Only torch and the standard
library are imported at module import time (the GPU benchmark relies on it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

POLICIES = ("pad", "resize", "tile")


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
    def __call__(self, x: torch.Tensor, policy: str | None = None) -> torch.Tensor:
        """Float NCHW in [-1, 1] (any device, any size) -> float32 NCHW in [-1, 1] on the engine device.

        ``policy`` overrides the engine's for this call (the file pipeline tiles images over its pixel budget)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected NCHW RGB images, got shape {tuple(x.shape)}")
        policy = policy or self.policy
        if policy not in POLICIES:
            raise ValueError(f"unknown size policy {policy!r}; valid: {', '.join(POLICIES)}")
        x = x.to(self.device, non_blocking=True).float()
        run = {"pad": self._pad_run, "resize": self._resize_run, "tile": self._tile_run}[policy]
        return run(x)

    @torch.inference_mode()
    def run_uint8(self, images: torch.Tensor, policy: str | None = None) -> torch.Tensor:
        """uint8 NCHW (CPU) -> uint8 NCHW (CPU); the transfer is uint8, the conversion on the device."""
        if self.device.type == "cuda":
            images = images.pin_memory()
        x = images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        y = self(x, policy)
        return y.add_(1.0).mul_(127.5).round_().to(torch.uint8).cpu()

    def release_memory(self) -> None:
        """After an out-of-memory error: give cached blocks back so that a smaller retry can fit."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError, or MPS's."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


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


def chunked(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def translate_batches(engine: InferenceEngine, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW through the engine, ``batch_size`` at a time (evaluation, API)."""
    parts = [engine.run_uint8(images[s]) for s in chunked(len(images), batch_size)]
    return torch.cat(parts) if parts else images.clone()
