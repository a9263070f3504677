"""The dataset layout and its I/O: plan, shards, manifest and ``dataset.json``.

```
<root>/datasets/<dataset_id>/dataset.json       config, fingerprint, status, counts, versions, timings
<root>/datasets/<dataset_id>/plan.parquet       one row per pair: pair_id, name, nconst, prompt, seed, shard
<root>/datasets/<dataset_id>/shards/NNNNN.parquet   images inline (HF `datasets` Image struct) + provenance
<root>/datasets/<dataset_id>/manifest.parquet   every committed pair, no image bytes
<root>/runs/<run_id>/...                        checkpoints, reports, plots
```
A shard is committed when its object exists; objects are written atomically (see ``Store.write_bytes``).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from facelift.ids import IdError, check_id
from facelift.splits import SplitSpec, spec_from_info
from facelift.storage import StorageError, Store

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
PLAN = "plan.parquet"
MANIFEST = "manifest.parquet"
SHARDS = "shards"
SHARD_RE = re.compile(r"^(\d{5,})\.parquet$")
IMAGE_COLUMNS = ("schnell_image", "dev_image")
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

PLAN_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("name", pa.string()), ("nconst", pa.string()), ("prompt", pa.string()),
    ("seed", pa.int64()), ("shard", pa.int32()), ("weight", pa.float64()),
])

# Provenance columns of a shard, beside the plan columns and the two images.
PROVENANCE_FIELDS = [
    ("schnell_sha256", pa.string()), ("dev_sha256", pa.string()),
    ("schnell_model", pa.string()), ("schnell_revision", pa.string()),
    ("dev_model", pa.string()), ("dev_revision", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()),
    ("schnell_steps", pa.int32()), ("schnell_guidance", pa.float32()),
    ("dev_steps", pa.int32()), ("dev_steps_run", pa.int32()), ("dev_guidance", pa.float32()),
    ("dev_strength", pa.float32()), ("max_sequence_length", pa.int32()),
    ("encode_s", pa.float64()), ("schnell_s", pa.float64()), ("dev_s", pa.float64()),
    ("png_s", pa.float64()), ("worker", pa.string()), ("created_at", pa.string()),
]
SHARD_SCHEMA_FIELDS = [f for f in PLAN_SCHEMA] + [
    pa.field("schnell_image", IMAGE_TYPE), pa.field("dev_image", IMAGE_TYPE),
] + [pa.field(n, t) for n, t in PROVENANCE_FIELDS]
MANIFEST_COLUMNS = [f.name for f in SHARD_SCHEMA_FIELDS if f.name not in IMAGE_COLUMNS]


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete, inconsistent or from different parameters."""


def _hf_features(schema: pa.Schema) -> dict[str, Any]:
    """The ``huggingface`` schema metadata that makes ``datasets`` decode the image structs."""
    names = {pa.string(): "string", pa.int64(): "int64", pa.int32(): "int32", pa.float64(): "float64",
             pa.float32(): "float32", pa.bool_(): "bool"}
    feats: dict[str, Any] = {}
    for field in schema:
        if field.type == IMAGE_TYPE:
            feats[field.name] = {"_type": "Image"}
        else:
            feats[field.name] = {"dtype": names[field.type], "_type": "Value"}
    return {"info": {"features": feats}}


def shard_schema() -> pa.Schema:
    schema = pa.schema(SHARD_SCHEMA_FIELDS)
    return schema.with_metadata({"huggingface": json.dumps(_hf_features(schema))})


def shard_key(index: int) -> str:
    return f"{SHARDS}/{index:05d}.parquet"


def table_to_parquet_bytes(table: pa.Table, compression: str = "zstd") -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression)
    return buf.getvalue()


def read_parquet_bytes(data: bytes, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(data), columns=columns)


@dataclass(frozen=True)
class Dataset:
    """A dataset folder in a store: ``Dataset(Store("s3://bucket/prefix/datasets/ID"))``."""

    store: Store

    @classmethod
    def at(cls, root: Store, dataset_id: str) -> Dataset:
        return cls(root.child(f"datasets/{dataset_id}"))

    @classmethod
    def open(cls, uri: str, endpoint_url: str | None = None) -> Dataset:
        """Open an existing dataset by its URI (``.../datasets/<id>``); clear error if it is not one."""
        ds = cls(Store(uri, endpoint_url))
        try:  # it names artifact keys, completion records and runs: the id rule, as for a new dataset
            check_id(ds.dataset_id, "dataset id (the last part of the dataset URI)")
        except IdError as exc:
            raise DatasetError(str(exc)) from None
        if not ds.store.exists(DATASET_JSON):
            raise DatasetError(f"no dataset at {ds.store.where()}: {DATASET_JSON} not found")
        return ds

    @property
    def dataset_id(self) -> str:
        return self.store.root.rstrip("/").rsplit("/", 1)[-1]

    @property
    def uri(self) -> str:
        return self.store.url()

    def root_store(self) -> Store:
        """The storage root that holds ``datasets/`` and ``runs/``."""
        return Store(self.store.url().rsplit("/datasets/", 1)[0], self.store.endpoint_url,
                     self.store.connect_timeout_s, self.store.max_attempts)

    # -- dataset.json ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        try:
            return json.loads(self.store.read_bytes(DATASET_JSON))
        except FileNotFoundError:
            raise DatasetError(f"no dataset at {self.store.where()}: {DATASET_JSON} not found") from None

    def require_real(self, purpose: str) -> None:
        """Refuse a dataset made by the ``sim`` profile's stand-in renderer (placeholder images)."""
        if self.info().get("simulated"):
            raise DatasetError(f"dataset {self.dataset_id} is simulated (built with --profile sim: placeholder "
                               f"images, no FLUX output); {purpose} needs a dataset built with a real profile")

    def splits(self) -> SplitSpec:
        """The train/val/test rule fixed when the dataset was created (:mod:`facelift.splits`)."""
        return spec_from_info(self.info(), self.store.where())

    def write_info(self, info: dict[str, Any]) -> None:
        self.store.write_bytes(DATASET_JSON, json.dumps(info, indent=2, sort_keys=True).encode())

    # -- plan -----------------------------------------------------------------------------------
    def write_plan(self, plan: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(plan, schema=PLAN_SCHEMA, preserve_index=False)
        self.store.write_bytes(PLAN, table_to_parquet_bytes(table))

    def plan(self) -> pd.DataFrame:
        try:
            return read_parquet_bytes(self.store.read_bytes(PLAN)).to_pandas()
        except FileNotFoundError:
            raise DatasetError(f"dataset {self.dataset_id} has no {PLAN}") from None

    # -- shards ---------------------------------------------------------------------------------
    def committed_shards(self) -> list[int]:
        """Indices of committed shard objects (temp files and strays ignored)."""
        return sorted(int(m.group(1)) for n in self.store.list(SHARDS) if (m := SHARD_RE.match(n)))

    def commit_shard(self, index: int, table: pa.Table) -> int:
        """Write one shard as one object (the commit). Returns its size in bytes."""
        return self.commit_shard_bytes(index, table_to_parquet_bytes(table.cast(shard_schema())))

    def commit_shard_bytes(self, index: int, data: bytes) -> int:
        """Write one shard's encoded Parquet as one object (a single PUT, atomic on S3)."""
        self.store.write_bytes(shard_key(index), data)
        return len(data)

    def read_shard(self, index: int, columns: list[str] | None = None) -> pa.Table:
        try:
            return read_parquet_bytes(self.store.read_bytes(shard_key(index)), columns)
        except (FileNotFoundError, StorageError):
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt parquet of any kind
            raise DatasetError(f"shard {shard_key(index)} of {self.dataset_id} is unreadable: {exc}") from exc

    def read_shard_columns(self, index: int, columns: list[str]) -> pa.Table:
        """A few columns of one shard by ranged reads (the footer, then only those column chunks): kilobytes of a
        shard whose images weigh megabytes."""
        try:
            with self.store.open(shard_key(index), cache_type="none") as fh:
                return pq.ParquetFile(fh).read(columns=columns)
        except (FileNotFoundError, StorageError):
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt parquet of any kind
            raise DatasetError(f"shard {shard_key(index)} of {self.dataset_id} is unreadable: {exc}") from exc

    def shard_rows(self, index: int) -> int | None:
        """Row count from the shard footer; None if the object is missing or corrupt."""
        try:
            with self.store.open(shard_key(index), cache_type="none") as fh:
                return pq.ParquetFile(fh).metadata.num_rows
        except FileNotFoundError:
            return None
        except StorageError:
            raise
        except Exception:  # noqa: BLE001 - a corrupt footer means "not committed"
            return None

    def iter_shards(
        self, columns: list[str] | None = None, shards: Iterable[int] | None = None
    ) -> Iterator[pa.Table]:
        """Stream committed shards one at a time (bounded memory)."""
        for index in (self.committed_shards() if shards is None else shards):
            yield self.read_shard(index, columns)

    # -- manifest -------------------------------------------------------------------------------
    def write_manifest(self, manifest: pd.DataFrame) -> None:
        self.store.write_bytes(MANIFEST, table_to_parquet_bytes(pa.Table.from_pandas(manifest,
                                                                                     preserve_index=False)))

    def manifest(self) -> pd.DataFrame:
        try:
            return read_parquet_bytes(self.store.read_bytes(MANIFEST)).to_pandas()
        except FileNotFoundError:
            raise DatasetError(
                f"dataset {self.dataset_id} has no {MANIFEST}: the build has not finished "
                f"(run the same build again to resume)"
            ) from None


def decode_image(cell: dict[str, Any] | None):
    """A shard image cell (``{"bytes", "path"}``) -> ``PIL.Image`` in RGB; clear error if corrupt."""
    from PIL import Image, UnidentifiedImageError

    if not cell or cell.get("bytes") is None:
        raise ValueError("image cell holds no bytes")
    try:
        img = Image.open(io.BytesIO(cell["bytes"]))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"corrupt image {cell.get('path') or ''}: {exc}") from exc
    return img.convert("RGB")
