"""Training data: stream shards from the object store into image tensors.

- Deterministic train/validation split by a hash of ``pair_id`` (a pair is never in both).
- Each training worker streams its part of the shards (whole shards when there are at least as many
  shards as workers, else every ``world``-th pair), through a shuffle buffer, forever; the loop decides
  where epochs end, so every worker runs the same number of steps (no collective hangs).
- Paired batches (U-Net): ``schnell[i]`` and ``dev[i]`` are one pair, cropped and flipped together.
  Unpaired batches (CycleGANs): two independently shuffled buffers, so ``schnell[i]`` and ``dev[i]``
  come from different pairs.
Images are kept as uint8 CHW tensors; batches are float NCHW in [-1, 1].
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from facelift.dataset import Dataset, DatasetError, decode_image

log = logging.getLogger(__name__)

READ_COLUMNS = ["pair_id", "schnell_image", "dev_image"]


@dataclass(frozen=True)
class DataConfig:
    resolution: int = 512  # images are resized to this square size
    crop: int | None = None  # random crop (centre crop for validation); None = no crop
    flip: bool = True  # random horizontal flip (training only)
    val_fraction: float = 0.1
    max_val_pairs: int = 64
    shuffle_buffer: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {self.resolution}")
        if self.crop is not None and not 8 <= self.crop <= self.resolution:
            raise ValueError(f"crop must be in [8, resolution={self.resolution}], got {self.crop}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def size(self) -> int:
        return self.crop or self.resolution


def pair_hash(pair_id: str, salt: str = "split") -> float:
    """A stable number in [0, 1) for a pair id."""
    digest = hashlib.sha256(f"{salt}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation(pair_id: str, val_fraction: float) -> bool:
    return pair_hash(pair_id) < val_fraction


def open_training_dataset(uri: str, endpoint_url: str | None = None) -> tuple[Dataset, list[int]]:
    """The dataset and its committed shards; clear error when there is nothing to train on."""
    ds = Dataset.open(uri, endpoint_url)
    shards = ds.committed_shards()
    if not shards:
        raise DatasetError(f"dataset {uri} has no committed shards: nothing to train on "
                           f"(build it first, or check the URI)")
    return ds, shards


def split_counts(ds: Dataset, shards: list[int], val_fraction: float) -> dict[str, int]:
    """Pairs in the train and validation splits, from the manifest (only committed shards count)."""
    manifest = ds.manifest()
    manifest = manifest[manifest["shard"].isin(shards)]
    val = int(sum(is_validation(p, val_fraction) for p in manifest["pair_id"]))
    counts = {"train": len(manifest) - val, "val": val}
    if counts["train"] == 0:
        raise DatasetError(f"dataset {ds.uri}: no training pairs after the {val_fraction:.0%} validation split")
    return counts


def to_uint8(cell: dict, resolution: int) -> torch.Tensor:
    img = decode_image(cell)
    if img.size != (resolution, resolution):
        from PIL import Image

        img = img.resize((resolution, resolution), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)


def _crop_flip(img: torch.Tensor, top: int, left: int, size: int, flip: bool) -> torch.Tensor:
    img = img[:, top:top + size, left:left + size]
    return img.flip(-1) if flip else img


class PairStream:
    """Endless training batches for one worker (see the module docstring)."""

    def __init__(self, ds: Dataset, shards: list[int], cfg: DataConfig, batch_size: int, paired: bool,
                 rank: int = 0, world: int = 1) -> None:
        self.ds, self.cfg, self.batch_size, self.paired = ds, cfg, batch_size, paired
        self.rank, self.world = rank, world
        if len(shards) >= world:
            self.shards, self.row_stride = shards[rank::world], 1
        else:
            self.shards, self.row_stride = list(shards), world
        self.rng = random.Random(cfg.seed * 1009 + rank)

    def _pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = list(self.shards)
            self.rng.shuffle(order)
            seen = 0
            for shard in order:
                table = self.ds.read_shard(shard, READ_COLUMNS).to_pylist()
                for row in table:
                    if is_validation(row["pair_id"], self.cfg.val_fraction):
                        continue
                    if self.row_stride > 1 and int(pair_hash(row["pair_id"], "worker") * 2**32) % \
                            self.row_stride != self.rank:
                        continue
                    seen += 1
                    yield (to_uint8(row["schnell_image"], self.cfg.resolution),
                           to_uint8(row["dev_image"], self.cfg.resolution))
            if seen == 0:
                raise DatasetError(f"worker {self.rank}/{self.world} got no training pairs from shards "
                                   f"{self.shards} of {self.ds.uri} (dataset too small for {self.world} workers?)")

    def _samples(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffle buffer(s): one for paired data, two independent ones for unpaired data."""
        buf_a: list[torch.Tensor] = []
        buf_b: list[torch.Tensor] = []
        size = max(1, self.cfg.shuffle_buffer)

        def pop(buf: list[torch.Tensor], idx: int) -> torch.Tensor:
            buf[idx], buf[-1] = buf[-1], buf[idx]
            return buf.pop()

        for a, b in self._pairs():
            buf_a.append(a)
            buf_b.append(b)
            if len(buf_a) < size:
                continue
            i = self.rng.randrange(len(buf_a))
            j = i if self.paired else self.rng.randrange(len(buf_b))
            yield pop(buf_a, i), pop(buf_b, j)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg, size = self.cfg, self.cfg.size
        batch_a: list[torch.Tensor] = []
        batch_b: list[torch.Tensor] = []
        for a, b in self._samples():
            slack = cfg.resolution - size
            ta, la = self.rng.randint(0, slack), self.rng.randint(0, slack)
            fa = cfg.flip and self.rng.random() < 0.5
            if self.paired:  # same crop and flip for both images of a pair
                tb, lb, fb = ta, la, fa
            else:
                tb, lb = self.rng.randint(0, slack), self.rng.randint(0, slack)
                fb = cfg.flip and self.rng.random() < 0.5
            batch_a.append(_crop_flip(a, ta, la, size, fa))
            batch_b.append(_crop_flip(b, tb, lb, size, fb))
            if len(batch_a) == self.batch_size:
                yield {"schnell": to_float(torch.stack(batch_a)), "dev": to_float(torch.stack(batch_b))}
                batch_a, batch_b = [], []


def load_validation(ds: Dataset, shards: list[int], cfg: DataConfig, rank: int = 0,
                    world: int = 1) -> dict[str, torch.Tensor]:
    """This worker's share of the validation pairs (paired, centre-cropped), at most ``max_val_pairs``
    in total; reading stops as soon as enough pairs are found. With fewer pairs than workers every worker
    gets all of them (the averaged metrics stay exact and every worker reports the same metric names)."""
    pairs: list[tuple[dict, dict]] = []
    for table in ds.iter_shards(READ_COLUMNS, shards):
        for row in table.to_pylist():
            if len(pairs) >= cfg.max_val_pairs:
                break
            if is_validation(row["pair_id"], cfg.val_fraction):
                pairs.append((row["schnell_image"], row["dev_image"]))
        if len(pairs) >= cfg.max_val_pairs:
            break
    mine = pairs[rank::world] if len(pairs) >= world else pairs
    size = cfg.size
    off = (cfg.resolution - size) // 2
    if not mine:
        empty = torch.zeros(0, 3, size, size)
        return {"schnell": empty, "dev": empty.clone()}
    a = [_crop_flip(to_uint8(x, cfg.resolution), off, off, size, False) for x, _ in mine]
    b = [_crop_flip(to_uint8(y, cfg.resolution), off, off, size, False) for _, y in mine]
    return {"schnell": to_float(torch.stack(a)), "dev": to_float(torch.stack(b))}
