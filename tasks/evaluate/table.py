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

from facelift.tasks.evaluate.family import Family, p_value, simultaneous, verdict
from facelift.tasks.evaluate.joint import (
    KIDDraws,
    combine,
    fid_draws,
    fid_weights,
    kid_draws,
    kid_estimate,
    mean_t,
)
from facelift.tasks.evaluate.metrics import Estimate, SampleSizeError

log = logging.getLogger(__name__)

REFS = ("schnell", "dev")
BC_MIN_N_PER_DIM = 2  # the bias-corrected FID covers the population FID from N = 2·d on (docs/evaluate.md)
FID_AT_N = "FID at this N, not a ranking"


@dataclass(frozen=True)
class Comparison:
    """One paired column: its name, what it differences and whether higher is better."""

    key: str
    label: str
    higher_is_better: bool
    scale: float = 1.0  # shown × this (KID and CMMD ×10³)


COMPARISONS = (Comparison("d_kid_dev", "Δ KID_dev ×10³ ↓", False, 1e3),
               Comparison("d_cmmd_dev", "Δ CMMD_dev ×10³ ↓", False, 1e3),
               Comparison("d_fid_dev", "Δ FID_dev ↓", False), Comparison("d_fid_diff", "Δ FID_diff ↑", True),
               Comparison("d_clip_iqa", "Δ CLIP-IQA ↑", True), Comparison("d_lpips_dev", "Δ LPIPS→dev ↓", False))
PRIMARY = "d_kid_dev"  # the declared primary comparison (shown first); unbiased at any N


def ordered(primary: str = PRIMARY) -> tuple[Comparison, ...]:
    """The comparisons with ``primary`` first (a ValueError names the valid keys)."""
    keys = [c.key for c in COMPARISONS]
    if primary not in keys:
        raise ValueError(f"unknown primary comparison {primary!r}; valid: {', '.join(keys)}")
    return tuple(sorted(COMPARISONS, key=lambda c: c.key != primary))


def bias_corrected_valid(n: int, d: int) -> bool:
    return n >= BC_MIN_N_PER_DIM * d


def _fid(feats: Sequence[np.ndarray], refs: dict[str, np.ndarray], rounds: int, seed: int,
         baseline: int) -> list[dict[str, Any]]:
    """Every row's FIDs. Below N = 2·d the bias-corrected columns are NaN (``fid_bc_valid`` False) and the
    paired Δ FIDs estimate the difference of E[FID at N]: shown, but given no verdict (``d_fid_target``)."""
    d = int(np.shape(feats[0])[1])
    draws = fid_draws(feats, [refs[k] for k in REFS], rounds, seed, min_size=d)
    shape = (len(feats), len(REFS))
    population = bias_corrected_valid(draws.n, d)
    out = []
    for row in range(len(feats)):
        rec: dict[str, Any] = {"feature_dim": d, "fid_bc_valid": population}
        for key, ref in (("schnell", 0), ("dev", 1), ("diff", None)):
            at_n, bc = combine(draws, fid_weights(shape, row, ref), nonnegative=ref is not None)
            if not population:
                bc = Estimate(math.nan, math.nan, math.nan, draws.n, bc.method)
            rec.update(at_n.as_dict(f"fid_{key}") | bc.as_dict(f"fid_{key}_bc"))
            rec["fid_ci_method"] = at_n.method
            if row != baseline and key != "schnell":
                d_at_n, d_bc = combine(draws, fid_weights(shape, row, ref, baseline), nonnegative=False)
                rec[f"_est_d_fid_{key}"] = d_bc if population else d_at_n
        rec["d_fid_target"] = "population (bias-corrected)" if population else FID_AT_N
        out.append(rec)
    return out


def _mmd_columns(name: str, draws: KIDDraws | None, row: int, rows: int, flag: str) -> dict[str, Any]:
    if draws is None:
        nan = float("nan")
        return {name: nan, f"{name}_se": nan, f"{name}_subset_sd": nan, f"{name}_ci_low": nan,
                f"{name}_ci_high": nan, f"{name}_subset_size": 0, f"{name}_subsets": 0, f"{name}_df": nan,
                f"{name}_flag": flag}
    return {**kid_estimate(draws, np.eye(rows)[row]).as_dict(name), f"{name}_flag": ""}


def _mmds(feats: Sequence[np.ndarray], refs: dict[str, np.ndarray], clip: Sequence[np.ndarray] | None,
          clip_ref: np.ndarray | None, n_subsets: int, cap: int | None, seed: int,
          baseline: int) -> list[dict[str, Any]]:
    """KID_schnell, KID_dev (cubic kernel, Inception features) and CMMD_dev (RBF kernel, CLIP embeddings), each
    row on the same subsets, and the paired Δ KID_dev and Δ CMMD_dev."""
    sets = {f"kid_{ref}": (feats, refs[ref], "poly") for ref in REFS}
    if clip is not None and clip_ref is not None:
        sets["cmmd_dev"] = (clip, clip_ref, "rbf")
    draws: dict[str, KIDDraws | None] = {}
    flag = ""
    for name, (xs, y, kernel) in sets.items():
        try:
            draws[name] = kid_draws(xs, y, n_subsets, cap, seed, kernel=kernel)
        except SampleSizeError as exc:
            log.warning("%s not computed: %s", name, exc)
            draws[name], flag = None, str(exc)
    rows = len(feats)
    out = []
    for row in range(rows):
        rec: dict[str, Any] = {}
        for name in sets:
            rec.update(_mmd_columns(name, draws[name], row, rows, flag))
        for name in ("kid_dev", "cmmd_dev"):
            if row != baseline and draws.get(name) is not None:
                rec[f"_est_d_{name}"] = kid_estimate(draws[name], np.eye(rows)[row] - np.eye(rows)[baseline]).estimate()
        out.append(rec)
    return out


def _per_image(name: str, values: Sequence[np.ndarray], baseline: int) -> list[dict[str, Any]]:
    out = []
    for row, v in enumerate(values):
        rec: dict[str, Any] = mean_t(v).as_dict(name)
        if row != baseline:
            rec[f"_est_d_{name}"] = mean_t(np.asarray(v) - np.asarray(values[baseline]))
        out.append(rec)
    return out


def _judge(records: list[dict[str, Any]], baseline: int, primary: str, alpha: float) -> Family:
    """Replace each row's paired estimates by columns: the Δ, its simultaneous interval, its unadjusted p-value
    and a verdict. The family: every Δ that carries a verdict (all but the Δ FIDs below N = 2·d), every row."""
    comparisons = ordered(primary)

    def judged(rec: dict[str, Any], c: Comparison) -> bool:
        return f"_est_{c.key}" in rec and not (c.key.startswith("d_fid") and rec["d_fid_target"] == FID_AT_N)

    family = Family(sum(judged(r, c) for r in records for c in comparisons), alpha)
    for row, rec in enumerate(records):
        for c in comparisons:
            judge = judged(rec, c)
            est = rec.pop(f"_est_{c.key}", None)
            if est is None or row == baseline:
                rec.update({c.key: math.nan, f"{c.key}_ci_low": math.nan, f"{c.key}_ci_high": math.nan,
                            f"{c.key}_p": math.nan, f"{c.key}_verdict": ""})
                continue
            shown = simultaneous(est, family) if judge else est
            rec.update(shown.as_dict(c.key) | {f"{c.key}_p": p_value(est)})
            rec[f"{c.key}_verdict"] = verdict(shown.low, shown.high, c.higher_is_better) if judge else ""
        rec.update({"primary": primary, "family_size": family.size, "family_alpha": alpha,
                    "family_method": family.method})
    return family


def metric_columns(feats: Sequence[np.ndarray], refs: dict[str, np.ndarray], clip_iqa: Sequence[np.ndarray],
                   lpips: Sequence[np.ndarray], baseline: int, rounds: int = 20, kid_subsets: int = 100,
                   kid_cap: int | None = 1000, seed: int = 0, clip: Sequence[np.ndarray] | None = None,
                   clip_ref: np.ndarray | None = None, primary: str = PRIMARY,
                   alpha: float = 0.05) -> list[dict[str, Any]]:
    """Each row's metric columns (``feats[i]``, ``clip_iqa[i]``, ``lpips[i]``, ``clip[i]`` belong to row i, image
    j of every row made from input j) and its paired differences to row ``baseline`` with simultaneous intervals
    and verdicts at family-wise level ``1 − alpha`` (:mod:`.family`; NaN on the baseline). ``clip`` / ``clip_ref``
    (CLIP image embeddings of the rows and of the dev references) add CMMD."""
    ordered(primary)
    columns = [_fid(feats, refs, rounds, seed, baseline),
               _mmds(feats, refs, clip, clip_ref, kid_subsets, kid_cap, seed, baseline),
               _per_image("clip_iqa", clip_iqa, baseline), _per_image("lpips_dev", lpips, baseline)]
    out = []
    for row in range(len(feats)):
        rec: dict[str, Any] = {}
        for part in columns:
            rec.update(part[row])
        out.append(rec)
    _judge(out, baseline, primary, alpha)
    return out
