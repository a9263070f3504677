"""Simulated evaluation tables with a known answer, for the coverage tests and the worked example in
docs/evaluate.md (``bench/eval_paired.py``).

A scenario mirrors the evaluation: inputs x (the schnell images' features) and an independent reference set
of the same distribution; dev is a map of its schnell image (``dev(x)``, so the two reference sets are paired);
each row is a map of the same inputs (schnell: x, dev: dev(x), a head: its own map). Maps are affine plus
Gaussian noise, so each row's mean and covariance (hence the population FID) are exact; x is Gaussian or a
mixed, centred chi-square (non-Gaussian). The population KID comes from moment tensors of a large draw
with common random numbers (exactly 0 between equal distributions).
"""

from __future__ import annotations

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

    def true_kid(self, draws: int = 400_000, chunk: int = 50_000) -> dict[tuple[str, str], float]:
        """Population MMD² of ``(xᵀy/d + 1)³`` for every (row, reference): Σ_k C(3,k)/d^k·|E x^⊗k − E y^⊗k|²."""
        rng = np.random.default_rng(7 + self.seed)
        maps = {**{("row", k): m for k, m in self.rows.items()}, ("ref", "schnell"): Map(), ("ref", "dev"): self.dev}
        sums = {k: [np.zeros(self.d), np.zeros(self.d**2), np.zeros(self.d**3)] for k in maps}
        for _ in range(draws // chunk):
            x, eps = self.inputs(rng, chunk), rng.normal(size=(chunk, self.d))
            for k, m in maps.items():
                f = m.apply(x, eps)
                f2 = (f[:, :, None] * f[:, None, :]).reshape(chunk, -1)
                sums[k][0] += f.sum(0)
                sums[k][1] += f2.sum(0)
                sums[k][2] += (f2.T @ f).ravel()
        mom = {k: [s / (draws // chunk * chunk) for s in v] for k, v in sums.items()}
        out = {}
        for row in self.rows:
            for ref in ("schnell", "dev"):
                p, q = mom[("row", row)], mom[("ref", ref)]
                out[(row, ref)] = float(sum((3 if k < 3 else 1) * ((p[k - 1] - q[k - 1]) ** 2).sum() / self.d**k
                                            for k in (1, 2, 3)))
        return out


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


# -- coverage -------------------------------------------------------------------------------------
ROWS = ("schnell", "dev", "head_a", "head_b")
REFS = ("schnell", "dev")


@dataclass
class Intervals:
    """Per trial: the estimate, its interval and the target it should cover."""

    value: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    target: float = float("nan")

    def add(self, est: object) -> None:
        self.value.append(est.value)  # type: ignore[attr-defined]
        self.low.append(est.low)  # type: ignore[attr-defined]
        self.high.append(est.high)  # type: ignore[attr-defined]

    def coverage(self, scale: float = 1.0) -> float:
        """Share of trials whose interval (its half-widths × ``scale`` around the estimate) holds the target."""
        v, lo, hi = (np.asarray(a, np.float64) for a in (self.value, self.low, self.high))
        lo, hi = v - scale * (v - lo), v + scale * (hi - v)
        return float(np.mean((lo <= self.target) & (self.target <= hi)))


def fid_at_n(sc: Scenario, reps: int, seed: int = 99) -> np.ndarray:
    """E[plug-in FID at N], [row, ref], by Monte Carlo."""
    from facelift.tasks.evaluate.joint import _fid_grid

    rng = np.random.default_rng(seed)
    total = np.zeros((len(ROWS), len(REFS)))
    for _ in range(reps):
        rows, refs = sc.draw(rng)
        total += _fid_grid([rows[k] for k in ROWS], [refs[k] for k in REFS])
    return total / reps


def simulate(sc: Scenario, trials: int, rounds: int = 20, kid_subsets: int = 50, kid_cap: int = 64, mc_reps: int = 600,
             seed: int = 0) -> dict[str, Intervals]:
    """``trials`` simulated tables: every interval the table reports for head_a (and head_a vs the schnell row,
    and vs head_b), with its target (FID at N: E[plug-in FID at N]; bias-corrected FID and KID: the population
    value; paired differences: the difference of the rows' targets)."""
    from facelift.tasks.evaluate.joint import combine, fid_draws, fid_weights, kid_draws, kid_estimate

    at_n = fid_at_n(sc, mc_reps)
    kid_true = sc.true_kid()
    truth = np.array([[sc.true_fid(r, k) for k in REFS] for r in ROWS])
    a, s, b = ROWS.index("head_a"), ROWS.index("schnell"), ROWS.index("head_b")
    shape = (len(ROWS), len(REFS))
    fids = {"fid_dev": (a, 1, None), "fid_diff": (a, None, None), "d_fid_dev": (a, 1, s),
            "d_fid_diff": (a, None, s), "d_fid_dev_heads": (a, 1, b)}
    weights = {key: fid_weights(shape, row, ref, base) for key, (row, ref, base) in fids.items()}
    out: dict[str, Intervals] = {}
    for key, w in weights.items():
        out[key] = Intervals(target=float((at_n * w).sum()))
        out[f"{key}_bc"] = Intervals(target=float((truth * w).sum()))
    out["kid_dev"] = Intervals(target=kid_true[("head_a", "dev")])
    out["d_kid_dev"] = Intervals(target=kid_true[("head_a", "dev")] - kid_true[("schnell", "dev")])
    out["d_kid_dev_heads"] = Intervals(target=kid_true[("head_a", "dev")] - kid_true[("head_b", "dev")])
    out["fid_dev_b"] = Intervals(target=float(at_n[b, 1]))
    one = np.eye(len(ROWS))
    kid_weights = {"kid_dev": one[a], "d_kid_dev": one[a] - one[s], "d_kid_dev_heads": one[a] - one[b]}
    rng = np.random.default_rng(seed)
    for t in range(trials):
        rows, refs = sc.draw(rng)
        draws = fid_draws([rows[k] for k in ROWS], [refs[k] for k in REFS], rounds, seed=t)
        for key, (_, ref, base) in fids.items():
            est, bc = combine(draws, weights[key], nonnegative=base is None and ref is not None)
            out[key].add(est)
            out[f"{key}_bc"].add(bc)
        out["fid_dev_b"].add(combine(draws, fid_weights(shape, b, 1))[0])
        kd = kid_draws([rows[k] for k in ROWS], refs["dev"], kid_subsets, kid_cap, seed=t)
        for key, w in kid_weights.items():
            out[key].add(kid_estimate(kd, w))
    return out
