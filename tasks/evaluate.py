"""Evaluation on the held-out split: rows (schnell, dev, each head, optional schnell+LoRA) scored with
FID_schnell, FID_dev, FID_diff (paper Table 4), KID, CLIP-IQA and LPIPS-to-dev, with bootstrap CIs.

Held-out split: the pairs the training code keeps for validation (``tasks.train_data.is_validation``,
the same pair_id hash). They are split again, by another hash, into two equal halves:
- the *input* half: its schnell images are what every row transforms (or, for schnell / dev, the row's
  images are that half's own schnell / dev images); LPIPS-to-dev pairs each output with its dev image;
- the *reference* half: its schnell and dev images are the FID/KID reference sets.
Disjoint halves make every number a real two-sample distance (the schnell row's FID_schnell is the
sampling-noise floor, not a trivial 0) and keep set sizes equal (N is reported with every number).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from facelift.dataset import Dataset, DatasetError, decode_image
from facelift.models.metrics import ClipIQA, FIDInceptionV3, MetricConfig, build_lpips
from facelift.tasks.enhance import InferenceEngine, chunked, pick_device, translate_batches
from facelift.tasks.eval_report import fid_columns, kid_columns
from facelift.tasks.metrics import cached_features, image_set_key, mean_with_ci
from facelift.tasks.train_data import is_validation, pair_hash, to_uint8

log = logging.getLogger(__name__)

READ_COLUMNS = ["pair_id", "prompt", "seed", "schnell_image", "dev_image", "schnell_sha256", "dev_sha256"]


@dataclass(frozen=True)
class EvalConfig:
    n_images: int = 256  # per set (input half and reference half each hold at most this many pairs)
    val_fraction: float | None = None  # None: the smallest training val_fraction of the heads (else 0.1)
    resolution: int | None = None  # square size images are resized to; None: the dataset's own size
    batch_size: int = 16
    n_boot: int = 20  # FID half-sampling rounds (and the bootstrap floor of 100 for CLIP-IQA / LPIPS)
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # cap: KID subsets are min(this, n // 2)
    device: str = "auto"
    seed: int = 0
    grid_images: int = 6

    def __post_init__(self) -> None:
        if self.n_images < 2:
            raise ValueError(f"n_images must be >= 2 (FID needs two images per set), got {self.n_images}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def heldout_mask(pair_ids: pd.Series, val_fraction: float) -> np.ndarray:
    """The training code's validation split (one place to change if it ever moves)."""
    return np.array([is_validation(p, val_fraction) for p in pair_ids], dtype=bool)


def _half_order(pair_ids: list[str]) -> list[str]:
    return sorted(pair_ids, key=lambda p: pair_hash(p, "eval-half"))


@dataclass
class HeldOut:
    """The two halves of the held-out split, decoded to uint8 NCHW tensors of one size."""

    input_ids: list[str]
    ref_ids: list[str]
    prompts: list[str]
    seeds: list[int]
    schnell_in: torch.Tensor
    dev_in: torch.Tensor
    schnell_ref: torch.Tensor
    dev_ref: torch.Tensor
    ref_keys: dict[str, str]
    val_fraction: float
    size: int

    @property
    def n(self) -> int:
        return len(self.input_ids)


def load_heldout(ds: Dataset, cfg: EvalConfig, val_fraction: float) -> HeldOut:
    """Read only the held-out pairs (streaming the shards that hold them), split into equal halves."""
    manifest = ds.manifest()
    committed = set(ds.committed_shards())
    manifest = manifest[manifest["shard"].isin(committed)]
    held = manifest[heldout_mask(manifest["pair_id"], val_fraction)]
    if len(held) < 4:
        raise DatasetError(
            f"dataset {ds.uri}: only {len(held)} held-out pairs at val_fraction={val_fraction} (need >= 4: two "
            f"halves of >= 2); build a larger dataset or train with a larger val_fraction"
        )
    order = _half_order(list(held["pair_id"]))
    per_half = min(cfg.n_images, len(order) // 2)
    input_ids, ref_ids = order[0::2][:per_half], order[1::2][:per_half]
    wanted = set(input_ids) | set(ref_ids)
    size = cfg.resolution or int(ds.info().get("config", {}).get("generation", {}).get("height") or 0)
    rows: dict[str, dict[str, Any]] = {}
    shards = sorted(held[held["pair_id"].isin(wanted)]["shard"].unique().tolist())
    for table in ds.iter_shards(columns=READ_COLUMNS, shards=shards):
        for rec in table.to_pylist():
            if rec["pair_id"] in wanted:
                size = size or decode_image(rec["schnell_image"]).size[1]
                rows[rec["pair_id"]] = {
                    "prompt": rec["prompt"], "seed": int(rec["seed"]),
                    "schnell": to_uint8(rec["schnell_image"], size), "dev": to_uint8(rec["dev_image"], size),
                    "schnell_sha256": rec["schnell_sha256"], "dev_sha256": rec["dev_sha256"],
                }
    missing = wanted - set(rows)
    if missing:
        raise DatasetError(f"dataset {ds.uri}: {len(missing)} held-out pairs are in the manifest but not in "
                           f"their shards (e.g. {sorted(missing)[:3]})")

    def stack(ids: list[str], key: str) -> torch.Tensor:
        return torch.stack([rows[i][key] for i in ids])

    ref_keys = {kind: image_set_key([rows[i][f"{kind}_sha256"] or i for i in ref_ids]) + f"-{size}"
                for kind in ("schnell", "dev")}
    log.info("held-out split of %s: %d pairs -> %d input + %d reference at %dpx", ds.dataset_id, len(held),
             len(input_ids), len(ref_ids), size)
    return HeldOut(input_ids, ref_ids, [rows[i]["prompt"] for i in input_ids], [rows[i]["seed"] for i in input_ids],
                   stack(input_ids, "schnell"), stack(input_ids, "dev"), stack(ref_ids, "schnell"),
                   stack(ref_ids, "dev"), ref_keys, val_fraction, size)


@dataclass
class Row:
    """One line of the table: a set of images (uint8 NCHW, paired with the input half) and where it came from."""

    name: str
    kind: str  # reference | head | lora
    source: str
    images: torch.Tensor
    seconds_per_image: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def reference_rows(held: HeldOut) -> list[Row]:
    return [Row("schnell", "reference", "FLUX.1-schnell (dataset)", held.schnell_in),
            Row("dev", "reference", "FLUX.1-dev img2img (dataset)", held.dev_in)]


def head_row(head_uri: str, held: HeldOut, cfg: EvalConfig, endpoint_url: str | None = None) -> Row:
    """Translate the input half's schnell images with a saved head (folder or run URI)."""
    from facelift.models.heads import load_head

    head = load_head(head_uri, endpoint_url)
    engine = InferenceEngine.from_head(head, device=cfg.device, compile=False)
    translate_batches(engine, held.schnell_in[:1], 1)  # warm-up
    start = time.perf_counter()
    images = translate_batches(engine, held.schnell_in, cfg.batch_size)
    per_image = (time.perf_counter() - start) / len(images)
    label = f"{head.name} ({head_uri.rstrip('/').rsplit('/', 1)[-1]})"
    return Row(label, "head", head_uri, images, per_image, {"head": head.name, "flavor": head.flavor})


class MetricSuite:
    """The three metric networks on one device; all take uint8 NCHW batches."""

    def __init__(self, metrics: MetricConfig, device: str = "auto", batch_size: int = 16) -> None:
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.inception = FIDInceptionV3.from_file(metrics.inception_weights).to(self.device)
        self.clip = ClipIQA.from_pretrained(metrics.clip_model).to(self.device)
        self.lpips = build_lpips(metrics.lpips_net, metrics.lpips_random_backbone).to(self.device)
        self.extractor_id = f"fid-inception-{self.inception.weights_sha256[:16]}"

    def _float(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device).float().div(127.5).sub(1.0)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> np.ndarray:
        parts = [self.inception(self._float(images[s])).double().cpu() for s in chunked(len(images), self.batch_size)]
        return torch.cat(parts).numpy()

    @torch.inference_mode()
    def clip_iqa(self, images: torch.Tensor) -> np.ndarray:
        return torch.cat([self.clip(self._float(images[s])).cpu() for s in chunked(len(images), self.batch_size)]
                         ).double().numpy()

    @torch.inference_mode()
    def lpips_to(self, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        return torch.cat([self.lpips(self._float(images[s]), self._float(targets[s])).flatten().cpu()
                          for s in chunked(len(images), self.batch_size)]).double().numpy()


def score_rows(rows: list[Row], held: HeldOut, suite: MetricSuite, cache_store: Any, cfg: EvalConfig) -> pd.DataFrame:
    """The evaluation table: one line per row, every metric with N and a 95% interval (docs/evaluate.md)."""
    refs = {}
    for kind, images in (("schnell", held.schnell_ref), ("dev", held.dev_ref)):
        refs[kind], hit = cached_features(cache_store, suite.extractor_id, held.ref_keys[kind],
                                          lambda images=images: suite.features(images))
        log.info("reference %s features: %d (%s)", kind, len(refs[kind]), "cached" if hit else "computed")
    records = []
    for i, row in enumerate(rows):
        feats = suite.features(row.images)
        iqa = mean_with_ci(suite.clip_iqa(row.images), n_boot=max(cfg.n_boot, 100), seed=cfg.seed + i)
        lp = mean_with_ci(suite.lpips_to(row.images, held.dev_in), n_boot=max(cfg.n_boot, 100), seed=cfg.seed + i)
        rec = {
            "row": row.name, "kind": row.kind, "source": row.source, "n": len(row.images),
            "n_reference": len(refs["schnell"]),
            **fid_columns(feats, refs, cfg.n_boot, cfg.seed + i),
            **kid_columns("kid_schnell", feats, refs["schnell"], cfg.kid_subsets, cfg.kid_subset_size, cfg.seed),
            **kid_columns("kid_dev", feats, refs["dev"], cfg.kid_subsets, cfg.kid_subset_size, cfg.seed),
            **iqa.as_dict("clip_iqa"), **lp.as_dict("lpips_dev"),
            "seconds_per_image": row.seconds_per_image,
        }
        records.append(rec)
        log.info("%s: FID_schnell %.3f FID_dev %.3f FID_diff %.3f CLIP-IQA %.3f LPIPS %.3f", row.name,
                 rec["fid_schnell"], rec["fid_dev"], rec["fid_diff"], iqa.value, lp.value)
    return pd.DataFrame.from_records(records)


def training_info(head_uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """The training run's config (``run.json`` beside ``head/``), or {} for a bare head folder."""
    import json

    from facelift.models.heads import read_head_config
    from facelift.storage import Store

    head_store, _ = read_head_config(head_uri, endpoint_url)
    base, _, leaf = head_store.url().rstrip("/").rpartition("/")
    if leaf != "head":
        return {}
    try:
        return json.loads(Store(base, endpoint_url).read_bytes("run.json")).get("config") or {}
    except (FileNotFoundError, ValueError):
        return {}


def resolve_val_fraction(requested: float | None, heads: list[str], dataset_uri: str,
                         endpoint_url: str | None = None) -> float:
    """The held-out fraction: the requested one, else the smallest the heads were trained with (else 0.1).

    The split is ``hash(pair_id) < fraction``, so any fraction up to a head's own is held out for it; a
    larger one would evaluate on pairs it trained on (warned about).
    """
    trained = {}
    for uri in heads:
        info = training_info(uri, endpoint_url)
        if info.get("dataset_uri") and info["dataset_uri"].rstrip("/") != dataset_uri.rstrip("/"):
            log.warning("head %s was trained on %s, not on %s: its held-out split is not guaranteed unseen",
                        uri, info["dataset_uri"], dataset_uri)
        if info.get("val_fraction"):
            trained[uri] = float(info["val_fraction"])
    if requested is None:
        return min(trained.values(), default=0.1)
    for uri, frac in trained.items():
        if requested > frac:
            log.warning("val_fraction %.3f > %.3f used to train %s: some evaluated pairs were training pairs",
                        requested, frac, uri)
    return requested


def timing_head(heads: list[str], endpoint_url: str | None = None) -> Any:
    """The head the timing table uses: the ESA-CycleGAN when one is given (the paper's), else the first."""
    from facelift.models.heads import load_head, read_head_config

    names = [read_head_config(h, endpoint_url)[1].get("head") for h in heads]
    return load_head(heads[names.index("esa_cyclegan") if "esa_cyclegan" in names else 0], endpoint_url)
