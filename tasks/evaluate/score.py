"""Evaluation on the test split: rows (schnell, dev, each head, optional schnell+LoRA) scored with FID_schnell,
FID_dev, FID_diff (paper Table 4), KID, CLIP-IQA and LPIPS-to-dev, each with N and a 95% interval.

The pairs: only the dataset's test split, in two disjoint halves (``tasks.evaluate.data``):
- the *input* half: every row's images are made from it (schnell / dev: that half's own schnell / dev images;
  a head: the head applied to its schnell images; the LoRA row: schnell + LoRA from its prompts and seeds);
  LPIPS-to-dev pairs each output with its dev image;
- the *reference* half: its schnell and dev images are the FID/KID reference sets.
Disjoint halves make every number a real two-sample distance (the schnell row's FID_schnell is the
sampling-noise floor, not a trivial 0) and keep set sizes equal (N is reported with every number).

Streaming: one pass over the input half's batches makes every row's images for that batch and reduces them to
Inception features, CLIP-IQA scores and LPIPS values at once; only those (N × 2048 floats per set) accumulate,
plus ``grid_images`` images per row for the sample grid. The reference half is a second pass (or the cache).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from facelift.dataset import Dataset
from facelift.models.metrics import (
    DEFAULT_FID_RESIZE,
    FID_RESIZES,
    ClipIQA,
    FIDInceptionV3,
    MetricConfig,
    build_lpips,
    fid_input,
    model_identity,
)
from facelift.tasks.enhance import InferenceEngine, chunked, pick_device, translate_batches
from facelift.tasks.evaluate.data import Batch, TestSplit, iter_batches, training_run
from facelift.tasks.evaluate.metrics import KID_MIN_SUBSETS, cached_features
from facelift.tasks.evaluate.table import PRIMARY, metric_columns, ordered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    n_images: int | None = None  # per set (each half); None: min(test half, 10_000)
    resolution: int | None = None  # square size images are read at (heads run at it); None: the dataset's
    resize: str = DEFAULT_FID_RESIZE  # to the Inception's 299²: clean (clean-fid, PIL bicubic) or torch (pytorch-fid)
    batch_size: int = 16
    n_boot: int = 20  # FID resampling rounds (halves + quarters), shared by every row
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # cap: KID and CMMD subsets are min(this, n // 2)
    primary: str = PRIMARY  # the declared primary comparison, shown first (docs/evaluate.md, "Verdicts")
    alpha: float = 0.05  # family-wise error rate of the verdicts (every row × every judged comparison)
    baseline: str = "schnell"  # the row every other row is compared with (a row name, a head's name or its URI)
    device: str = "auto"
    seed: int = 0
    grid_images: int = 6
    workers: int | None = None  # decode threads (None: min(8, CPUs))

    def __post_init__(self) -> None:
        if self.n_images is not None and self.n_images < 2:
            raise ValueError(f"n_images must be >= 2 (FID needs two images per set), got {self.n_images}")
        if self.resize not in FID_RESIZES:
            raise ValueError(f"unknown resize {self.resize!r}; valid: {', '.join(FID_RESIZES)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.n_boot < 2:
            raise ValueError(f"n_boot must be >= 2 (resampling rounds for the FID intervals), got {self.n_boot}")
        if self.kid_subsets < KID_MIN_SUBSETS:
            raise ValueError(f"kid_subsets must be >= {KID_MIN_SUBSETS} (KID's standard error needs a spread), got "
                             f"{self.kid_subsets}")
        if self.kid_subset_size < 4:
            raise ValueError(f"kid_subset_size must be >= 4 (subsets of m and m/2 >= 2 images), got "
                             f"{self.kid_subset_size}")
        if self.grid_images < 0 or (self.workers is not None and self.workers < 1):
            raise ValueError(f"grid_images must be >= 0 and workers >= 1, got {self.grid_images} and {self.workers}")
        ordered(self.primary)
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if not self.baseline.strip():
            raise ValueError("baseline must name a row (schnell, dev, a head or the LoRA row)")


@contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions inside the block (restored after)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class MetricSuite:
    """The three metric networks on one device; all take uint8 NCHW batches."""

    def __init__(self, metrics: MetricConfig, device: str = "auto", batch_size: int = 16,
                 resize: str = DEFAULT_FID_RESIZE) -> None:
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.resize = resize
        self.inception = FIDInceptionV3.from_file(metrics.inception_weights).to(self.device)
        self.clip = ClipIQA.from_pretrained(metrics.clip_model).to(self.device)
        self.lpips = build_lpips(metrics.lpips_net, metrics.lpips_random_backbone).to(self.device)
        self.extractor_id = f"fid-inception-{self.inception.weights_sha256[:16]}"
        self.clip_id = "clip-" + hashlib.sha256(model_identity(metrics.clip_model).encode()).hexdigest()[:16]
        self.precision = "fp32"  # TF32 off for the feature network (see features)

    def describe(self) -> dict[str, str]:
        """The table's record of the networks and the resize (the same on every row)."""
        return {"feature_network": self.extractor_id, "fid_resize": self.resize, "feature_device": self.device.type,
                "feature_precision": self.precision, **self.clip.variant()}

    def cache_suffix(self) -> str:
        """What the reference-feature cache key adds to the image set: resize, device type and precision."""
        return f"-{self.resize}-{self.device.type}-{self.precision}"

    def _float(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device).float().div(127.5).sub(1.0)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """Inception pool3 features in full float32: TF32 matmuls and convolutions are off while it runs."""
        with full_fp32():
            parts = [self.inception(fid_input(images[s], self.resize, self.device)).float().cpu()
                     for s in chunked(len(images), self.batch_size)]
        return torch.cat(parts).numpy()

    @torch.inference_mode()
    def clip_embeddings(self, images: torch.Tensor) -> np.ndarray:
        """Unit-norm CLIP image embeddings (CMMD's features; CLIP-IQA is computed from them)."""
        return torch.cat([self.clip.image_embeddings(self._float(images[s])).cpu()
                          for s in chunked(len(images), self.batch_size)]).double().numpy()

    @torch.inference_mode()
    def clip_iqa(self, embeddings: np.ndarray) -> np.ndarray:
        e = torch.from_numpy(embeddings).float().to(self.device)
        return self.clip.scores(e).cpu().double().numpy()

    @torch.inference_mode()
    def lpips_to(self, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        return torch.cat([self.lpips(self._float(images[s]), self._float(targets[s])).flatten().cpu()
                          for s in chunked(len(images), self.batch_size)]).double().numpy()


# -- rows -----------------------------------------------------------------------------------------
class RowSource(Protocol):
    """Makes one row's images for a batch of input pairs (uint8 NCHW, one per pair, in order)."""

    name: str
    kind: str  # reference | head | lora
    source: str
    notes: dict[str, Any]

    def make(self, batch: Batch) -> torch.Tensor: ...

    def seconds_per_image(self) -> float | None: ...


@dataclass
class DatasetImages:
    """The schnell or dev row: the input half's own images."""

    image_kind: str
    name: str
    source: str
    kind: str = "reference"
    notes: dict[str, Any] = field(default_factory=dict)

    def make(self, batch: Batch) -> torch.Tensor:
        return batch.images[self.image_kind]

    def seconds_per_image(self) -> float | None:
        return None


def reference_sources() -> list[RowSource]:
    return [DatasetImages("schnell", "schnell", "FLUX.1-schnell (dataset)"),
            DatasetImages("dev", "dev", "FLUX.1-dev img2img (dataset)")]


class Timed:
    """Seconds per image of a row's generator, after one untimed warm-up call on the first batch."""

    def __init__(self) -> None:
        self.seconds, self.images, self.warm = 0.0, 0, False

    def run(self, fn: Any, batch: Batch) -> torch.Tensor:
        if not self.warm:
            fn(batch, 1)  # warm-up (allocations, kernels, compile caches)
            self.warm = True
        start = time.perf_counter()
        out = fn(batch, len(batch))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.images += len(out)
        return out

    def per_image(self) -> float | None:
        return self.seconds / self.images if self.images else None


class HeadSource:
    """A saved head (folder or run URI) applied to the input half's schnell images."""

    kind = "head"

    def __init__(self, head_uri: str, cfg: EvalConfig, endpoint_url: str | None = None) -> None:
        from facelift.models.heads import load_head

        head = load_head(head_uri, endpoint_url)
        self.engine = InferenceEngine.from_head(head, device=cfg.device, compile=False)
        self.batch_size = cfg.batch_size
        self.name = f"{head.name} ({head_uri.rstrip('/').rsplit('/', 1)[-1]})"
        self.source = head_uri
        self.notes = {"head": head.name, "flavor": head.flavor}
        if (training_run(head_uri, endpoint_url).get("identity") or {}).get("near_identity"):  # issue 21
            self.name += " ⚠ near-identity"
        self.timer = Timed()

    def make(self, batch: Batch) -> torch.Tensor:
        return self.timer.run(lambda b, k: translate_batches(self.engine, b.images["schnell"][:k], self.batch_size),
                              batch)

    def seconds_per_image(self) -> float | None:
        return self.timer.per_image()


# -- scoring --------------------------------------------------------------------------------------
@dataclass
class RowScores:
    """What one row keeps while streaming: per-image features and scores, and a few images for the grid."""

    features: list[np.ndarray] = field(default_factory=list)
    clip: list[np.ndarray] = field(default_factory=list)
    clip_iqa: list[np.ndarray] = field(default_factory=list)
    lpips: list[np.ndarray] = field(default_factory=list)
    grid: list[torch.Tensor] = field(default_factory=list)

    def add(self, images: torch.Tensor, dev: torch.Tensor, suite: MetricSuite, grid_images: int) -> None:
        self.features.append(suite.features(images))
        self.clip.append(suite.clip_embeddings(images))
        self.clip_iqa.append(suite.clip_iqa(self.clip[-1]))
        self.lpips.append(suite.lpips_to(images, dev))
        kept = sum(len(g) for g in self.grid)
        if kept < grid_images:
            self.grid.append(images[: grid_images - kept].clone())


def stream_features(ds: Dataset, split: TestSplit, kind: str, extract: Any, cfg: EvalConfig) -> np.ndarray:
    """``extract`` (Inception features, CLIP embeddings) of the reference half's ``kind`` images, batch by batch."""
    parts = [extract(b.images[kind]) for b in iter_batches(ds, split.reference, split.size, cfg.batch_size, (kind,),
                                                            cfg.workers)]
    return np.concatenate(parts)


def reference_features(ds: Dataset, split: TestSplit, suite: MetricSuite, cache_store: Any,
                       cfg: EvalConfig) -> dict[str, np.ndarray]:
    """The reference half's schnell and dev features, from the feature cache or streamed (then cached)."""
    refs = {}
    wanted = [("schnell", "schnell", suite.extractor_id, suite.features), ("dev", "dev", suite.extractor_id,
                                                                           suite.features),
              ("clip_dev", "dev", suite.clip_id, suite.clip_embeddings)]
    for name, kind, extractor, extract in wanted:
        key = split.reference_key(kind, suite.cache_suffix())
        refs[name], hit = cached_features(cache_store, extractor, key,
                                          lambda kind=kind, f=extract: stream_features(ds, split, kind, f, cfg))
        log.info("reference %s: %d (%s)", name, len(refs[name]), "cached" if hit else "computed")
    return refs


def baseline_index(sources: list[RowSource], baseline: str) -> int:
    """The row ``baseline`` names: a row name, a head's name (when one head has it) or a head's URI."""
    for how in (lambda s: s.name, lambda s: s.source, lambda s: s.notes.get("head")):
        hits = [i for i, src in enumerate(sources) if how(src) == baseline]
        if len(hits) == 1:
            return hits[0]
    raise ValueError(f"baseline {baseline!r} names no single row; rows: {', '.join(s.name for s in sources)}")


def score_rows(sources: list[RowSource], ds: Dataset, split: TestSplit, suite: MetricSuite, cache_store: Any,
               cfg: EvalConfig) -> tuple[pd.DataFrame, list[tuple[str, torch.Tensor]]]:
    """The evaluation table (one line per row, every metric with N and a 95% interval, and the paired comparison
    with the baseline row; docs/evaluate.md) and the grid's columns (label, the row's first ``grid_images``)."""
    base = baseline_index(sources, cfg.baseline)  # before any image is decoded
    refs = reference_features(ds, split, suite, cache_store, cfg)
    scores = [RowScores() for _ in sources]
    for batch in iter_batches(ds, split.input, split.size, cfg.batch_size, ("schnell", "dev"), cfg.workers):
        for src, acc in zip(sources, scores, strict=True):
            acc.add(src.make(batch), batch.images["dev"], suite, cfg.grid_images)
    meta = {**suite.describe(), "split": "test", "split_rule": split.spec.describe(), "n_test": split.n_test}
    columns = metric_columns([np.concatenate(a.features) for a in scores], refs,
                             [np.concatenate(a.clip_iqa) for a in scores], [np.concatenate(a.lpips) for a in scores],
                             base, cfg.n_boot, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed,
                             clip=[np.concatenate(a.clip) for a in scores], clip_ref=refs["clip_dev"],
                             primary=cfg.primary, alpha=cfg.alpha)
    records = []
    for src, acc, cols in zip(sources, scores, columns, strict=True):
        rec = {"row": src.name, "kind": src.kind, "source": src.source, "n": sum(len(f) for f in acc.features),
               "n_reference": len(refs["schnell"]), **cols, "baseline": sources[base].name,
               "seconds_per_image": src.seconds_per_image(), **meta}
        records.append(rec)
        log.info("%s: FID_schnell %.3f FID_dev %.3f FID_diff %.3f CLIP-IQA %.3f LPIPS %.3f", src.name,
                 rec["fid_schnell"], rec["fid_dev"], rec["fid_diff"], rec["clip_iqa"], rec["lpips_dev"])
    grid = [(src.name.split(" (")[0], torch.cat(acc.grid)) for src, acc in zip(sources, scores, strict=True)]
    return pd.DataFrame.from_records(records), grid


def timing_head(heads: list[str], endpoint_url: str | None = None) -> Any:
    """The head the timing table uses: the ESA-CycleGAN when one is given (the paper's), else the first."""
    from facelift.models.heads import load_head, read_head_config

    names = [read_head_config(h, endpoint_url)[1].get("head") for h in heads]
    return load_head(heads[names.index("esa_cyclegan") if "esa_cyclegan" in names else 0], endpoint_url)
