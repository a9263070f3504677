"""The evaluation table's numbers: every row's FIDs, KIDs, CLIP-IQA and LPIPS with 95% intervals, and each row
against the baseline row (paired differences with a verdict), all from one shared resampling.

One seed and one split for every row: the FIDs of all rows come from the same halves and quarters
(:func:`.joint.fid_draws`), the KIDs from the same subsets, CLIP-IQA and LPIPS differences are per image (the
rows share their input images). Columns: docs/evaluate.md, "Rows and columns".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facelift.tasks.evaluate.joint import (
    KIDDraws,
    combine,
    fid_draws,
    fid_weights,
    kid_draws,
    kid_estimate,
    mean_t,
    verdict,
)
from facelift.tasks.evaluate.metrics import Estimate, SampleSizeError

log = logging.getLogger(__name__)

REFS = ("schnell", "dev")
BC_MIN_N_PER_DIM = 2  # the bias-corrected FID covers the population FID from N = 2·d on (docs/evaluate.md)


@dataclass(frozen=True)
class Comparison:
    """One paired column: its name, what it differences and whether higher is better."""

    key: str
    label: str
    higher_is_better: bool


COMPARISONS = (Comparison("d_fid_dev", "Δ FID_dev ↓", False), Comparison("d_fid_diff", "Δ FID_diff ↑", True),
               Comparison("d_kid_dev", "Δ KID_dev ×10³ ↓", False), Comparison("d_clip_iqa", "Δ CLIP-IQA ↑", True),
               Comparison("d_lpips_dev", "Δ LPIPS→dev ↓", False))


def bias_corrected_valid(n: int, d: int) -> bool:
    return n >= BC_MIN_N_PER_DIM * d


def _fid(feats: Sequence[np.ndarray], refs: dict[str, np.ndarray], rounds: int, seed: int,
         baseline: int) -> list[dict[str, Any]]:
    draws = fid_draws(feats, [refs[k] for k in REFS], rounds, seed)
    shape = (len(feats), len(REFS))
    n, d = draws.n, int(np.shape(feats[0])[1])
    population = bias_corrected_valid(n, d)
    out = []
    for row in range(len(feats)):
        rec: dict[str, Any] = {"feature_dim": d}
        for key, ref in (("schnell", 0), ("dev", 1), ("diff", None)):
            at_n, bc = combine(draws, fid_weights(shape, row, ref), nonnegative=ref is not None)
            rec.update(at_n.as_dict(f"fid_{key}") | bc.as_dict(f"fid_{key}_bc"))
            rec["fid_ci_method"] = at_n.method
            if row != baseline and key != "schnell":
                d_at_n, d_bc = combine(draws, fid_weights(shape, row, ref, baseline), nonnegative=False)
                rec.update((d_bc if population else d_at_n).as_dict(f"d_fid_{key}"))
        rec["d_fid_target"] = "population (bias-corrected)" if population else "FID at this N"
        out.append(rec)
    return out


def _kid_columns(name: str, draws: KIDDraws | None, row: int, rows: int, flag: str) -> dict[str, Any]:
    if draws is None:
        nan = float("nan")
        return {name: nan, f"{name}_se": nan, f"{name}_subset_sd": nan, f"{name}_ci_low": nan,
                f"{name}_ci_high": nan, f"{name}_subset_size": 0, f"{name}_subsets": 0, f"{name}_flag": flag}
    return {**kid_estimate(draws, np.eye(rows)[row]).as_dict(name), f"{name}_flag": ""}


def _kids(feats: Sequence[np.ndarray], refs: dict[str, np.ndarray], n_subsets: int, cap: int | None, seed: int,
          baseline: int) -> list[dict[str, Any]]:
    draws: dict[str, KIDDraws | None] = {}
    flag = ""
    for ref in REFS:
        try:
            draws[ref] = kid_draws(feats, refs[ref], n_subsets, cap, seed)
        except SampleSizeError as exc:
            log.warning("kid_%s not computed: %s", ref, exc)
            draws[ref], flag = None, str(exc)
    rows = len(feats)
    out = []
    for row in range(rows):
        rec = {k: v for ref in REFS for k, v in _kid_columns(f"kid_{ref}", draws[ref], row, rows, flag).items()}
        dev = draws["dev"]
        if row != baseline and dev is not None:
            diff = kid_estimate(dev, np.eye(rows)[row] - np.eye(rows)[baseline])
            rec.update({"d_kid_dev": diff.value, "d_kid_dev_ci_low": diff.low, "d_kid_dev_ci_high": diff.high})
        out.append(rec)
    return out


def _per_image(name: str, values: Sequence[np.ndarray], baseline: int) -> list[dict[str, Any]]:
    out = []
    for row, v in enumerate(values):
        rec = mean_t(v).as_dict(name)
        if row != baseline:
            rec |= mean_t(np.asarray(v) - np.asarray(values[baseline])).as_dict(f"d_{name}")
        out.append(rec)
    return out


def metric_columns(feats: Sequence[np.ndarray], refs: dict[str, np.ndarray], clip_iqa: Sequence[np.ndarray],
                   lpips: Sequence[np.ndarray], baseline: int, rounds: int = 20, kid_subsets: int = 100,
                   kid_cap: int | None = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Each row's metric columns (``feats[i]``, ``clip_iqa[i]``, ``lpips[i]`` belong to row i, image j of every
    row made from input j) and its paired differences to row ``baseline`` with verdicts (NaN on the baseline)."""
    columns = [_fid(feats, refs, rounds, seed, baseline), _kids(feats, refs, kid_subsets, kid_cap, seed, baseline),
               _per_image("clip_iqa", clip_iqa, baseline), _per_image("lpips_dev", lpips, baseline)]
    out = []
    for row in range(len(feats)):
        rec: dict[str, Any] = {}
        for part in columns:
            rec.update(part[row])
        for c in COMPARISONS:
            est = Estimate(rec.get(c.key, math.nan), rec.get(f"{c.key}_ci_low", math.nan),
                           rec.get(f"{c.key}_ci_high", math.nan), 0)
            for suffix in ("", "_ci_low", "_ci_high"):
                rec.setdefault(f"{c.key}{suffix}", math.nan)
            rec[f"{c.key}_verdict"] = "" if row == baseline else verdict(est, c.higher_is_better)
        out.append(rec)
    return out
