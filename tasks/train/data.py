"""Training data: stream shards from the object store into image tensors.

- The dataset's fixed splits (:mod:`facelift.splits`): training streams only ``train`` pairs, validation
  (early stopping, best checkpoint) reads only ``val`` pairs; ``test`` is never read here.
- Each training worker streams its part of the shards (whole shards when there are at least as many
  shards as workers, else every ``world``-th pair), through a shuffle buffer, forever; the loop decides
  where epochs end, so every worker runs the same number of steps (no collective hangs).
- Paired batches (U-Net): ``schnell[i]`` and ``dev[i]`` are one pair, cropped and flipped together.
  Unpaired batches (CycleGANs): two independently shuffled buffers, so ``schnell[i]`` and ``dev[i]``
  come from different pairs.
Images are kept as uint8 CHW tensors, and batches are uint8 NCHW: :func:`to_model` copies them to the
device (a quarter of the bytes of float, pinned when the stream pins) and converts them there to float
in [-1, 1], so the input threads never spend CPU on the conversion.
- Off the training thread (:mod:`facelift.tasks.feed`): PNGs decode on ``decode_workers`` threads
  ahead of the stream (in order, so the data order does not depend on them), and batches are built on a
  background thread ``prefetch_batches`` ahead (pinned for a CUDA copy); ``decode_workers=0`` is the old
  inline path.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from facelift.dataset import Dataset, DatasetError
from facelift.splits import SplitSpec, pair_hash
from facelift.tasks.feed import BackgroundBatches, DecodeAhead, to_uint8

log = logging.getLogger(__name__)

READ_COLUMNS = ["pair_id", "schnell_image", "dev_image"]


@dataclass(frozen=True)
class DataConfig:
    resolution: int = 512  # images are resized to this square size
    crop: int | None = None  # random crop (centre crop for validation); None = no crop
    flip: bool = True  # random horizontal flip (training only)
    splits: SplitSpec = field(default_factory=SplitSpec)  # the dataset's (Dataset.splits())
    max_val_pairs: int = 64
    shuffle_buffer: int = 256
    seed: int = 0
    decode_workers: int = 2  # PNG decode threads ahead of the stream; 0 = inline on the training thread
    prefetch_batches: int = 4  # batches built ahead on a background thread
    keep: frozenset[str] | None = None  # a curation's kept pair ids (train and val read only these); None: all

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {self.resolution}")
        if self.crop is not None and not 8 <= self.crop <= self.resolution:
            raise ValueError(f"crop must be in [8, resolution={self.resolution}], got {self.crop}")
        if self.decode_workers < 0 or self.prefetch_batches < 1:
            raise ValueError(f"decode_workers must be >= 0 and prefetch_batches >= 1, got "
                             f"{self.decode_workers}, {self.prefetch_batches}")

    @property
    def size(self) -> int:
        return self.crop or self.resolution

    def kept(self, pair_id: str) -> bool:
        """Whether the curation keeps this pair (every pair, without a curation)."""
        return self.keep is None or pair_id in self.keep


def open_training_dataset(uri: str, endpoint_url: str | None = None) -> tuple[Dataset, list[int]]:
    """The dataset and its committed shards; clear error when there is nothing to train on."""
    ds = Dataset.open(uri, endpoint_url)
    shards = ds.committed_shards()
    if not shards:
        raise DatasetError(f"dataset {uri} has no committed shards: nothing to train on "
                           f"(build it first, or check the URI)")
    return ds, shards


def split_counts(ds: Dataset, shards: list[int], spec: SplitSpec,
                 keep: frozenset[str] | None = None) -> dict[str, int]:
    """Pairs in the train / val / test splits, from the manifest (only committed shards count; with ``keep``,
    only a curation's kept pairs)."""
    manifest = ds.manifest()
    ids = manifest.loc[manifest["shard"].isin(shards), "pair_id"]
    counts = spec.counts(ids if keep is None else ids[ids.isin(keep)])
    if counts["train"] == 0:
        raise DatasetError(f"dataset {ds.uri}: no training pairs in its splits ({spec.describe()})"
                           + ("" if keep is None else " among the curation's kept pairs"))
    return counts


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_model(batch: dict[str, torch.Tensor], device: torch.device | str,
             memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, torch.Tensor]:
    """A stream's batch as the networks take it: on ``device``, float32 in [-1, 1]. uint8 tensors are copied
    as uint8 (asynchronously from pinned memory) and converted on the device; float tensors pass as they are."""
    out = {}
    for key, value in batch.items():
        value = value.to(device, memory_format=memory_format, non_blocking=True)
        out[key] = to_float(value) if value.dtype == torch.uint8 else value.float()
    return out


def _crop_flip(img: torch.Tensor, top: int, left: int, size: int, flip: bool) -> torch.Tensor:
    img = img[:, top:top + size, left:left + size]
    return img.flip(-1) if flip else img


class PairStream:
    """Endless training batches for one worker (see the module docstring).

    Resumable: between batches, ``state_dict()`` is the stream's position (RNG state, the current pass's shard
    order and cursor, and the keys ``(shard, row)`` of the pairs in the shuffle buffers), a few KB of JSON;
    ``PairStream(..., state=...)`` continues from there with exactly the batches the original would have
    yielded next (the buffered pairs are read and decoded again).
    """

    def __init__(self, ds: Dataset, shards: list[int], cfg: DataConfig, batch_size: int, paired: bool,
                 rank: int = 0, world: int = 1, state: dict | None = None) -> None:
        self.ds, self.cfg, self.batch_size, self.paired = ds, cfg, batch_size, paired
        self.rank, self.world = rank, world
        if len(shards) >= world:
            self.shards, self.row_stride = shards[rank::world], 1
        else:
            self.shards, self.row_stride = list(shards), world
        self.rng = random.Random(cfg.seed * 1009 + rank)
        # cursor of the current pass over this worker's shards: order, shard index, next row, pairs yielded
        self._order: list[int] | None = None
        self._pos = self._row = self._seen = 0
        self._rows: tuple[int, list[dict], set[int]] | None = None  # the shard being read, and its rows to train on
        self._buf_a: list[tuple[tuple[int, int], torch.Tensor]] = []
        self._buf_b: list[tuple[tuple[int, int], torch.Tensor]] = []
        self._decoder = DecodeAhead(self._decode, cfg.decode_workers, depth=4 * max(1, cfg.decode_workers))
        # with decode threads, the next shard of the pass is read (object store -> rows) in the background too
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="shard-read") if cfg.decode_workers else None
        self._ahead: tuple[int, Future] | None = None
        if state is not None:
            self._restore(state)

    def state_dict(self) -> dict:
        """The position between two batches (JSON-serialisable)."""
        version, internal, gauss = self.rng.getstate()
        return {"rank": self.rank, "world": self.world, "rng": [version, list(internal), gauss],
                "order": self._order, "pos": self._pos, "row": self._row, "seen": self._seen,
                "buf_a": [list(k) for k, _ in self._buf_a], "buf_b": [list(k) for k, _ in self._buf_b]}

    def _restore(self, state: dict) -> None:
        if (state["rank"], state["world"]) != (self.rank, self.world):
            raise ValueError(f"data state of worker {state['rank']}/{state['world']} given to "
                             f"{self.rank}/{self.world}")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self._order, self._pos, self._row, self._seen = state["order"], state["pos"], state["row"], state["seen"]
        keys = [tuple(k) for k in state["buf_a"] + state["buf_b"]]
        pairs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for shard in sorted({s for s, _ in keys}):
            rows = self.ds.read_shard(shard, READ_COLUMNS).to_pylist()
            pairs.update({(s, i): self._decode(rows[i]) for s, i in keys if s == shard})
        self._buf_a = [(tuple(k), pairs[tuple(k)][0]) for k in state["buf_a"]]
        self._buf_b = [(tuple(k), pairs[tuple(k)][1]) for k in state["buf_b"]]

    def _read(self, shard: int) -> list[dict]:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == shard:
            return ahead[1].result()
        return self.ds.read_shard(shard, READ_COLUMNS).to_pylist()

    def _read_ahead(self, shard: int) -> None:
        if self._reader is not None:
            self._ahead = (shard, self._reader.submit(lambda: self.ds.read_shard(shard, READ_COLUMNS).to_pylist()))

    def _decode(self, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return to_uint8(row["schnell_image"], self.cfg.resolution), to_uint8(row["dev_image"], self.cfg.resolution)

    def _mine(self, rows: list[dict]) -> set[int]:
        """Indices of the rows this worker trains on: the train split, and its share when workers share shards."""
        train = self.cfg.splits.assign([row["pair_id"] for row in rows]) == "train"
        return {i for i, row in enumerate(rows) if train[i] and self.cfg.kept(row["pair_id"]) and (
            self.row_stride == 1 or int(pair_hash(row["pair_id"], "worker") * 2**32) % self.row_stride == self.rank)}

    def _pairs(self) -> Iterator[tuple[tuple[int, int], torch.Tensor, torch.Tensor]]:
        while True:
            if self._order is None:  # a new pass: shuffle the shard order
                self._order = list(self.shards)
                self.rng.shuffle(self._order)
                self._pos = self._row = self._seen = 0
            while self._pos < len(self._order):
                shard = self._order[self._pos]
                if self._rows is None or self._rows[0] != shard:
                    rows = self._read(shard)
                    self._rows = (shard, rows, self._mine(rows))
                    if self._pos + 1 < len(self._order):  # fetch the next shard while this one trains
                        self._read_ahead(self._order[self._pos + 1])
                    self._decoder.reset(rows, [i for i in range(self._row, len(rows)) if i in self._rows[2]])
                _, rows, mine = self._rows
                while self._row < len(rows):
                    idx = self._row
                    self._row += 1  # the cursor moves before the yield: a state taken now continues after it
                    if idx in mine:
                        self._seen += 1
                        yield (shard, idx), *self._decoder.get(idx)
                self._pos, self._row, self._rows = self._pos + 1, 0, None
            if self._seen == 0:
                raise DatasetError(f"worker {self.rank}/{self.world} got no training pairs from shards "
                                   f"{self.shards} of {self.ds.uri} (dataset too small for {self.world} workers?)")
            self._order = None

    def _samples(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffle buffer(s): one for paired data, two independent ones for unpaired data."""
        size = max(1, self.cfg.shuffle_buffer)

        def pop(buf: list, idx: int) -> torch.Tensor:
            buf[idx], buf[-1] = buf[-1], buf[idx]
            return buf.pop()[1]

        while True:
            if len(self._buf_a) >= size:  # full (a restored stream starts here)
                i = self.rng.randrange(len(self._buf_a))
                j = i if self.paired else self.rng.randrange(len(self._buf_b))
                yield pop(self._buf_a, i), pop(self._buf_b, j)
                continue
            key, a, b = next(self._pairs_iter)
            self._buf_a.append((key, a))
            self._buf_b.append((key, b))

    def close(self) -> None:
        """Stop the decode threads (the stream cannot be iterated after)."""
        self._decoder.close()
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)

    def background(self, pin_memory: bool = False) -> BackgroundBatches:
        """The batches, built ``prefetch_batches`` ahead on a background thread (pinned for a CUDA copy);
        its ``state_dict()`` is this stream's position after the last batch handed to the caller."""
        def with_state() -> Iterator[tuple[dict[str, torch.Tensor], dict]]:
            for batch in self:
                yield batch, json.loads(json.dumps(self.state_dict()))  # a snapshot, not live lists

        return BackgroundBatches(with_state(), self.cfg.prefetch_batches, pin_memory, self.state_dict())

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg, size = self.cfg, self.cfg.size
        self._pairs_iter = self._pairs()
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
                yield {"schnell": torch.stack(batch_a), "dev": torch.stack(batch_b)}
                batch_a, batch_b = [], []


def load_validation(ds: Dataset, shards: list[int], cfg: DataConfig, rank: int = 0,
                    world: int = 1) -> dict[str, torch.Tensor]:
    """This worker's share of the validation pairs (paired, centre-cropped, uint8), at most ``max_val_pairs``
    in total; reading stops as soon as enough pairs are found. With fewer pairs than workers every worker
    gets all of them (the averaged metrics stay exact and every worker reports the same metric names)."""
    pairs: list[tuple[dict, dict]] = []
    for table in ds.iter_shards(READ_COLUMNS, shards):
        for row in table.to_pylist():
            if len(pairs) >= cfg.max_val_pairs:
                break
            if cfg.splits.assign([row["pair_id"]])[0] == "val" and cfg.kept(row["pair_id"]):
                pairs.append((row["schnell_image"], row["dev_image"]))
        if len(pairs) >= cfg.max_val_pairs:
            break
    mine = pairs[rank::world] if len(pairs) >= world else pairs
    size = cfg.size
    off = (cfg.resolution - size) // 2
    if not mine:
        empty = torch.zeros(0, 3, size, size, dtype=torch.uint8)
        return {"schnell": empty, "dev": empty.clone()}
    a = [_crop_flip(to_uint8(x, cfg.resolution), off, off, size, False) for x, _ in mine]
    b = [_crop_flip(to_uint8(y, cfg.resolution), off, off, size, False) for _, y in mine]
    return {"schnell": torch.stack(a), "dev": torch.stack(b)}
