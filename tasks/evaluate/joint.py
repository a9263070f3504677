"""Joint resampling: every row's FIDs and KIDs from the same splits, so rows can be compared pair by pair.

All rows are made from the same input images (row ``r``'s image ``i`` comes from input pair ``i``), and the
schnell and dev reference sets are the same reference pairs. So one random split of the input indices and one of
the reference indices serve every row and both references, and a row's FID minus the baseline's is resampled
as one statistic (paired: the shared inputs cancel).

**Variance from two sizes.** A plug-in FID (and the MMD²) varies like ``a/n + b/n²``: a linear part and a
degenerate quadratic part, which dominates when two sets nearly match. Disjoint halves (size h) and quarters
(size h/2) of one random permutation give unbiased estimates of the variance at h and at h/2
(``(F_A − F_B)²/2`` and the variance of the four quarters); ``a`` and ``b`` (both >= 0) follow and give the
variance at n. Half-sampling alone (``(F_A − F_B)²/4``) assumes ``b = 0`` and is √2 too wide near a match.
The bias-corrected FID ``2·F_n − F_h`` (Richardson: the 1/n bias removed) has variance ``a/n + 2b/n²``.

**Intervals** are Student t on Welch–Satterthwaite degrees of freedom (the variance combines two estimates;
halves only, below 8 images: linear, conservative); an FID interval never leaves [0, ∞) (the
FID at N is shown on the log scale, ``F·exp(±t·se/F)``; the bias-corrected FID is truncated at 0, which keeps
its coverage because the population FID is >= 0). Differences keep their sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from facelift.tasks.evaluate.metrics import (
    Estimate,
    KIDEstimate,
    _sqrt_psd,
    check_kid_subsets,
    feature_stats,
    fid_from_features,
    frechet_distance,
    kid_subset_size,
)

JOINT_MIN_N = 8  # quarters of two images each
HALVES_MIN_N = 4  # halves of two: below 8 images only halves, and the variance is taken as linear (conservative)
FID_METHOD = "joint halves+quarters"
CMMD_SIGMA = 10.0  # Jayasumana et al. 2024: RBF bandwidth on unit-norm CLIP embeddings


# -- the variance model ---------------------------------------------------------------------------
def extrapolate_variance(v_half: float, v_quarter: float, ratio: float) -> tuple[tuple[float, float],
                                                                                     tuple[float, float]]:
    """Weights (on v_half, on v_quarter) of the variance of the plug-in statistic at n and of its bias-corrected
    form, from the variances at h and h/2, ``ratio`` = h / n, under ``V(s) = a/s + b/s²`` with a, b >= 0."""
    lin, quad = 2 * v_half - v_quarter / 2, (v_quarter - 2 * v_half) / 2  # a/h, b/h²
    if lin < 0:  # all quadratic: b/h² = v_half
        return (ratio**2, 0.0), (2 * ratio**2, 0.0)
    if quad < 0:  # all linear: a/h = v_half
        return (ratio, 0.0), (ratio, 0.0)
    r = ratio
    return (2 * r - r * r, (r * r - r) / 2), (2 * r - 2 * r * r, r * r - r / 2)


def satterthwaite(weights: tuple[float, float], values: tuple[float, float], dfs: tuple[float, float]) -> float:
    """Degrees of freedom of ``Σ w·v`` where each v is a variance estimate on its own df (at least 1)."""
    total = sum(w * v for w, v in zip(weights, values, strict=True))
    denom = sum((w * v) ** 2 / df for w, v, df in zip(weights, values, dfs, strict=True))
    return max(1.0, total**2 / denom) if denom > 0 else float(max(dfs))


def t_quantile(df: float, alpha: float = 0.05) -> float:
    return float(stats.t.ppf(1 - alpha / 2, df))


# -- FID ------------------------------------------------------------------------------------------
def _fid_grid(rows: Sequence[np.ndarray], refs: Sequence[np.ndarray]) -> np.ndarray:
    """FID of every row set to every reference set, [row, ref] (each set's statistics computed once)."""
    n, d = len(rows[0]), rows[0].shape[1]
    if max(n, len(refs[0])) <= d:
        return np.array([[fid_from_features(r, y) for y in refs] for r in rows])
    ref_stats = [feature_stats(y) for y in refs]
    out = np.empty((len(rows), len(refs)))
    for i, r in enumerate(rows):
        mu, sigma = feature_stats(r)
        root = _sqrt_psd(sigma)
        out[i] = [frechet_distance(mu, sigma, m2, s2, root) for m2, s2 in ref_stats]
    return out


def _chunks(total: int, per_item: int, budget: int = 1 << 24) -> list[slice]:
    step = max(1, budget // max(per_item, 1))
    return [slice(i, min(i + step, total)) for i in range(0, total, step)]


def _batched_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(axis=1)
    xc = x - mu[:, None, :]
    return mu, np.einsum("bni,bnj->bij", xc, xc) / (x.shape[1] - 1)


def _fid_stack(rows: Sequence[np.ndarray], refs: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`_fid_grid` over a stack of subsets: rows and refs shaped (subsets, n, d); returns [subset, row, ref]."""
    b, n, d = rows[0].shape
    if max(n, refs[0].shape[1]) <= d:
        return np.array([_fid_grid([r[k] for r in rows], [y[k] for y in refs]) for k in range(b)])
    out = np.empty((b, len(rows), len(refs)))
    for part in _chunks(b, d * d * (len(rows) + len(refs) + 2)):
        ref_stats = [_batched_stats(y[part]) for y in refs]
        for i, r in enumerate(rows):
            mu, sigma = _batched_stats(r[part])
            w, v = np.linalg.eigh((sigma + sigma.transpose(0, 2, 1)) / 2)
            root = (v * np.sqrt(np.clip(w, 0, None))[:, None, :]) @ v.transpose(0, 2, 1)
            for j, (mu2, s2) in enumerate(ref_stats):
                inner = root @ s2 @ root
                eig = np.linalg.eigvalsh((inner + inner.transpose(0, 2, 1)) / 2)
                diff = mu - mu2
                out[part, i, j] = ((diff * diff).sum(-1) + np.trace(sigma, axis1=1, axis2=2)
                                   + np.trace(s2, axis1=1, axis2=2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum(-1))
    return out


@dataclass(frozen=True)
class FIDDraws:
    """FID grids [row, ref] on the whole sets and, per round, on two halves and four quarters."""

    full: np.ndarray  # (rows, refs)
    halves: np.ndarray  # (rounds, 2, rows, refs)
    quarters: np.ndarray  # (rounds, 4, rows, refs); (rounds, 0, ...) below 8 images
    n: int
    half: int  # images per half (twice a quarter)


def fid_draws(rows: Sequence[np.ndarray], refs: Sequence[np.ndarray], rounds: int, seed: int,
              min_size: int = 0) -> FIDDraws:
    """Every row's FID to every reference on the whole sets and on shared halves and quarters: each round draws
    one permutation of the input indices (all rows) and one of the reference indices (all references).

    ``min_size`` (the feature dimension in the table): quarters smaller than it are not drawn, because below d
    images a set's covariance is rank-deficient and its FID no longer varies like ``a/s + b/s²``; the variance
    then comes from the halves alone (linear, conservative)."""
    rows = [np.asarray(r, np.float64) for r in rows]
    refs = [np.asarray(y, np.float64) for y in refs]
    n, m = len(rows[0]), len(refs[0])
    if any(len(r) != n for r in rows) or any(len(y) != m for y in refs):
        raise ValueError("joint resampling needs rows of one size (the same inputs) and references of one size")
    full = _fid_grid(rows, refs)
    rounds = rounds if min(n, m) >= HALVES_MIN_N else 0
    quarters = min(n, m) >= JOINT_MIN_N and min(n, m) // 4 >= min_size
    q_in, q_ref = (n // 4, m // 4) if quarters else (n // 2 / 2, m // 2 / 2)
    h_in, h_ref = int(2 * q_in), int(2 * q_ref)
    rng = np.random.default_rng(seed)
    perms = [(rng.permutation(n)[:2 * h_in], rng.permutation(m)[:2 * h_ref]) for _ in range(rounds)]
    shape = full.shape
    parts = {"halves": np.empty((0, 2, *shape)), "quarters": np.empty((rounds, 0, *shape))}
    if not rounds:
        return FIDDraws(full, parts["halves"], parts["quarters"], min(n, m), min(h_in, h_ref))
    p_in = np.stack([p for p, _ in perms])  # (rounds, 2h)
    p_ref = np.stack([p for _, p in perms])
    for name, k in (("quarters", 4), ("halves", 2)):
        if name == "quarters" and not quarters:
            continue
        i_idx, y_idx = p_in.reshape(rounds * k, -1), p_ref.reshape(rounds * k, -1)
        grid = _fid_stack([r[i_idx] for r in rows], [y[y_idx] for y in refs])
        parts[name] = grid.reshape(rounds, k, *shape)
    return FIDDraws(full, parts["halves"], parts["quarters"], min(n, m), min(h_in, h_ref))


def combine(draws: FIDDraws, weights: np.ndarray, alpha: float = 0.05,
            nonnegative: bool = True) -> tuple[Estimate, Estimate]:
    """(the statistic at N, its bias-corrected form) for ``Σ weights·FID`` (weights shaped [row, ref]): one
    FID (a single 1), FID_diff (+1, −1), a paired difference (+1 on the row, −1 on the baseline), ...

    ``nonnegative``: the statistic is an FID (intervals kept in [0, ∞)); else a difference (any sign).
    """
    w = np.asarray(weights, np.float64)
    full = float((draws.full * w).sum())
    halves = (draws.halves * w).sum(axis=(2, 3))  # (rounds, 2)
    quarters = (draws.quarters * w).sum(axis=(2, 3))  # (rounds, 4)
    rounds = len(halves)
    method = f"{FID_METHOD if quarters.shape[1] else 'joint halves'} ×{rounds}"
    if rounds < 2 or draws.half < 2:
        nan = float("nan")
        return Estimate(full, nan, nan, draws.n, method), Estimate(nan, nan, nan, draws.n, method)
    v_half = float(np.mean((halves[:, 0] - halves[:, 1]) ** 2) / 2)
    ratio = draws.half / draws.n
    if quarters.shape[1]:
        v_quarter = float(np.mean(quarters.var(axis=1, ddof=1)))
        w_n, w_bc = extrapolate_variance(v_half, v_quarter, ratio)
    else:  # halves only: the linear (conservative) variance
        v_quarter, w_n, w_bc = 0.0, (ratio, 0.0), (ratio, 0.0)
    values, dfs = (v_half, v_quarter), (rounds, 3 * rounds)
    var_n, var_bc = (max(0.0, w[0] * v_half + w[1] * v_quarter) for w in (w_n, w_bc))
    bc = (full - ratio * float(halves.mean())) / (1 - ratio)  # 1/n bias: F_s = θ + c/s
    df, df_bc = (satterthwaite(w, values, dfs) for w in (w_n, w_bc))
    t, t_bc = t_quantile(df, alpha), t_quantile(df_bc, alpha)
    se, se_bc = float(np.sqrt(var_n)), float(np.sqrt(var_bc))
    if nonnegative:
        if full > 0:
            at_n = Estimate(full, full * float(np.exp(-t * se / full)), full * float(np.exp(t * se / full)),
                            draws.n, method, se, df)
        else:
            at_n = Estimate(full, 0.0, t * se, draws.n, method, se, df)
        lo, hi = max(0.0, bc - t_bc * se_bc), max(0.0, bc + t_bc * se_bc)
        corrected = Estimate(min(max(bc, lo), hi), lo, hi, draws.n, f"{method}, bias-corrected", se_bc, df_bc)
    else:
        at_n = Estimate(full, full - t * se, full + t * se, draws.n, method, se, df)
        corrected = Estimate(bc, bc - t_bc * se_bc, bc + t_bc * se_bc, draws.n, f"{method}, bias-corrected", se_bc,
                             df_bc)
    return at_n, corrected


def fid_weights(shape: tuple[int, int], row: int, ref: int | None, baseline: int | None = None) -> np.ndarray:
    """Weights for :func:`combine`: FID[row, ref], or FID_diff (ref None: ref 0 − ref 1), minus the same of
    ``baseline`` when given."""
    line = np.zeros(shape[1])
    if ref is None:
        line[0], line[1] = 1.0, -1.0
    else:
        line[ref] = 1.0
    w = np.zeros(shape)
    w[row] += line
    if baseline is not None:
        w[baseline] -= line
    return w


# -- KID ------------------------------------------------------------------------------------------
def kid_subsets(n_rows: int, n_ref: int, size: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (input indices, reference indices) subsets of ``size``, without replacement, shared by rows."""
    rng = np.random.default_rng(seed)
    return [(rng.choice(n_rows, size, replace=False), rng.choice(n_ref, size, replace=False)) for _ in range(count)]


@dataclass(frozen=True)
class KIDDraws:
    """Per row, the MMD² of S subsets of size m and of S subsets of size m/2 (None when m/2 < 2)."""

    at_m: np.ndarray  # (rows, S)
    at_half: np.ndarray | None  # (rows, S)
    n: int
    size: int


def kernel_matrix(a: np.ndarray, b: np.ndarray, kernel: str) -> np.ndarray:
    """Batched kernel matrices [..., i, j]: ``poly`` = KID's ``(aᵀb/d + 1)³``; ``rbf`` = CMMD's
    ``exp(−|a − b|²/(2σ²))`` with σ = :data:`CMMD_SIGMA`."""
    dot = a @ np.swapaxes(b, -1, -2)
    if kernel == "poly":
        k = dot / a.shape[-1] + 1
        return k * k * k
    if kernel == "rbf":
        sq = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2 * dot
        return np.exp(-np.clip(sq, 0, None) / (2 * CMMD_SIGMA**2))
    raise ValueError(f"unknown kernel {kernel!r}; valid: poly, rbf")


def _mmd_stack(xs: Sequence[np.ndarray], y: np.ndarray, subsets: list[tuple[np.ndarray, np.ndarray]],
               kernel: str = "poly") -> np.ndarray:
    """The unbiased MMD² (:func:`mmd2_unbiased` for ``poly``) of each row set in ``xs`` against ``y`` on each
    subset pair, [row, subset]; a chunk of subsets at a time, the reference's own kernel once for all rows."""
    ii, jj = np.stack([i for i, _ in subsets]), np.stack([j for _, j in subsets])
    m = ii.shape[1]
    out = np.empty((len(xs), len(subsets)))
    pairs = m * (m - 1)
    for part in _chunks(len(subsets), 3 * m * m):
        b = y[jj[part]]
        kyy = kernel_matrix(b, b, kernel)
        yy = (kyy.sum((1, 2)) - np.trace(kyy, axis1=1, axis2=2)) / pairs
        for r, x in enumerate(xs):
            a = x[ii[part]]
            kxx = kernel_matrix(a, a, kernel)
            kxy = kernel_matrix(a, b, kernel)
            out[r, part] = (kxx.sum((1, 2)) - np.trace(kxx, axis1=1, axis2=2)) / pairs + yy - 2 * kxy.mean((1, 2))
    return out


def kid_draws(rows: Sequence[np.ndarray], ref: np.ndarray, n_subsets: int, cap: int | None, seed: int,
              kernel: str = "poly") -> KIDDraws:
    """Every row's MMD² to ``ref`` on the same subsets (raises SampleSizeError below 4 images); ``kernel``
    ``poly`` is KID, ``rbf`` CMMD (:func:`kernel_matrix`)."""
    n = min(len(rows[0]), len(ref))
    size = kid_subset_size(n, cap)
    ref = np.asarray(ref, np.float64)
    rows = [np.asarray(r, np.float64) for r in rows]
    big = kid_subsets(len(rows[0]), len(ref), size, n_subsets, seed)
    at_m = _mmd_stack(rows, ref, big, kernel)
    at_half = None
    if size // 2 >= 2:
        small = kid_subsets(len(rows[0]), len(ref), size // 2, n_subsets, seed + 1)
        at_half = _mmd_stack(rows, ref, small, kernel)
    return KIDDraws(at_m, at_half, n, size)


def kid_estimate(draws: KIDDraws, weights: np.ndarray, alpha: float = 0.05) -> KIDEstimate:
    """KID (or a paired difference, ``weights`` over rows) with its standard error and t interval.

    The value is the mean over S subsets of size m. Its variance is Var(the whole-set MMD²) + c(m)/S, where
    c(s) is the spread of subsets of size s given the data: ``a(1/s − 1/n) + b(1/s² − 1/n²)`` (a, b >= 0, fitted
    from the spreads at m and m/2), and Var(whole-set MMD²) = a/n + b/n². Without the m/2 subsets, b = 0
    (conservative near a match).
    """
    w = np.asarray(weights, np.float64)
    at_m = w @ draws.at_m
    s, n, m = len(at_m), draws.n, draws.size
    c_m = float(at_m.var(ddof=1))
    lin_m, quad_m = 1 / m - 1 / n, 1 / m**2 - 1 / n**2
    # var = w_m·c_m + w_h·c_h (+ c_m/S, the subsets' own Monte Carlo error): a/n + b/n² from the fitted a, b
    w_m, w_h, c_h = (1 / n) / lin_m, 0.0, 0.0
    if draws.at_half is not None:
        c_h = float((w @ draws.at_half).var(ddof=1))
        h = m // 2
        lin_h, quad_h = 1 / h - 1 / n, 1 / h**2 - 1 / n**2
        det = lin_m * quad_h - quad_m * lin_h
        a_w, b_w = (quad_h / det, -quad_m / det), (-lin_h / det, lin_m / det)  # a, b as weights on (c_m, c_h)
        a, b = a_w[0] * c_m + a_w[1] * c_h, b_w[0] * c_m + b_w[1] * c_h
        if a < 0:
            w_m, w_h = (1 / n**2) / quad_m, 0.0
        elif b >= 0:
            w_m, w_h = a_w[0] / n + b_w[0] / n**2, a_w[1] / n + b_w[1] / n**2
    w_m += 1 / s
    var = max(0.0, w_m * c_m + w_h * c_h)
    se = float(np.sqrt(var))
    mean = float(at_m.mean())
    df = satterthwaite((w_m, w_h), (c_m, c_h), (s - 1, s - 1))
    half = t_quantile(df, alpha) * se
    return KIDEstimate(mean, se, float(np.sqrt(c_m)), mean - half, mean + half, n, m, s, df)


# -- per-image metrics ----------------------------------------------------------------------------
def mean_t(values: np.ndarray, alpha: float = 0.05) -> Estimate:
    """Mean with a Student t interval (per-image scores, or per-image differences for a paired comparison)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("no values")
    mean = float(v.mean())
    if v.size < 2:
        return Estimate(mean, float("nan"), float("nan"), 1, "t interval")
    se = float(v.std(ddof=1)) / np.sqrt(v.size)
    half = t_quantile(v.size - 1, alpha) * se
    return Estimate(mean, mean - half, mean + half, int(v.size), "t interval", se, v.size - 1)


# -- one row ------------------------------------------------------------------------------------
def kid(f1: np.ndarray, f2: np.ndarray, n_subsets: int = 100, subset_size: int | None = None, seed: int = 0,
        alpha: float = 0.05) -> KIDEstimate:
    """Kernel Inception Distance: the mean unbiased MMD² over ``n_subsets`` (>= 10) random subsets of
    ``min(subset_size, n // 2)``, drawn without replacement; it targets the population MMD² at any subset size.
    Standard error and interval: :func:`facelift.tasks.evaluate.joint.kid_estimate`.
    """
    a, b = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be 2-D with the same width, got {a.shape} and {b.shape}")
    check_kid_subsets(n_subsets)
    return kid_estimate(kid_draws([a], b, n_subsets, subset_size, seed), np.ones(1), alpha)




def fid_with_ci(rows: np.ndarray, refs: dict[str, np.ndarray], n_boot: int = 20, alpha: float = 0.05,
                seed: int = 0) -> dict[str, Estimate]:
    """FID of ``rows`` to each reference set, plus ``diff`` = first − second when there are two references,
    each with a ``<key>_bc`` bias-corrected twin; intervals from ``n_boot`` rounds of joint halves and quarters
    (:mod:`facelift.tasks.evaluate.joint`). ``<key>`` targets the FID at this N (plug-in FID is biased upward
    like 1/N), ``<key>_bc`` the population FID (valid when N >= 2 × the feature dimension). Fewer than 4 images
    in a set or ``n_boot < 2``: no interval (NaN); 4 to 7: halves only (a conservative, linear variance).
    """
    names = list(refs)
    if len(names) not in (1, 2):
        raise ValueError(f"fid_with_ci takes one or two reference sets, got {len(names)}")
    a = np.asarray(rows, np.float64)
    draws = fid_draws([a], [refs[k] for k in names], n_boot, seed)
    out: dict[str, Estimate] = {}
    keys = [(k, i) for i, k in enumerate(names)] + ([("diff", None)] if len(names) == 2 else [])
    for key, ref in keys:
        out[key], out[f"{key}_bc"] = combine(draws, fid_weights((1, len(names)), 0, ref), alpha, ref is not None)
    return out
