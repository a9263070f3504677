"""Targets for the evaluation's coverage tests, computed independently of the code under test.

The scenarios (``tasks.evaluate.simulate``) draw features ``x = s·(A z + shift) + σ ε`` with ``z`` i.i.d. of mean 0,
variance 1 and third moment κ (0 Gaussian, 2√2 for the centred chi-square), ε standard normal. Here, from those
maps alone (none of the evaluation's functions):
- population FID: scipy ``sqrtm`` on the analytic means and covariances;
- E[FID at N]: a plain loop of plug-in FIDs (numpy ``cov`` + scipy ``sqrtm``) on fresh draws;
- KID's population MMD² (kernel ``(xᵀy/d + 1)³``): exact, from the analytic first three moment tensors;
- CMMD's population MMD² (RBF, σ): exact for Gaussian features (a Gaussian integral);
- a per-image score's population mean: a large Monte Carlo draw (4·10⁶ images).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

SKEW = 2 * np.sqrt(2)  # E[z³] of (g² − 1)/√2, g standard normal


def moments(sc, m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, covariance and third central moment tensor of ``m`` applied to the scenario's inputs."""
    a = sc.mixing
    mu = np.full(sc.d, m.scale * m.shift)
    cov = m.scale**2 * a @ a.T + m.noise**2 * np.eye(sc.d)
    kappa = 0.0 if sc.gaussian else SKEW
    c3 = m.scale**3 * kappa * np.einsum("ik,jk,lk->ijl", a, a, a)
    return mu, cov, c3


def population_fid(sc, m1, m2) -> float:
    mu1, s1, _ = moments(sc, m1)
    mu2, s2, _ = moments(sc, m2)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def plug_in_fid(a: np.ndarray, b: np.ndarray) -> float:
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def expected_fids(sc, n: int, rows: dict[str, str], reps: int, seed: int = 12345) -> dict[tuple[str, str], float]:
    """E[plug-in FID at N] of each row (alias -> the scenario's row name; maps of the same inputs) to the schnell
    and dev reference sets, keyed (alias, reference)."""
    rng = np.random.default_rng(seed)
    total: dict[tuple[str, str], float] = {}
    for _ in range(reps):
        feats, refs = sc.draw(rng, n)
        for alias, r in rows.items():
            for k, y in refs.items():
                total[(alias, k)] = total.get((alias, k), 0.0) + plug_in_fid(feats[r], y)
    return {k: v / reps for k, v in total.items()}


def _raw_moments(sc, m) -> list[np.ndarray]:
    mu, cov, c3 = moments(sc, m)
    m2 = cov + np.outer(mu, mu)
    sym = np.einsum("i,jk->ijk", mu, cov)
    m3 = c3 + sym + sym.transpose(1, 0, 2) + sym.transpose(1, 2, 0) + np.einsum("i,j,k->ijk", mu, mu, mu)
    return [mu, m2, m3]


def poly_mmd2(sc, m1, m2) -> float:
    """Exact MMD² of ``(xᵀy/d + 1)³``: Σ_k C(3, k)/d^k·|E x^⊗k − E y^⊗k|² (the k = 0 terms cancel)."""
    p, q = _raw_moments(sc, m1), _raw_moments(sc, m2)
    return float(sum(c * ((p[k] - q[k]) ** 2).sum() / sc.d ** (k + 1) for k, c in enumerate((3, 3, 1))))


def _rbf_mean(delta: np.ndarray, cov: np.ndarray, sigma: float) -> float:
    """E exp(−|u|²/(2σ²)) for u ~ N(delta, cov)."""
    d = len(delta)
    det = np.linalg.slogdet(np.eye(d) + cov / sigma**2)[1]
    quad = delta @ np.linalg.solve(cov + sigma**2 * np.eye(d), delta)
    return float(np.exp(-0.5 * det - 0.5 * quad))


def rbf_mmd2(sc, m1, m2, sigma: float) -> float:
    """Exact MMD² of ``exp(−|x − y|²/(2σ²))`` between two Gaussian feature distributions."""
    assert sc.gaussian, "the RBF MMD² is exact for Gaussian features only"
    mu1, s1, _ = moments(sc, m1)
    mu2, s2, _ = moments(sc, m2)
    zero = np.zeros(sc.d)
    return _rbf_mean(zero, 2 * s1, sigma) + _rbf_mean(zero, 2 * s2, sigma) - 2 * _rbf_mean(mu1 - mu2, s1 + s2, sigma)


def score(f: np.ndarray) -> np.ndarray:
    """A per-image score (CLIP-IQA's stand-in): bounded, non-linear in the features."""
    return np.tanh(f[:, 0] / 2) + 0.25 * np.tanh(f[:, 1])


def score_mean(sc, m, draws: int = 4_000_000, seed: int = 4321) -> float:
    rng = np.random.default_rng(seed)
    total, chunk = 0.0, 500_000
    for _ in range(draws // chunk):
        x = sc.inputs(rng, chunk)
        total += score(m.apply(x, rng.normal(size=x.shape))).sum()
    return total / (draws // chunk * chunk)


def targets(sc, base: str = "schnell", head: str = "head_a", reps: int = 400,
            score_draws: int = 4_000_000) -> dict[str, float]:
    """Every estimand's target for row ``head`` and for ``head`` − ``base`` (the keys of ``simulate``),
    independent of the evaluation's code."""
    from facelift.tasks.evaluate.joint import CMMD_SIGMA as sigma  # a constant, not a computation
    from facelift.tasks.evaluate.simulate import Map

    maps, refs = {"b": sc.rows[base], "h": sc.rows[head]}, {"schnell": Map(), "dev": sc.dev}
    e = expected_fids(sc, sc.n, {"b": base, "h": head}, reps=reps)
    pop = {(r, k): population_fid(sc, m, refs[k]) for r, m in maps.items() for k in refs}
    out = {}
    for name, f in (("", e), ("_bc", pop)):
        out[f"fid_dev{name}"] = f[("h", "dev")]
        out[f"fid_diff{name}"] = f[("h", "schnell")] - f[("h", "dev")]
        out[f"base_fid_dev{name}"] = f[("b", "dev")]
        out[f"d_fid_dev{name}"] = f[("h", "dev")] - f[("b", "dev")]
        out[f"d_fid_diff{name}"] = out[f"fid_diff{name}"] - (f[("b", "schnell")] - f[("b", "dev")])
    kernels = {"kid_dev": poly_mmd2} | ({"cmmd_dev": lambda s, p, q: rbf_mmd2(s, p, q, sigma)} if sc.gaussian else {})
    for key, mmd2 in kernels.items():
        value = {r: mmd2(sc, m, sc.dev) for r, m in maps.items()}
        out |= {key: value["h"], f"d_{key}": value["h"] - value["b"]}
    means = {r: score_mean(sc, m, score_draws) for r, m in maps.items()}
    return out | {"score": means["h"], "d_score": means["h"] - means["b"]}
