"""Keep or drop each pair: a pure function of the stored statistics, the duplicate clusters and the thresholds.

``reasons`` lists every enforced filter a pair fails (in the order of :data:`REASONS`), ``flagged`` every
report-only one; a pair is kept when ``reasons`` is empty. A statistic that could not be computed (NaN: a
corrupt pair, no face to compare) fires no filter but its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from facelift.tasks.curate.config import REASON_NAMES, Thresholds

KEEP_COLUMNS = ["pair_id", "split", "keep", "reasons", "first_reason", "flagged"]


def _num(scores: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(scores[col], errors="coerce").to_numpy(dtype=float)


def reason_masks(scores: pd.DataFrame, dropped_duplicates: set[str], th: Thresholds) -> dict[str, np.ndarray]:
    """For each reason, which pairs fail it."""
    corrupt = scores["corrupt"].notna().to_numpy()
    diff = _num(scores, "mean_abs_diff")
    median = float(np.nanmedian(diff[~corrupt])) if (~corrupt).any() and not np.isnan(diff[~corrupt]).all() else 0.0
    faces = np.stack([_num(scores, "faces_schnell"), _num(scores, "faces_dev")])
    text = np.fmin(_num(scores, "clip_text_schnell"), _num(scores, "clip_text_dev"))
    with np.errstate(invalid="ignore"):
        return {
            "corrupt": corrupt,
            "no_change": ~corrupt & ((scores["bytes_equal"].fillna(False).to_numpy(dtype=bool))
                                     | (diff < th.no_change_ratio * median)),
            "scene_changed": _num(scores, "clip_image") < th.clip_image_min,
            "no_face": (faces == 0).any(axis=0),
            "multi_face": (faces > 1).any(axis=0),
            "identity_changed": _num(scores, "identity") < th.identity_min,
            "off_prompt": text < th.clip_text_min,
            "no_improvement": (_num(scores, "iqa_dev") - _num(scores, "iqa_schnell")) < th.iqa_gain_min,
            "near_duplicate": scores["pair_id"].isin(dropped_duplicates).to_numpy(),
        }


def decide(scores: pd.DataFrame, dropped_duplicates: set[str], th: Thresholds,
           enforced: frozenset[str]) -> pd.DataFrame:
    """One row per pair: ``KEEP_COLUMNS``. ``scores`` carries the statistics and ``split``."""
    return decide_masks(scores, reason_masks(scores, dropped_duplicates, th), enforced)


def decide_masks(scores: pd.DataFrame, masks: dict[str, np.ndarray], enforced: frozenset[str]) -> pd.DataFrame:
    """:func:`decide` from the reason masks already computed."""
    failed = [[r for r in REASON_NAMES if masks[r][i]] for i in range(len(scores))]
    reasons = [[r for r in f if r in enforced] for f in failed]
    return pd.DataFrame({
        "pair_id": scores["pair_id"].to_numpy(), "split": scores["split"].to_numpy(),
        "keep": [not r for r in reasons], "reasons": reasons,
        "first_reason": [r[0] if r else None for r in reasons],
        "flagged": [[r for r in f if r not in enforced] for f in failed],
    }, columns=KEEP_COLUMNS)


def reason_counts(keep: pd.DataFrame, masks: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per reason: pairs that fail it (dropped by any, if enforced), pairs it alone drops, and first-reason
    counts."""
    alone = keep["reasons"].map(lambda r: r[0] if len(r) == 1 else None)
    return pd.DataFrame([{"reason": r, "failing": int(masks[r].sum()),
                          "dropped_alone": int((alone == r).sum()),
                          "first_reason": int((keep["first_reason"] == r).sum())} for r in REASON_NAMES])
