"""t-SNE of ArcFace embeddings: L2-normalise, PCA to 50 dims, openTSNE with FFT gradients; PNG plots.

Large sets: t-SNE is fitted on a random subsample of ``max_fit`` points and the rest are placed into that
embedding (openTSNE ``transform``: affinities to the fitted points, then a short optimisation of the new
points only), which keeps 100k+ points tractable on a few cores.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

RACE_COLORS = {"asian": "#1f77b4", "black": "#2ca02c", "indian": "#ff7f0e", "latino hispanic": "#d62728",
               "middle eastern": "#9467bd", "white": "#8c564b"}
GENDER_COLORS = {"man": "#1f77b4", "woman": "#d62728"}
FFT_MIN_POINTS = 1000
_MARKERS = ("o", "^", "s", "D", "v", "P")


@dataclass(frozen=True)
class TsneResult:
    coords: np.ndarray  # (n, 2)
    fitted: int  # points in the fitted subsample
    placed: int  # points placed into it afterwards
    perplexity: float
    gradient: str
    seconds: float


def pca(x: np.ndarray, n_components: int = 50, fit_max: int = 50_000, seed: int = 0) -> np.ndarray:
    """Project onto the top principal components (fitted on at most ``fit_max`` rows)."""
    x = np.asarray(x, dtype=np.float64)
    k = min(n_components, x.shape[1], x.shape[0])
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= fit_max else x[rng.choice(len(x), fit_max, replace=False)]
    mean = fit.mean(axis=0)
    cov = np.cov(fit - mean, rowvar=False) if len(fit) > 1 else np.zeros((x.shape[1], x.shape[1]))
    vals, vecs = np.linalg.eigh(np.atleast_2d(cov))
    top = vecs[:, np.argsort(vals)[::-1][:k]]
    return ((x - mean) @ top).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def tsne_embed(x: np.ndarray, perplexity: float = 30.0, max_fit: int = 20_000, pca_dims: int = 50,
               seed: int = 0, n_jobs: int | None = None, n_iter: int = 500,
               gradient: str = "auto") -> TsneResult:
    """2-D t-SNE coordinates for every row of ``x`` (n >= 4).

    ``gradient``: ``fft`` (interpolation-based, linear in n), ``bh`` (Barnes-Hut), or ``auto`` = FFT from
    ``FFT_MIN_POINTS`` fitted points, BH below (FFT's fixed grid cost dominates tiny sets).
    """
    from openTSNE import TSNE

    start = time.perf_counter()
    x = np.asarray(x)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"t-SNE needs a 2-D array of at least 4 embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("t-SNE input holds NaN or infinite values")
    reduced = pca(l2_normalize(x), pca_dims, seed=seed)
    rng = np.random.default_rng(seed)
    n = len(reduced)
    fit_idx = np.sort(rng.choice(n, max_fit, replace=False)) if n > max_fit else np.arange(n)
    # openTSNE needs perplexity < (points - 1) / 3 for its neighbour graph.
    perp = float(min(perplexity, max((len(fit_idx) - 1) / 3 - 1e-6, 1.0)))
    if gradient not in ("auto", "fft", "bh"):
        raise ValueError(f"gradient must be auto, fft or bh, not {gradient!r}")
    method = ("fft" if len(fit_idx) >= FFT_MIN_POINTS else "bh") if gradient == "auto" else gradient
    tsne = TSNE(n_components=2, perplexity=perp, negative_gradient_method=method, n_iter=n_iter,
                n_jobs=n_jobs or os.cpu_count() or 1, random_state=seed, verbose=False)
    fitted = tsne.fit(reduced[fit_idx])
    coords = np.empty((n, 2), dtype=np.float32)
    coords[fit_idx] = np.asarray(fitted)
    rest = np.setdiff1d(np.arange(n), fit_idx, assume_unique=True)
    if len(rest):
        coords[rest] = np.asarray(fitted.transform(reduced[rest]))
    seconds = time.perf_counter() - start
    log.info("t-SNE (%s) of %d points (%d fitted, %d placed, perplexity %.1f) in %.1fs", method, n,
             len(fit_idx), len(rest), perp, seconds)
    return TsneResult(coords, len(fit_idx), len(rest), perp, method, seconds)


def plot_tsne(coords: np.ndarray, labels: Sequence[str | None], title: str,
              colors: dict[str, str] | None = None, groups: Sequence[str] | None = None,
              dpi: int = 110) -> bytes:
    """Scatter plot PNG (bytes): colour = ``labels`` (e.g. dominant race), marker = ``groups`` (prompt mode)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    coords = np.asarray(coords)
    labels = ["unknown" if v is None else str(v) for v in labels]
    groups = list(groups) if groups is not None else ["all"] * len(labels)
    if not (len(coords) == len(labels) == len(groups)):
        raise ValueError("coords, labels and groups differ in length")
    palette = dict(colors or {})
    extra = sorted({v for v in labels if v not in palette})
    cmap = plt.get_cmap("tab10")
    for i, v in enumerate(extra):
        palette[v] = "#999999" if v == "unknown" else matplotlib.colors.to_hex(cmap(i % 10))
    size = max(2.0, min(30.0, 4000.0 / max(len(coords), 1)))
    fig, ax = plt.subplots(figsize=(7.5, 6.0))
    group_names = list(dict.fromkeys(groups))
    labs, grps = np.asarray(labels), np.asarray(groups)
    for gi, group in enumerate(group_names):
        for value in [v for v in palette if v in set(labels)]:
            mask = (labs == value) & (grps == group)
            if mask.any():
                ax.scatter(coords[mask, 0], coords[mask, 1], s=size, c=palette[value],
                           marker=_MARKERS[gi % len(_MARKERS)], alpha=0.7, linewidths=0,
                           label=value if len(group_names) == 1 else f"{value} / {group}")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=max(1.0, 6 / size),
              frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
