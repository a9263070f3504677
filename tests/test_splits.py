"""Train / val / test splits fixed at build time (facelift.splits)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from facelift.splits import SplitError, SplitSpec, check_same, spec_from_info

IDS = [f"enriched-nm{i:07d}" for i in range(20_000)]


def test_assignment_is_a_pure_function_of_pair_id_with_the_configured_fractions():
    spec = SplitSpec(val=0.05, test=0.1)
    split = spec.assign(IDS)
    assert (split == spec.assign(list(reversed(IDS)))[::-1]).all()  # order does not matter
    shares = {s: float(np.mean(split == s)) for s in ("train", "val", "test")}
    # binomial sd at n=20k is <= 0.0035: 4 sd
    assert abs(shares["test"] - 0.1) < 0.014 and abs(shares["val"] - 0.05) < 0.01
    assert spec.counts(IDS) == {s: int((split == s).sum()) for s in ("train", "val", "test")}
    other_salt = SplitSpec(val=0.05, test=0.1, salt="other").assign(IDS)
    assert (other_salt != split).mean() > 0.1


def test_growing_val_never_moves_a_test_pair():
    small, large = SplitSpec(val=0.05, test=0.1).assign(IDS), SplitSpec(val=0.2, test=0.1).assign(IDS)
    assert ((small == "test") == (large == "test")).all()


def test_bad_fractions_and_missing_specs_are_clear_errors():
    with pytest.raises(ValidationError, match="leave no training pairs"):
        SplitSpec(val=0.5, test=0.5)
    with pytest.raises(SplitError, match="no fixed train/val/test splits"):
        spec_from_info({"dataset_id": "old"}, "s3://b/datasets/old")


def test_runs_trained_on_other_splits_are_refused_naming_the_mismatch():
    spec = SplitSpec(val=0.05, test=0.1)
    check_same({"val": 0.05, "test": 0.1, "salt": "split", "counts": {}}, spec, "run r1")
    with pytest.raises(SplitError, match=r"run r2 was trained with other splits.*test 0.2 != 0.1"):
        check_same({"val": 0.05, "test": 0.2, "salt": "split"}, spec, "run r2")
    with pytest.raises(SplitError, match="run r3 records no train/val/test splits"):
        check_same(None, spec, "run r3")
