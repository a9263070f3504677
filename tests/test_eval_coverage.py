"""Intervals of the evaluation table on simulated tables with a known answer (``tasks.evaluate.simulate``,
targets from tests/stat_targets.py): a quick calibration check for ``make test`` and the paired comparison's
power. The full grid over N/d, each tail checked, with mutations: tests/test_eval_grid.py."""

from __future__ import annotations

import numpy as np
import pytest
import stat_targets as T
from scipy import stats
from threadpoolctl import threadpool_limits

from facelift.tasks.evaluate.simulate import Intervals, scenarios, simulate


def _with_targets(sc, res: dict[str, Intervals], **kw) -> dict[str, Intervals]:
    for key, target in T.targets(sc, **kw).items():
        if key in res:
            res[key].target = target
    return {k: v for k, v in res.items() if np.isfinite(v.target)}


def _overlap(a: Intervals, b: Intervals) -> np.ndarray:
    return (np.asarray(a.low) <= np.asarray(b.high)) & (np.asarray(b.low) <= np.asarray(a.high))


def _excludes_zero(iv: Intervals) -> np.ndarray:
    return (np.asarray(iv.low) > 0) | (np.asarray(iv.high) < 0)


@pytest.mark.slow
def test_paired_difference_detects_what_the_rows_own_intervals_cannot() -> None:
    """Separated scenario, N = 256 = 32·d: head_a and head_b differ by a known FID_dev and KID_dev. Their own
    bias-corrected intervals overlap in most trials; in those, the paired Δ excludes 0 with the right sign in most."""
    sc = scenarios()[1]
    with threadpool_limits(1):
        res = _with_targets(sc, simulate(sc, 150, rows=("head_b", "head_a")), base="head_b", reps=100,
                            score_draws=500_000)
    overlap = _overlap(res["fid_dev_bc"], res["base_fid_dev_bc"])
    assert overlap.mean() > 0.5, overlap.mean()
    delta = res["d_fid_dev_bc"]
    assert delta.target > 0
    found = _excludes_zero(delta) & (np.asarray(delta.value) > 0)
    assert found[overlap].mean() > 0.6, found[overlap].mean()


def test_intervals_are_calibrated_quick() -> None:
    """The fast sanity version (make test): 60 trials of a separated table (d = 8, N = 128). Every interval covers
    in >= 85% (a 95% interval does so with probability 0.99 at 60 trials), its median half-width is within a
    factor 2 of 1.96 × the estimate's spread across trials (not infinite, not degenerate), and the half-width
    control fails."""
    sc = scenarios(n=128)[1]
    with threadpool_limits(1):
        res = _with_targets(sc, simulate(sc, 60, kid_subsets=30, score=T.score), reps=200, score_draws=500_000)
    assert stats.binom.sf(int(0.85 * 60) - 1, 60, 0.95) > 0.99
    assert {"fid_dev", "fid_dev_bc", "d_fid_dev_bc", "kid_dev", "d_kid_dev", "cmmd_dev", "d_cmmd_dev",
            "d_score"} <= set(res)
    for name, iv in res.items():
        v, lo, hi = (np.asarray(a) for a in (iv.value, iv.low, iv.high))
        ratio = float(np.median((hi - lo) / 2) / (1.96 * v.std(ddof=1)))
        assert 0.5 < ratio < 2.0, (name, ratio)
        assert iv.coverage() >= 0.85, (name, iv.coverage())
        assert iv.coverage(scale=0.5) < 0.85 or iv.coverage(scale=0.25) < 0.85, name
