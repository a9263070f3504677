"""Metric computations over features: Fréchet distance (float64), KID (unbiased), intervals, caching.

FID = ||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½). The trace term is computed from eigenvalues of a
symmetric PSD matrix (no complex ``sqrtm``): ``tr((S1 S2)^½) = Σ √λ(S1^½ S2 S1^½)``, or, when a set has
fewer images than feature dimensions, exactly from the singular values of ``X1c X2cᵀ`` (the covariances have
rank < N there, so the N×N problem gives the same number, fast).
KID is the unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``, averaged over
random subsets (Bińkowski et al. 2018), reported with its standard error and an interval.
Intervals (``joint.fid_with_ci``, ``joint.kid``, joint resampling across rows) and what each targets:
docs/evaluate.md, "Statistics".
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from facelift.storage import Store

log = logging.getLogger(__name__)

FEATURE_CACHE_PREFIX = "cache/features"


# -- Fréchet distance -------------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need a 2-D array of at least 2 feature vectors, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     sqrt_sigma1: np.ndarray | None = None) -> float:
    """Fréchet distance between two Gaussians, in float64 (``sqrt_sigma1`` may be passed precomputed)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    root = _sqrt_psd(s1) if sqrt_sigma1 is None else sqrt_sigma1
    inner = root @ s2 @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets (float64; exact low-rank path when N <= feature dimension)."""
    a, b = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be 2-D with the same width, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError("FID needs at least 2 images per set")
    if max(len(a), len(b)) > a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    mu1, mu2 = a.mean(0), b.mean(0)
    x1, x2 = a - mu1, b - mu2
    n1, n2 = len(a) - 1, len(b) - 1
    tr1, tr2 = float((x1 * x1).sum()) / n1, float((x2 * x2).sum()) / n2
    tr_covmean = float(np.linalg.svd(x1 @ x2.T, compute_uv=False).sum()) / np.sqrt(n1 * n2)
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * tr_covmean)


# -- KID --------------------------------------------------------------------------------------------
KID_MIN_SUBSET = 2  # the unbiased MMD² needs two images per side
KID_MIN_SUBSETS = 10
KID_MAX_SUBSET = 1000  # the usual cap (torchmetrics' default); larger subsets cost O(size²) per subset


class SampleSizeError(ValueError):
    """Too few images for a statistic; the message names n and the minimum."""


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel ``(xᵀy / d + 1)³`` (torchmetrics' ``poly_mmd``)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


@dataclass(frozen=True)
class KIDEstimate:
    """KID: the mean of the unbiased MMD² over random subsets, its standard error and a 95% t interval."""

    value: float
    se: float  # standard error of ``value`` (what ± means); not the spread of the subsets
    subset_sd: float  # spread (sd) of the per-subset values, for reference
    low: float
    high: float
    n: int  # images in the smaller set
    subset_size: int
    n_subsets: int
    df: float = float("inf")  # the t interval's degrees of freedom (Welch–Satterthwaite)

    def as_dict(self, name: str) -> dict[str, float | int]:
        return {name: self.value, f"{name}_se": self.se, f"{name}_subset_sd": self.subset_sd,
                f"{name}_ci_low": self.low, f"{name}_ci_high": self.high, f"{name}_subset_size": self.subset_size,
                f"{name}_subsets": self.n_subsets, f"{name}_df": self.df}

    def estimate(self) -> Estimate:
        """As an :class:`Estimate` (for the family-wise verdicts)."""
        return Estimate(self.value, self.low, self.high, self.n, "subsets at m and m/2", self.se, self.df)


def kid_subset_size(n: int, cap: int | None = None) -> int:
    """The subset size for sets of ``n`` images: ``min(cap or 1000, n // 2)``; n < 4 is a SampleSizeError."""
    if n // 2 < KID_MIN_SUBSET:
        raise SampleSizeError(f"KID needs n >= {2 * KID_MIN_SUBSET} images per set (subsets of >= {KID_MIN_SUBSET}, "
                              f"at most n/2), got n={n}")
    return max(KID_MIN_SUBSET, min(cap or KID_MAX_SUBSET, n // 2))


def kid_values(a: np.ndarray, b: np.ndarray, subsets: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The unbiased MMD² of each (indices into ``a``, indices into ``b``) subset pair."""
    return np.array([mmd2_unbiased(a[i], b[j]) for i, j in subsets], dtype=np.float64)


def check_kid_subsets(n_subsets: int) -> None:
    if n_subsets < KID_MIN_SUBSETS:
        raise ValueError(f"KID needs >= {KID_MIN_SUBSETS} subsets for a spread, got n_subsets={n_subsets}")


# -- intervals --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A metric value with its confidence interval, the number of images behind it and the interval method."""

    value: float
    low: float
    high: float
    n: int
    method: str = ""
    se: float = float("nan")  # standard error; with ``df``, the interval at any level (family-wise verdicts)
    df: float = float("inf")

    def as_dict(self, name: str) -> dict[str, float | int]:
        return {name: self.value, f"{name}_ci_low": self.low, f"{name}_ci_high": self.high}


# -- feature caching --------------------------------------------------------------------------------
def image_set_key(image_hashes: Iterable[str]) -> str:
    """Content key of an image set: sha256 over its images' sha256s (order does not matter)."""
    h = hashlib.sha256()
    for digest in sorted(image_hashes):
        h.update(digest.encode())
    return h.hexdigest()[:32]


def cached_features(store: Store | None, extractor_id: str, set_key: str,
                    compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """Features of one image set from ``<store>/cache/features/<extractor>/<set>.npy``, computed once.

    Returns (features, hit). ``store=None`` disables caching.
    """
    key = f"{FEATURE_CACHE_PREFIX}/{extractor_id}/{set_key}.npy"
    if store is not None:
        try:
            feats = np.load(io.BytesIO(store.read_bytes(key)), allow_pickle=False)
            log.info("feature cache hit %s", store.url(key))
            return feats, True
        except FileNotFoundError:
            pass
    feats = np.asarray(compute(), dtype=np.float32)
    if store is not None:
        buf = io.BytesIO()
        np.save(buf, feats, allow_pickle=False)
        store.write_bytes(key, buf.getvalue())
        log.info("cached %d features at %s", len(feats), store.url(key))
    return feats, False
