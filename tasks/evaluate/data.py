"""The evaluation's data: the dataset's test split and nothing else, heads checked against it, batches streamed.

- **Test split only.** A pair's split is fixed when the dataset is built (``facelift.splits``, ``dataset.json``):
  training reads train, model selection val, evaluation only ``test``. :func:`check_head_splits` refuses a
  head whose training run recorded other splits, or none (a bare head folder, an older run): its training
  pairs could be in this test split.
- **Two halves.** The test pairs are split again, by another hash (``eval-half``), into an *input* half (what
  every row is made from) and a *reference* half (the FID/KID reference sets), ``n`` pairs each: ``n`` is
  ``min(n_images, half)``, by default ``min(half, 10_000)``. A larger ``n`` extends the sets (same hash order).
- **Streaming.** :func:`iter_batches` reads the shards that hold the wanted pairs one at a time (only the
  needed columns, one row group at a time) and decodes ``batch_size`` pairs at a time (in a thread pool, one
  batch prefetched): memory holds one row group's encoded image columns and a few batches of images, whatever
  ``n`` (``bench/eval_memory.py``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from facelift.dataset import Dataset, DatasetError, shard_key
from facelift.splits import SplitError, SplitSpec, check_same, pair_hash
from facelift.storage import StorageError
from facelift.tasks.evaluate.metrics import image_set_key
from facelift.tasks.feed import BackgroundBatches, to_uint8

log = logging.getLogger(__name__)

SPLIT = "test"
HALF_SALT = "eval-half"
DEFAULT_MAX_N = 10_000  # images per set when n_images is None: min(test half, this)
MIN_TEST_PAIRS = 4  # two halves of two (FID needs two images per set)


@dataclass(frozen=True)
class PairRef:
    """One test pair, from the manifest (no images)."""

    pair_id: str
    shard: int
    schnell_sha256: str
    dev_sha256: str


@dataclass(frozen=True)
class TestSplit:
    """The evaluated pairs: two disjoint halves of the dataset's test split, ``n`` pairs each (no images)."""

    __test__ = False  # not a pytest class

    spec: SplitSpec
    n_test: int  # pairs in the whole test split
    input: list[PairRef]
    reference: list[PairRef]
    size: int  # square size images are read at (the heads run at it)

    @property
    def n(self) -> int:
        return len(self.input)

    def reference_key(self, kind: str, suffix: str = "") -> str:
        """Content key of the reference half's ``kind`` images (feature cache), plus the read size."""
        digests = [getattr(p, f"{kind}_sha256") or p.pair_id for p in self.reference]
        return f"{image_set_key(digests)}-{self.size}{suffix}"

    def describe(self) -> str:
        return (f"test split only ({self.spec.describe()}): {self.n_test} test pairs -> {self.n} input + "
                f"{len(self.reference)} reference pairs at {self.size}px")

    def meta(self) -> dict[str, Any]:
        return {"split": SPLIT, "splits": self.spec.model_dump(), "split_rule": self.spec.describe(),
                "n_test": self.n_test, "n_input": self.n, "n_reference": len(self.reference), "size": self.size}


def select_test_split(ds: Dataset, n_images: int | None = None, resolution: int | None = None) -> TestSplit:
    """The test pairs of the committed shards, split into the input and reference halves (manifest only)."""
    spec = ds.splits()
    manifest = ds.manifest()
    manifest = manifest[manifest["shard"].isin(set(ds.committed_shards()))]
    test = manifest[spec.mask(manifest["pair_id"], SPLIT)]
    if len(test) < MIN_TEST_PAIRS:
        raise SplitError(f"dataset {ds.uri}: only {len(test)} of {len(manifest)} pairs are in the test split "
                         f"({spec.describe()}); evaluation needs >= {MIN_TEST_PAIRS} (two halves of >= 2): build "
                         f"a larger dataset, or one with a larger splits.test")
    order = sorted(test["pair_id"], key=lambda p: pair_hash(p, HALF_SALT))
    half = len(order) // 2
    n = min(half, DEFAULT_MAX_N) if n_images is None else min(n_images, half)
    if n_images is not None and n_images > half:
        log.warning("n_images %d > the test split's half (%d pairs): evaluating %d per set", n_images, half, half)
    by_id = test.set_index("pair_id")

    def refs(ids: list[str]) -> list[PairRef]:
        return [PairRef(p, int(by_id.at[p, "shard"]), str(by_id.at[p, "schnell_sha256"] or ""),
                        str(by_id.at[p, "dev_sha256"] or "")) for p in ids]

    size = resolution or int(ds.info().get("config", {}).get("generation", {}).get("height") or 0) \
        or int(test["height"].iloc[0])
    split = TestSplit(spec, len(test), refs(order[0::2][:n]), refs(order[1::2][:n]), size)
    log.info("%s: %s", ds.dataset_id, split.describe())
    return split


# -- heads against the split ----------------------------------------------------------------------
def training_run(head_uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """The training run's ``run.json`` beside the head's ``head/`` folder; {} for a bare head folder."""
    from facelift.models.heads import read_head_config
    from facelift.storage import Store

    head_store, _ = read_head_config(head_uri, endpoint_url)
    base, _, leaf = head_store.url().rstrip("/").rpartition("/")
    if leaf != "head":
        return {}
    try:
        return json.loads(Store(base, endpoint_url).read_bytes("run.json"))
    except (FileNotFoundError, ValueError):
        return {}


def check_head_splits(heads: list[str], ds: Dataset, endpoint_url: str | None = None) -> None:
    """Refuse (SplitError) any head whose training run recorded other splits than the dataset's, or none."""
    spec = ds.splits()
    for uri in heads:
        run = training_run(uri, endpoint_url)
        trained_on = (run.get("config") or {}).get("dataset_uri")
        if trained_on and trained_on.rstrip("/") != ds.uri.rstrip("/"):
            log.warning("head %s was trained on %s, not on %s: only pairs with the same ids share a split", uri,
                        trained_on, ds.uri)
        what = f"head {uri}" if run else f"head {uri} (no run.json of a training run beside its head/ folder)"
        check_same(run.get("splits"), spec, what)


# -- streaming ------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Up to ``batch_size`` pairs: ids, prompts, seeds and the decoded images of each kind (uint8 NCHW)."""

    pair_ids: list[str]
    prompts: list[str]
    seeds: list[int]
    images: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.pair_ids)


def _decode(records: list[dict[str, Any]], kinds: tuple[str, ...], size: int, pool: ThreadPoolExecutor) -> Batch:
    images = {k: torch.stack(list(pool.map(lambda r, k=k: to_uint8(r[f"{k}_image"], size), records)))
              for k in kinds}
    return Batch([r["pair_id"] for r in records], [r["prompt"] for r in records], [int(r["seed"]) for r in records],
                 images)


def _row_groups(ds: Dataset, index: int, columns: list[str]) -> Iterator[pa.Table]:
    """One shard's row groups with only ``columns``, through a file handle: only those column chunks are read
    (not the whole object, as ``Dataset.read_shard`` does)."""
    key = shard_key(index)
    try:
        with ds.store.open(key) as fh:
            parquet = pq.ParquetFile(fh)
            for group in range(parquet.num_row_groups):
                yield parquet.read_row_group(group, columns=columns)
    except (FileNotFoundError, StorageError):
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt parquet of any kind
        raise DatasetError(f"shard {key} of {ds.dataset_id} is unreadable: {exc}") from exc


def _read_batches(ds: Dataset, pairs: list[PairRef], size: int, batch_size: int, kinds: tuple[str, ...],
                  pool: ThreadPoolExecutor) -> Iterator[Batch]:
    wanted = pa.array(sorted({p.pair_id for p in pairs}))
    columns = ["pair_id", "prompt", "seed", *(f"{k}_image" for k in kinds)]
    pending: list[dict[str, Any]] = []
    seen = 0
    for index in sorted({p.shard for p in pairs}):
        for table in _row_groups(ds, index, columns):
            rows = np.flatnonzero(pc.is_in(table["pair_id"], value_set=wanted).to_numpy(zero_copy_only=False))
            for start in range(0, len(rows), batch_size):  # copies only the wanted rows, a batch at a time
                pending += table.take(pa.array(rows[start:start + batch_size])).to_pylist()
                while len(pending) >= batch_size:
                    yield _decode(pending[:batch_size], kinds, size, pool)
                    seen += batch_size
                    pending = pending[batch_size:]
            del table
    if pending:
        yield _decode(pending, kinds, size, pool)
        seen += len(pending)
    if seen != len(pairs):
        raise DatasetError(f"dataset {ds.uri}: {len(pairs) - seen} of {len(pairs)} test pairs are in the manifest "
                           f"but not in their shards")


def iter_batches(ds: Dataset, pairs: list[PairRef], size: int, batch_size: int,
                 kinds: tuple[str, ...] = ("schnell", "dev"), workers: int | None = None,
                 prefetch: int = 1) -> Iterator[Batch]:
    """Batches of ``pairs`` in shard order, read shard by shard and decoded ``batch_size`` at a time.

    Only the wanted image columns are read. ``prefetch`` batches are decoded ahead in a thread (overlapping
    decode with the metric networks); at most ``prefetch + 2`` batches of images exist at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1), thread_name_prefix="eval-decode") as pool:
        yield from _prefetched(_read_batches(ds, pairs, size, batch_size, kinds, pool), prefetch)


def _prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced ``depth`` ahead in a background thread (errors re-raised here, in order)."""
    if depth < 1:
        yield from items
        return
    ahead = BackgroundBatches(((item, None) for item in items), depth)
    try:
        yield from ahead
    finally:
        ahead.close()
