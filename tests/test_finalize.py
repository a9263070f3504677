"""Finalize reads kilobytes: the manifest comes from each shard's footer and manifest columns (ranged reads on
SeaweedFS), not from shards downloaded whole (about 131 GB at 140k pairs)."""

from __future__ import annotations

import uuid

import numpy as np
from PIL import Image

from facelift.dataset import shard_key
from facelift.storage import Store
from facelift.tasks.build.steps import finalize
from facelift.testing import count_s3_reads, make_synthetic_dataset


def _photo_sized(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    """Noise pictures: PNGs of about 0.8 MB at 512², the weight of real portraits, that no compressor shrinks."""
    return tuple(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2))


def test_finalize_reads_under_one_percent_of_the_shard_bytes(seaweed, monkeypatch):
    store = Store(f"s3://facelift/finalize-{uuid.uuid4().hex[:6]}", seaweed.endpoint)
    ds = make_synthetic_dataset(store, "fin", n_pairs=24, size=512, shard_size=8, make_pair=_photo_sized)
    expected = ds.manifest()
    ds.store.delete("manifest.parquet")
    shard_bytes = sum(ds.store.size(shard_key(k)) for k in ds.committed_shards())
    read = count_s3_reads("/shards/", monkeypatch.setattr)
    info = finalize(ds, ds.plan(), build_seconds=1.0)
    assert info["status"] == "complete" and info["counts"]["pairs"] == 24
    assert 0 < read[0] < 0.01 * shard_bytes, f"read {read[0]} of {shard_bytes} shard bytes"
    manifest = ds.manifest()
    assert manifest["pair_id"].tolist() == expected["pair_id"].tolist()
    assert manifest["schnell_sha256"].tolist() == expected["schnell_sha256"].tolist()
