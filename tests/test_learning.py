"""Training learns: each head's debug flavour, trained through the product's path (``tasks.train.loop.train`` on
Ray Train, as ``facelift train`` runs it), maps fresh held-out schnell pictures toward their dev pictures.

The data is a known mapping made here and written as a real dataset (``make_synthetic_dataset``):
- dev: synthetic pictures, a vertical gradient and a few ellipses and rectangles in photo-like colours
  (a luminance and a little chroma, so the channels correlate as in real pictures);
- schnell: the same picture blurred, with a colour cast (a per-channel offset) and a little noise.
Scores on 32 fresh pairs, relative to the identity (the schnell picture itself):
- U-Net (paired): L1 to dev <= 0.6x identity;
- CycleGAN and ESA-CycleGAN (unpaired): colour-cast residual (per-image channel means against dev's)
  <= 0.5x identity, and L1 to dev <= 1.1x identity.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from facelift.dataset import Dataset
from facelift.models.heads import load_head
from facelift.models.losses import save_random_lpips_backbone
from facelift.storage import Store
from facelift.tasks.train.loop import TrainConfig, train
from facelift.testing import make_synthetic_dataset

log = logging.getLogger(__name__)

SIZE = 32
CAST = np.array([25.0, 0.0, -25.0])  # added to R, G, B (0-255): a warm cast
BLUR = 1.0  # Gaussian radius, pixels
NOISE = 3.0  # Gaussian, 0-255
# head -> (steps, limit on L1 / identity L1, limit on cast residual / identity's); batch 4 at 32x32
PLAN = {"unet_cbam": (300, 0.6, None), "cyclegan": (200, 1.1, 0.5), "esa_cyclegan": (200, 1.1, 0.5)}


def colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A photo-like colour: a luminance and a little chroma."""
    r, g, b = np.clip(rng.uniform(30, 225) + rng.normal(0, 12, 3), 0, 255).astype(int)
    return int(r), int(g), int(b)


def picture(rng: np.random.Generator, size: int) -> Image.Image:
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


def make_pair(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    """(schnell, dev): dev is the picture; schnell is it blurred, colour-cast and a little noisy."""
    dev = picture(rng, size)
    blurred = np.asarray(dev.filter(ImageFilter.GaussianBlur(BLUR)), dtype=np.float64)
    schnell = blurred + CAST + rng.normal(0, NOISE, blurred.shape)
    return Image.fromarray(np.clip(schnell, 0, 255).round().astype(np.uint8)), dev


def as_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32)).permute(2, 0, 1) for i in images]) / 127.5 - 1


def scores(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> dict[str, float]:
    """L1 to dev and the colour-cast residual, each as a multiple of the identity's (z = x)."""
    l1 = lambda a: float((a - y).abs().mean())  # noqa: E731
    cast = lambda a: float((a.mean((2, 3)) - y.mean((2, 3))).abs().mean())  # noqa: E731
    return {"l1": l1(z) / l1(x), "cast": cast(z) / cast(x)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = Store(str(tmp_path_factory.mktemp("learning")))
    return make_synthetic_dataset(root, "learning", n_pairs=64, size=SIZE, shard_size=16, seed=1,
                                  splits={"val": 0.125, "test": 0.0}, make_pair=make_pair)


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh pairs, never in the dataset."""
    rng = np.random.default_rng(20261201)
    pairs = [make_pair(rng, SIZE) for _ in range(32)]
    return as_tensor([a for a, _ in pairs]), as_tensor([b for _, b in pairs])


def test_the_mapping_is_there_to_learn(dataset: Dataset, held_out: tuple[torch.Tensor, torch.Tensor]):
    """The identity is far from dev (cast, blur and noise), and removing the cast alone halves the distance."""
    x, y = held_out
    assert float((x - y).abs().mean()) > 0.1
    uncast = (x - torch.tensor(CAST / 127.5, dtype=torch.float32).view(1, 3, 1, 1)).clamp(-1, 1)
    assert scores(x, y, uncast)["l1"] < 0.5 and scores(x, y, uncast)["cast"] < 0.05
    assert len(dataset.manifest()) == 64


@pytest.mark.parametrize("head", list(PLAN))
def test_debug_head_learns_the_mapping(head: str, dataset: Dataset, held_out: tuple[torch.Tensor, torch.Tensor],
                                       tmp_path: Path, ray_local):
    steps, max_l1, max_cast = PLAN[head]
    overrides = {}
    if head == "unet_cbam":  # LPIPS needs a backbone file (nothing is downloaded): a random one, as the demo
        overrides["lpips_backbone"] = str(save_random_lpips_backbone(tmp_path / "alexnet-random.pth"))
    cfg = TrainConfig(dataset_uri=dataset.uri, head=head, flavor="debug", head_overrides=overrides,
                      run_uri=str(tmp_path / "run"), max_steps=steps, batch_size=4, resolution=SIZE,
                      shuffle_buffer=32, max_val_pairs=8, steps_per_epoch=50, log_every=50, checkpoint_every=10**6)
    t0 = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - t0
    assert result.metrics["step"] == steps or result.metrics["stopped_early"]
    x, y = held_out
    z = load_head(result.head_uri).translate(x)
    got = scores(x, y, z)
    log.info("%s debug, %d steps in %.1f s: L1 %.3fx identity, cast residual %.3fx identity", head,
             result.metrics["step"], seconds, got["l1"], got["cast"])
    assert got["l1"] <= max_l1, got
    if max_cast is not None:
        assert got["cast"] <= max_cast, got
