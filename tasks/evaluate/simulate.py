"""Simulated evaluation tables with a known answer, for the coverage tests and the worked example in
docs/evaluate.md (``bench/eval_paired.py``).

A scenario mirrors the evaluation: inputs x (the schnell images' features) and an independent reference set
of the same distribution; dev is a map of its schnell image (``dev(x)``, so the two reference sets are paired);
each row is a map of the same inputs (schnell: x, dev: dev(x), a head: its own map). Maps are affine plus
Gaussian noise, so each row's mean and covariance (hence the population FID) are exact; x is Gaussian or a
mixed, centred chi-square (non-Gaussian). The coverage tests compute every target independently of the
evaluation's code (tests/stat_targets.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from facelift.tasks.evaluate.metrics import frechet_distance


@dataclass(frozen=True)
class Map:
    """``x ↦ scale·(x + shift) + noise·ε`` (ε standard normal, per image)."""

    scale: float = 1.0
    shift: float = 0.0
    noise: float = 0.0

    def apply(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        return self.scale * (x + self.shift) + self.noise * eps


@dataclass(frozen=True)
class Scenario:
    """Rows (name -> map of the inputs) against the schnell references and their dev maps."""

    name: str
    d: int
    n: int
    rows: dict[str, Map]
    dev: Map
    gaussian: bool = True
    seed: int = 0
    mixing: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(1000 + self.seed)
        a = rng.normal(size=(self.d, self.d)) / np.sqrt(self.d)
        object.__setattr__(self, "mixing", np.linalg.cholesky(np.eye(self.d) + 0.5 * a @ a.T))

    def inputs(self, rng: np.random.Generator, n: int) -> np.ndarray:
        z = rng.normal(size=(n, self.d))
        if not self.gaussian:
            z = (z**2 - 1) / np.sqrt(2)  # mean 0, variance 1, skewed
        return z @ self.mixing.T

    def draw(self, rng: np.random.Generator, n: int | None = None) -> tuple[dict[str, np.ndarray],
                                                                            dict[str, np.ndarray]]:
        """One table's features: (rows, {"schnell": refs, "dev": their dev maps})."""
        n = n or self.n
        x, y = self.inputs(rng, n), self.inputs(rng, n)
        rows = {k: m.apply(x, rng.normal(size=x.shape)) for k, m in self.rows.items()}
        return rows, {"schnell": y, "dev": self.dev.apply(y, rng.normal(size=y.shape))}

    def moments(self, m: Map) -> tuple[np.ndarray, np.ndarray]:
        cov = self.mixing @ self.mixing.T
        return np.full(self.d, m.scale * m.shift), m.scale**2 * cov + m.noise**2 * np.eye(self.d)

    def true_fid(self, row: str, ref: str) -> float:
        refs = {"schnell": Map(), "dev": self.dev}
        return max(0.0, frechet_distance(*self.moments(self.rows[row]), *self.moments(refs[ref])))


def scenarios(n: int = 256, d: int = 8) -> list[Scenario]:
    """The three coverage scenarios: near match, clearly separated, non-Gaussian features."""
    near = Scenario("near match", d, n, {"schnell": Map(), "dev": Map(1.05, 0.05, 0.1),
                                         "head_a": Map(1.03, 0.04, 0.12), "head_b": Map(1.0, 0.02, 0.1)},
                    dev=Map(1.05, 0.05, 0.1), seed=1)
    separated = Scenario("separated", d, n, {"schnell": Map(), "dev": Map(1.5, 0.6, 0.3),
                                             "head_a": Map(1.3, 0.45, 0.3), "head_b": Map(1.35, 0.5, 0.3)},
                         dev=Map(1.5, 0.6, 0.3), seed=2)
    skewed = Scenario("non-Gaussian", d, n, {"schnell": Map(), "dev": Map(1.3, 0.4, 0.2),
                                             "head_a": Map(1.2, 0.3, 0.2), "head_b": Map(1.25, 0.35, 0.2)},
                      dev=Map(1.3, 0.4, 0.2), gaussian=False, seed=3)
    return [near, separated, skewed]


# -- coverage ---------------------------------------------------------------------------------------
ROWS = ("schnell", "dev", "head_a", "head_b")
REFS = ("schnell", "dev")


@dataclass
class Intervals:
    """Per trial: the estimate, its interval, standard error and degrees of freedom; the target it should cover
    is set by the caller (the tests compute it independently of this code)."""

    value: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    se: list[float] = field(default_factory=list)
    target: float = float("nan")

    def add(self, est: object) -> None:
        for name in ("value", "low", "high", "se"):
            getattr(self, name).append(getattr(est, name))

    def bounds(self, scale: float = 1.0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The intervals with each side's distance to the estimate × ``scale``, moved by ``shift`` × SE
        (mutations the coverage grid must reject)."""
        v, lo, hi, se = (np.asarray(a, np.float64) for a in (self.value, self.low, self.high, self.se))
        return v - scale * (v - lo) + shift * se, v + scale * (hi - v) + shift * se

    def misses(self, scale: float = 1.0, shift: float = 0.0) -> tuple[float, float]:
        """(share of trials whose interval lies above the target, share below it)."""
        lo, hi = self.bounds(scale, shift)
        return float(np.mean(lo > self.target)), float(np.mean(hi < self.target))

    def coverage(self, scale: float = 1.0, shift: float = 0.0) -> float:
        return 1 - sum(self.misses(scale, shift))


def simulate(sc: Scenario, trials: int, rows: tuple[str, ...] = ("schnell", "head_a"), rounds: int = 20,
             kid_subsets: int = 100, kid_cap: int | None = 1000, seed: int = 0,
             score: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Intervals]:
    """``trials`` simulated tables of ``rows`` (the first is the baseline; the second is judged): every interval
    the table computes for it, through the table's own functions (FIDs from :func:`.joint.fid_draws` with subsets of
    at least d images, KID and CMMD from :func:`.joint.kid_draws`, ``score``'s per-image mean from
    :func:`.joint.mean_t`). Keys: ``fid_dev``, ``fid_diff`` (at N), their ``_bc`` forms (N >= 2·d), ``kid_dev``,
    ``cmmd_dev``, ``score``, ``d_<key>`` for the paired Δ with the baseline, and ``base_fid_dev`` (the baseline's
    own). Targets are left NaN."""
    from facelift.tasks.evaluate.joint import combine, fid_draws, fid_weights, kid_draws, kid_estimate, mean_t

    shape, one = (len(rows), len(REFS)), np.eye(len(rows))
    fids = {"fid_dev": fid_weights(shape, 1, 1), "fid_diff": fid_weights(shape, 1, None),
            "base_fid_dev": fid_weights(shape, 0, 1),
            "d_fid_dev": fid_weights(shape, 1, 1, 0), "d_fid_diff": fid_weights(shape, 1, None, 0)}
    population = sc.n >= 2 * sc.d
    out: dict[str, Intervals] = {}
    rng = np.random.default_rng(seed)
    for t in range(trials):
        feats, refs = sc.draw(rng)
        xs = [feats[k] for k in rows]
        draws = fid_draws(xs, [refs[k] for k in REFS], rounds, seed=t, min_size=sc.d)
        for key, w in fids.items():
            at_n, bc = combine(draws, w, nonnegative=key.endswith("fid_dev") and not key.startswith("d_"))
            out.setdefault(key, Intervals()).add(at_n)
            if population:
                out.setdefault(f"{key}_bc", Intervals()).add(bc)
        for name, kernel in (("kid_dev", "poly"), ("cmmd_dev", "rbf")):
            kd = kid_draws(xs, refs["dev"], kid_subsets, kid_cap, seed=t, kernel=kernel)
            out.setdefault(name, Intervals()).add(kid_estimate(kd, one[1]))
            out.setdefault(f"d_{name}", Intervals()).add(kid_estimate(kd, one[1] - one[0]))
        if score is not None:
            s = [score(x) for x in xs]
            out.setdefault("score", Intervals()).add(mean_t(s[1]))
            out.setdefault("d_score", Intervals()).add(mean_t(s[1] - s[0]))
    return out
