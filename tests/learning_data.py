"""Known mappings for the learning tests (tests/test_learning.py): synthetic dev pictures and the schnell
pictures made from them, so what a head should learn is known exactly.

- ``cast``: schnell = dev blurred (radius 1), with a warm cast (+25 R, -25 B) and a little noise (sigma 3);
- ``tone``: schnell = dev at lower contrast (0.75 around mid-grey) with a cool tint (per-channel gains) and a
  little noise: a change of tone and colour, not an added offset;
- ``texture``: the product-path cells' pictures (tests/test_product_learning.py): dev = soft blobs, hard-edged
  discs and fine texture (a high-frequency pattern of its own per picture); schnell = dev blurred, warm-cast and
  noised as in ``cast``. Unlike the grid's flat shapes, a discriminator can tell real from fake here by the
  texture and edges that a tiny generator cannot restore;
- ``grain``: dev = the picture with film grain (sigma 14, fresh per image); schnell = the clean picture. The
  grain cannot be predicted from schnell, so the identity is the L1-best answer and a head that adds grain (what
  a GAN should learn) has a larger L1: the perception-distortion trade-off of the issue-21 selection test.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

CAST = np.array([25.0, 0.0, -25.0])  # added to R, G, B (0-255): a warm cast
BLUR = 1.0  # Gaussian radius, pixels
NOISE = 3.0  # Gaussian, 0-255
CONTRAST = 0.75  # tone: schnell = 128 + CONTRAST * (dev - 128), then the tint gains
TINT = np.array([0.92, 0.98, 1.08])  # tone: per-channel gains (a cool tint)
TEXTURE = 20.0  # texture: amplitude of the fine grating, 0-255
SPECKLE = 6.0  # texture: sigma of a fixed per-picture speckle (part of dev; blurred away in schnell)
GRAIN = 14.0  # grain: sigma of dev's film grain, 0-255


def colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A photo-like colour: a luminance and a little chroma."""
    r, g, b = np.clip(rng.uniform(30, 225) + rng.normal(0, 12, 3), 0, 255).astype(int)
    return int(r), int(g), int(b)


def picture(rng: np.random.Generator, size: int) -> Image.Image:
    """A vertical gradient and a few ellipses and rectangles in photo-like colours."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    top, bottom = np.array(colour(rng)), np.array(colour(rng))
    for y in range(size):
        t = y / (size - 1)
        draw.line([(0, y), (size, y)], fill=tuple(int(v) for v in (1 - t) * top + t * bottom))
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 6, size // 2, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour(rng))
    return img


def _image(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def cast_pair(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    dev = picture(rng, size)
    blurred = np.asarray(dev.filter(ImageFilter.GaussianBlur(BLUR)), dtype=np.float64)
    return _image(blurred + CAST + rng.normal(0, NOISE, blurred.shape)), dev


def tone_pair(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    dev = picture(rng, size)
    a = np.asarray(dev, dtype=np.float64)
    flat = (128 + CONTRAST * (a - 128)) * TINT
    return _image(flat + rng.normal(0, NOISE, a.shape)), dev


def textured_picture(rng: np.random.Generator, size: int) -> Image.Image:
    """Soft Gaussian blobs over a base colour, hard-edged discs, and fine texture: a sinusoidal grating of a
    random orientation and period 2-4 px (+-``TEXTURE`` levels) on a random half of the picture, and a fixed
    speckle (sigma ``SPECKLE``) everywhere."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    a = np.broadcast_to(np.array(colour(rng), dtype=np.float64), (size, size, 3)).copy()
    for _ in range(int(rng.integers(3, 6))):  # soft blobs
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(size / 8, size / 3)
        w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        a = (1 - w) * a + w * np.array(colour(rng), dtype=np.float64)
    for _ in range(int(rng.integers(2, 5))):  # hard-edged discs
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(size / 12, size / 5)
        a[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = colour(rng)
    theta, period = rng.uniform(0, np.pi), rng.uniform(2, 4)  # fine texture where a random half-plane lies
    grating = TEXTURE * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    mask = (xx - size / 2) * rng.normal() + (yy - size / 2) * rng.normal() > 0
    a += (grating * mask)[..., None] + rng.normal(0, SPECKLE, (size, size, 1))  # and a speckle everywhere
    return _image(a)


def texture_pair(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    dev = textured_picture(rng, size)
    blurred = np.asarray(dev.filter(ImageFilter.GaussianBlur(BLUR)), dtype=np.float64)
    return _image(blurred + CAST + rng.normal(0, NOISE, blurred.shape)), dev


def grain_pair(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    clean = picture(rng, size)
    a = np.asarray(clean, dtype=np.float64)
    return clean, _image(a + rng.normal(0, GRAIN, a.shape))


MAPPINGS: dict[str, Callable[[np.random.Generator, int], tuple[Image.Image, Image.Image]]] = {
    "cast": cast_pair, "tone": tone_pair, "texture": texture_pair, "grain": grain_pair}


def as_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32)).permute(2, 0, 1) for i in images]) / 127.5 - 1


def make_pairs(mapping: str, size: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(schnell, dev) tensors of ``n`` pairs of ``mapping``, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    pairs = [MAPPINGS[mapping](rng, size) for _ in range(n)]
    return as_tensor([a for a, _ in pairs]), as_tensor([b for _, b in pairs])


def held_out_pairs(mapping: str, size: int, n: int = 32, seed: int = 20261201) -> tuple[torch.Tensor, torch.Tensor]:
    """(schnell, dev) of ``n`` fresh pairs, never in a training dataset."""
    return make_pairs(mapping, size, n, seed)


def scores(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> dict[str, float]:
    """L1 to dev and the colour residual (per-image channel means against dev's), each as a multiple of the
    identity's (z = x)."""
    l1 = lambda a: float((a - y).abs().mean())  # noqa: E731
    cast = lambda a: float((a.mean((2, 3)) - y.mean((2, 3))).abs().mean())  # noqa: E731
    return {"l1": l1(z) / l1(x), "cast": cast(z) / cast(x)}


def limits(head: str, mapping: str) -> tuple[float, float | None]:
    """(L1 / identity's, colour residual / identity's or None) that a trained head must reach on ``mapping``.

    U-Net (paired): L1 <= 0.6x; on ``tone`` L1 <= 0.85x (its GRAD(x, z) term keeps the input's gradients, so it
    cannot restore contrast) and colour <= 0.6x (the paper's loss itself asks for 0.42-0.44x on a random LPIPS
    backbone, and trained U-Nets land within +-0.05 of that). CycleGANs (unpaired): colour <= 0.5x, L1 <= 1.0x."""
    if head == "unet_cbam":
        return (0.85, 0.6) if mapping == "tone" else (0.6, None)
    return 1.0, 0.5


def grain_level(images: torch.Tensor) -> float:
    """Mean absolute high-pass (image minus its 3x3 box blur): ~0 for the clean pictures, large with grain."""
    blur = torch.nn.functional.avg_pool2d(images, 3, 1, 1, count_include_pad=False)
    return float((images - blur)[..., 1:-1, 1:-1].abs().mean())
