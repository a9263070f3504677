"""Verdicts with family-wise error control: every paired comparison that carries a verdict (rows × metrics) is
one family, and its intervals hold simultaneously at the family's level.

Each comparison is an :class:`~facelift.tasks.evaluate.metrics.Estimate` with a standard error and t degrees of
freedom. For a family of ``m`` comparisons at level ``1 − α``, each interval is the t interval at ``1 − α/m``
(Bonferroni): the chance that any interval of the family misses its target is at most α, whatever the
dependence between rows and metrics (the joint resampling makes them strongly dependent, which Bonferroni only
makes conservative). A verdict reads from its simultaneous interval: ``better`` / ``worse`` when it excludes 0
(by the metric's direction), else ``inconclusive``, so the chance of any false ``better`` or ``worse`` in the
whole table is at most α. "Inconclusive" is not "equivalent": it means the interval includes 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from facelift.tasks.evaluate.metrics import Estimate

VERDICTS = ("better", "worse", "inconclusive")
METHOD = "Bonferroni (simultaneous t intervals)"


@dataclass(frozen=True)
class Family:
    """``size`` comparisons whose intervals hold together at ``1 − alpha``."""

    size: int
    alpha: float = 0.05
    method: str = METHOD

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    @property
    def per_comparison(self) -> float:
        """Each interval's own miss rate (two-sided)."""
        return self.alpha / max(1, self.size)

    def describe(self) -> str:
        return (f"{self.size} comparison{'s' * (self.size != 1)}, family-wise {100 * (1 - self.alpha):g}% "
                f"({self.method}; each interval at {100 * (1 - self.per_comparison):.3g}%)")


def t_interval(est: Estimate, miss: float) -> tuple[float, float]:
    """``value ± t(1 − miss/2, df)·se`` (NaN without a finite standard error)."""
    if not (math.isfinite(est.se) and math.isfinite(est.value)):
        return math.nan, math.nan
    half = float(stats.t.ppf(1 - miss / 2, est.df)) * est.se
    return est.value - half, est.value + half


def p_value(est: Estimate) -> float:
    """Two-sided p-value of ``value = 0`` on the estimate's t distribution (unadjusted)."""
    if not (math.isfinite(est.se) and math.isfinite(est.value)):
        return math.nan
    if est.se == 0:
        return 1.0 if est.value == 0 else 0.0
    return float(2 * stats.t.sf(abs(est.value) / est.se, est.df))


def verdict(low: float, high: float, higher_is_better: bool) -> str:
    """better / worse / inconclusive: whether the interval excludes 0, and on which side ("" without one)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    if low > 0 or high < 0:
        return VERDICTS[0] if (low > 0) == higher_is_better else VERDICTS[1]
    return VERDICTS[2]


def simultaneous(est: Estimate, family: Family) -> Estimate:
    """The estimate with its interval widened to the family's per-comparison level."""
    low, high = t_interval(est, family.per_comparison)
    return Estimate(est.value, low, high, est.n, f"{est.method}; {family.method}".strip("; "), est.se, est.df)
