"""Coverage of the evaluation's intervals over a grid of N/d, each tail checked, against targets computed
independently of the code under test (tests/stat_targets.py), with mutations the grid must reject.

Grid: d = 16 at N ∈ {d, 2d, 4d, 16d} and d = 64 at N ∈ {d, 2d}; near-match, separated and non-Gaussian
scenarios, 300 trials each; the production KID/CMMD subset size min(1000, N/2). d = 64 at 4d (13 CPU-minutes)
and 16d (~1 CPU-hour) are outside CI's budget: ``bench/eval_coverage.py --cells 64x4`` runs them, and
docs/evaluate.md records the result.

What a cell must show (the issue's per-tail bound, with the binomial noise of 300 trials accounted for):
- per scenario (300 trials): each tail misses <= 8% (a correct 2.5% tail exceeds that with probability 1e-5);
- pooled over the three scenarios (900 trials): each tail misses <= 4.5% (probability 7e-5 for a correct tail);
- at N >= 4·d: the pooled misses total >= 2.5% (not needlessly wide) and the median half-width is within 1/0.8 of
  an oracle's (1.96 × the estimate's true spread across trials): efficiency >= 0.8.
Mutations: the same intervals shifted by 0.5 SE, or scaled by 0.8 or 1.3, must fail these checks.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import stat_targets as T
from threadpoolctl import threadpool_limits

from facelift.tasks.evaluate.joint import CMMD_SIGMA
from facelift.tasks.evaluate.simulate import Intervals, Map, scenarios, simulate

TRIALS = 300
GRID = [(16, 1), (16, 2), (16, 4), (16, 16), (64, 1), (64, 2)]
CELL_TAIL, POOLED_TAIL, MIN_MISSES, EFFICIENCY = 0.08, 0.045, 0.025, 0.8
KID_SUBSETS = 50


@functools.cache
def cell(d: int, mult: int) -> list[dict[str, Intervals]]:
    """The three scenarios' intervals at (d, N = mult·d), with their targets (cached per test process)."""
    out = []
    with threadpool_limits(1):  # two test workers on two cores: no BLAS oversubscription
        for sc in scenarios(n=d * mult, d=d):
            res = simulate(sc, TRIALS, kid_subsets=KID_SUBSETS, score=T.score, seed=d * mult)
            for key, target in T.targets(sc).items():
                if key in res:
                    res[key].target = target
            out.append({k: v for k, v in res.items() if np.isfinite(v.target)})
    return out


def problems(cells: list[dict[str, Intervals]], mult: int, scale: float = 1.0, shift: float = 0.0) -> list[str]:
    """Every check the cell fails (empty when it passes)."""
    bad = []
    for res in cells:
        for key, iv in res.items():
            above, below = iv.misses(scale, shift)
            if max(above, below) > CELL_TAIL:
                bad.append(f"{key}: one scenario's intervals lie above the target in {100 * above:.1f}%, below it in "
                           f"{100 * below:.1f}%")
    for key in cells[0]:
        ivs = [res[key] for res in cells if key in res]
        above, below = np.mean([iv.misses(scale, shift) for iv in ivs], axis=0)
        if max(above, below) > POOLED_TAIL:
            bad.append(f"{key}: pooled, the intervals lie above the target in {100 * above:.1f}%, below it in "
                       f"{100 * below:.1f}%")
        if mult >= 4 and above + below < MIN_MISSES:
            bad.append(f"{key}: pooled misses {100 * (above + below):.1f}% in all (too wide)")
        if mult >= 4 and scale == 1.0 and shift == 0.0:
            eff = np.median([1.96 * np.std(iv.value) / np.median((np.asarray(iv.high) - np.asarray(iv.low)) / 2)
                             for iv in ivs])
            if eff < EFFICIENCY:
                bad.append(f"{key}: efficiency {eff:.2f} against an oracle interval")
    return bad


# Known failures, measured (bench/eval_coverage.py, docs/evaluate.md "Coverage against N/d"): the interval and the
# check it fails in that cell. Strict both ways: a listed check that passes fails the test, so the list cannot go
# stale. KID and CMMD: the t interval's misses fall on one side when the kernel values are heavy-tailed (the
# standard error is small exactly when the estimate is low); not fixed yet.
KNOWN: dict[tuple[int, int], set[str]] = {
    (16, 1): {"d_fid_diff: one scenario", "d_kid_dev: pooled tail"},  # 8.3% below (non-Gaussian); 4.9% above
    (16, 2): {"kid_dev: one scenario", "kid_dev: pooled tail", "cmmd_dev: pooled tail"},  # 10.0%, 5.8%, 4.8% below
    (16, 4): {"fid_dev: efficiency", "cmmd_dev: efficiency"},  # 0.70, 0.78
    (16, 16): {"fid_dev: efficiency", "fid_dev_bc: too wide"},  # 0.74; 2.0% misses in all (truncation at 0)
}


def _checks(found: list[str]) -> set[str]:
    """``interval: kind`` of each failed check (kind: one scenario / pooled / too wide / efficiency)."""
    kinds = (("one scenario", "one scenario"), ("pooled, the", "pooled tail"), ("too wide", "too wide"),
             ("efficiency", "efficiency"))
    return {f"{f.split(':')[0]}: {kind}" for f in found for marker, kind in kinds if marker in f}


@pytest.mark.slow
@pytest.mark.parametrize("d,mult", GRID, ids=[f"d{d}-N{d * m}" for d, m in GRID])
def test_coverage_grid_each_tail(d: int, mult: int) -> None:
    cells = cell(d, mult)
    found = problems(cells, mult)
    assert _checks(found) == KNOWN.get((d, mult), set()), found
    known = KNOWN.get((d, mult), set())
    for scale, shift in ((1.0, 0.5), (1.0, -0.5), (0.8, 0.0)):  # the grid sees a shifted or a narrow interval
        assert _checks(problems(cells, mult, scale, shift)) - known, (scale, shift)
    if mult >= 4:  # and a needlessly wide one
        assert _checks(problems(cells, mult, 1.3, 0.0)) - known


def test_independent_targets_agree_with_the_simulation() -> None:
    """The targets module's exact values match brute force on a large draw (so a shared formula bug in the
    evaluation could not hide behind them): population FID vs the plug-in FID of 200 000 draws, exact KID MMD² vs
    the unbiased statistic of 4 000 draws per side, exact CMMD vs the same."""
    from scipy.spatial.distance import cdist

    kernels = {"poly": lambda u, v: (u @ v.T / u.shape[1] + 1) ** 3,
               "rbf": lambda u, v: np.exp(-cdist(u, v, "sqeuclidean") / (2 * CMMD_SIGMA**2))}
    sc = scenarios(n=64, d=4)[1]
    rng = np.random.default_rng(0)
    head, dev = sc.rows["head_a"], sc.dev
    big = 200_000
    x, y = sc.inputs(rng, big), sc.inputs(rng, big)
    a, b = head.apply(x, rng.normal(size=x.shape)), dev.apply(y, rng.normal(size=y.shape))
    assert T.plug_in_fid(a, b) == pytest.approx(T.population_fid(sc, head, dev), rel=0.02)

    def unbiased(k: str, n: int = 4000) -> float:
        p, q = a[:n], b[:n]
        kxx, kyy, kxy = (kernels[k](u, v) for u, v in ((p, p), (q, q), (p, q)))
        return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) - 2 * kxy.mean()

    assert unbiased("poly") == pytest.approx(T.poly_mmd2(sc, head, dev), rel=0.1)
    assert unbiased("rbf") == pytest.approx(T.rbf_mmd2(sc, head, dev, CMMD_SIGMA), rel=0.1)
    skew = scenarios(n=64, d=4)[2]
    xs = skew.inputs(rng, big)
    third = np.einsum("ni,nj,nk->ijk", xs, xs, xs) / big
    assert third == pytest.approx(T.moments(skew, Map())[2], rel=0.1, abs=0.1)
