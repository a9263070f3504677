"""What curation decides with: thresholds (each with its anchor), the models that score, and the ids both make.

Scores depend only on the models (``scores_key``); decisions on the scores and the thresholds (``curation_id``),
so new thresholds are decided again from stored scores without running a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCORE_VERSION = 1  # bump when a statistic's definition changes: every dataset is scored again


@dataclass(frozen=True)
class Reason:
    name: str
    signal: str
    rule: str  # how the threshold is applied, for the docs and the table
    anchor: str
    threshold: str | None  # the Thresholds field, if any
    semantic: bool  # needs real (not random-weight) models to mean anything


REASONS: tuple[Reason, ...] = (
    Reason("corrupt", "PNG decode, sha256 against the shard's provenance", "fails", "-", None, False),
    Reason("no_change", "equal bytes, or mean |dev - schnell| below a share of the dataset's median",
           "< no_change_ratio x median", "the near-identity ratio heads use", "no_change_ratio", False),
    Reason("scene_changed", "CLIP image-image cosine, schnell vs dev", "< clip_image_min",
           "UltraEdit, InstructPix2Pix (0.75)", "clip_image_min", True),
    Reason("no_face", "face count in either image (DeepFace detector)", "= 0", "Data-Juicer face count", None, True),
    Reason("multi_face", "face count in either image (DeepFace detector)", "> 1", "Data-Juicer face count", None,
           True),
    Reason("identity_changed", "ArcFace cosine, schnell vs dev, largest face", "< identity_min",
           "DeepFace's ArcFace threshold (distance 0.68)", "identity_min", True),
    Reason("off_prompt", "CLIP text-image cosine, the lower of the two images", "< clip_text_min",
           "InstructPix2Pix, UltraEdit (0.2)", "clip_text_min", True),
    Reason("no_improvement", "CLIP-IQA(dev) - CLIP-IQA(schnell)", "< iqa_gain_min", "none: ours", "iqa_gain_min",
           True),
    Reason("near_duplicate", "schnell pHash Hamming distance, or CLIP image cosine, across the dataset",
           "<= phash_max or >= dup_clip_min: all but one of a cluster", "imagededup, fastdup", None, False),
)
REASON_NAMES: tuple[str, ...] = tuple(r.name for r in REASONS)
SEMANTIC: frozenset[str] = frozenset(r.name for r in REASONS if r.semantic)


class Thresholds(BaseModel):
    """The decision thresholds (docs/curate.md gives each one's anchor)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    no_change_ratio: float = Field(0.1, ge=0, description="no_change below this share of the median |dev-schnell|")
    clip_image_min: float = Field(0.75, ge=-1, le=1)
    identity_min: float = Field(0.32, ge=-1, le=1)
    clip_text_min: float = Field(0.2, ge=-1, le=1)
    iqa_gain_min: float = Field(0.0, ge=-1, le=1)
    phash_max: int = Field(5, ge=0, le=64)
    dup_clip_min: float = Field(0.96, ge=-1, le=1.0001)

    def scaled(self, factor: float) -> Thresholds:
        """Every threshold times ``factor`` (the sensitivity table's x0.9 and x1.1)."""
        values = {k: v * factor for k, v in self.model_dump().items()}
        return Thresholds(**{**values, "phash_max": min(64, round(values["phash_max"])),
                             "dup_clip_min": min(1.0001, values["dup_clip_min"])})


class CurateConfig(BaseModel):
    """Everything a curation run depends on. ``report_only`` reasons are computed and shown but drop nothing;
    ``None``: the semantic filters report only on a tiny-profile dataset (random-weight models, faceless
    pictures), and every filter decides on a real one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_model: str = Field("openai/clip-vit-large-patch14", description="CLIP for image-image, text-image, dedup")
    iqa_model: str = Field("openai/clip-vit-base-patch16", description="CLIP-IQA's CLIP (the evaluation's)")
    detector: str = Field("retinaface", description="DeepFace detector backend (opencv offline)")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    report_only: tuple[str, ...] | None = None
    min_kept_fraction: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _known_reasons(self) -> CurateConfig:
        unknown = sorted(set(self.report_only or ()) - set(REASON_NAMES))
        if unknown:
            raise ValueError(f"report_only: unknown reasons {unknown}; valid: {', '.join(REASON_NAMES)}")
        return self

    def enforced(self, tiny: bool) -> frozenset[str]:
        """The reasons that drop pairs, for a dataset of the tiny profile or not."""
        report = set(self.report_only) if self.report_only is not None else (SEMANTIC if tiny else set())
        return frozenset(REASON_NAMES) - report


def _digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def scores_key(models: dict[str, str]) -> str:
    """The scores' folder key: the models that made them (names and weight hashes) and the score version."""
    return _digest({"models": models, "version": SCORE_VERSION})


def curation_id(dataset: str, scores: str, cfg: CurateConfig, enforced: frozenset[str]) -> str:
    """The decision's id: the build it curates (``done.dataset_identity``), the scores it reads and every setting
    that changes a decision."""
    return "c-" + _digest({"dataset": dataset, "scores": scores, "thresholds": cfg.thresholds.model_dump(),
                           "enforced": sorted(enforced), "min_kept": cfg.min_kept_fraction})
