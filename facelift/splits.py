"""Train / val / test splits, fixed when a dataset is built.

A pair's split follows from a hash of its ``pair_id`` alone: ``u = pair_hash(pair_id, salt)`` in [0, 1);
``u < test`` is test, ``u < test + val`` is val, the rest is train. The fractions and the salt are saved in
``dataset.json`` (key ``splits``) when the dataset is created and never change after: training reads only
train, model selection (early stopping, best checkpoint) only val, evaluation only test. A run records the
spec it trained with, and evaluation refuses a head whose spec differs from the dataset's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """A dataset without fixed splits, a split with too few pairs, or a run trained on other splits."""


def pair_hash(pair_id: str, salt: str = "split") -> float:
    """A stable number in [0, 1) for a pair id."""
    digest = hashlib.sha256(f"{salt}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SplitSpec(BaseModel):
    """The split rule of one dataset (``splits`` in the build config; saved in dataset.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    val: float = Field(0.05, ge=0, lt=1, description="fraction for model selection (early stopping, best ckpt)")
    test: float = Field(0.1, ge=0, lt=1, description="fraction held out for evaluation only")
    salt: str = Field("split", min_length=1)

    @model_validator(mode="after")
    def _leaves_train(self) -> SplitSpec:
        if self.val + self.test >= 1:
            raise ValueError(f"splits val {self.val} + test {self.test} leave no training pairs")
        return self

    def assign(self, pair_ids: Iterable[str]) -> np.ndarray:
        """The split name of every pair id (an array of "train" / "val" / "test")."""
        u = np.fromiter((pair_hash(p, self.salt) for p in pair_ids), dtype=np.float64)
        return np.where(u < self.test, "test", np.where(u < self.test + self.val, "val", "train"))

    def mask(self, pair_ids: Iterable[str], split: str) -> np.ndarray:
        if split not in SPLITS:
            raise SplitError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return self.assign(pair_ids) == split

    def counts(self, pair_ids: Iterable[str]) -> dict[str, int]:
        names, n = np.unique(self.assign(pair_ids), return_counts=True)
        return {s: int(dict(zip(names, n, strict=True)).get(s, 0)) for s in SPLITS}

    def describe(self) -> str:
        return f"train {1 - self.val - self.test:.3g} / val {self.val:.3g} / test {self.test:.3g} (salt {self.salt!r})"


def spec_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The rule's fields of a saved ``splits`` entry (which also holds the counts)."""
    return {k: v for k, v in raw.items() if k in ("val", "test", "salt")}


def spec_from_info(info: dict[str, Any], where: str) -> SplitSpec:
    """The dataset's fixed splits from its dataset.json; a clear error for a dataset built without them."""
    raw = info.get("splits")
    if not raw:
        raise SplitError(f"dataset at {where} has no fixed train/val/test splits in dataset.json (built before "
                         f"splits were recorded): rebuild it, or add \"splits\": {{\"val\": 0.05, \"test\": 0.1, "
                         f"\"salt\": \"split\"}} to its dataset.json if those are the fractions you want")
    return SplitSpec.model_validate(spec_fields(raw))


def check_same(run_spec: dict[str, Any] | None, dataset_spec: SplitSpec, what: str) -> None:
    """Refuse ``what`` (a run) when it was trained on splits other than the dataset's, naming the mismatch."""
    if not run_spec:
        raise SplitError(f"{what} records no train/val/test splits: it may have trained on the test split; "
                         f"retrain it on this dataset")
    run = SplitSpec.model_validate(spec_fields(run_spec))
    if run != dataset_spec:
        diff = ", ".join(f"{k} {getattr(run, k)!r} != {getattr(dataset_spec, k)!r}"
                         for k in ("val", "test", "salt") if getattr(run, k) != getattr(dataset_spec, k))
        raise SplitError(f"{what} was trained with other splits than the dataset's ({diff}): its training pairs "
                         f"may be in this test split")
