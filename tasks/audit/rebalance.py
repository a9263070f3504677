"""Diversity-controlled sampling: per-name weights that move the next build toward a target distribution.

Input: the audit of a pilot build with the enriched prompt (one or more images per IMDb name) and a
target such as ``{"race": {"white": 0.2, ...}, "gender": {"man": 0.5, "woman": 0.5}}``. Each name gets
its perceived attributes (majority over its analysed images); weights are found by raking (iterative
proportional fitting): every pass rescales the weights so the weighted share of each group of one
attribute equals its target, cycling over the attributes until all marginals match (or stop moving),
with each weight capped at ``max_ratio`` times the mean so a handful of names cannot dominate. A target
category the pilot lacks cannot be reached: its share is re-spread over the reachable categories of that
attribute (``effective_target``), and the result does not depend on the order of categories or attributes.

Output contract (read by the build's ``plan.weights_uri``): Parquet with ``nconst`` (str), ``name`` (str),
``weight`` (float >= 0). Names with weight > 0 are eligible and ``count`` of them are drawn without
replacement with probability proportional to weight.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from facelift.tasks.audit.report import CATEGORIES, attribute_frame, distribution, tv_distance

log = logging.getLogger(__name__)

WEIGHTS_SCHEMA = pa.schema([("nconst", pa.string()), ("name", pa.string()), ("weight", pa.float64())])
_ALIASES = {"male": "man", "female": "woman", "m": "man", "f": "woman", "latino": "latino hispanic",
            "latino_hispanic": "latino hispanic", "middle_eastern": "middle eastern",
            "18–30": "18-30", "31–50": "31-50", "<18": "under 18", "under_18": "under 18"}
Target = dict[str, dict[str, float]]


class RebalanceError(ValueError):
    """A target is invalid, or the pilot audit cannot produce weights."""


def parse_target(raw: Mapping[str, Any]) -> Target:
    """Validate a target: attributes race/gender/age, known categories, shares >= 0 summing to 1."""
    if not isinstance(raw, Mapping) or not raw:
        raise RebalanceError("target must be a mapping like {\"race\": {\"white\": 0.2, ...}}")
    out: Target = {}
    for attr, shares in raw.items():
        if attr not in CATEGORIES:
            raise RebalanceError(f"unknown target attribute {attr!r}; use {', '.join(CATEGORIES)}")
        if not isinstance(shares, Mapping) or not shares:
            raise RebalanceError(f"target {attr!r} must map categories to shares")
        parsed: dict[str, float] = {}
        for key, value in shares.items():
            cat = _ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
            if cat not in CATEGORIES[attr]:
                raise RebalanceError(f"unknown {attr} category {key!r}; valid: {', '.join(CATEGORIES[attr])}")
            try:
                share = float(value)
            except (TypeError, ValueError):
                raise RebalanceError(f"target {attr}.{key} is not a number: {value!r}") from None
            if not np.isfinite(share) or share < 0:
                raise RebalanceError(f"target {attr}.{key} must be a share >= 0, got {value!r}")
            parsed[cat] = parsed.get(cat, 0.0) + share
        total = sum(parsed.values())
        if abs(total - 1.0) > 1e-3:
            raise RebalanceError(f"target {attr} shares sum to {total:.4f}, not 1")
        out[attr] = {c: parsed.get(c, 0.0) / total for c in CATEGORIES[attr]}
    return out


def load_target(uri: str, endpoint_url: str | None = None) -> Target:
    """A target from a JSON or TOML file (local path or object-store URI)."""
    from facelift.storage import open_uri

    with open_uri(uri, endpoint_url) as fh:
        text = fh.read().decode("utf-8")
    try:
        raw = tomllib.loads(text) if uri.endswith(".toml") else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RebalanceError(f"cannot parse target file {uri}: {exc}") from None
    return parse_target(raw)


def name_attributes(audit: pd.DataFrame) -> pd.DataFrame:
    """One row per name (nconst): its perceived race, gender and age bucket (majority over its faces)."""
    rows = audit[audit["image"] == "schnell"] if "image" in audit else audit
    named = rows[rows["nconst"].fillna("").astype(str).str.len() > 0]
    if named.empty or named["name"].fillna("").astype(str).str.len().max() == 0:
        raise RebalanceError("the audit has no named images: rebalancing needs an audit of an enriched "
                             "build (one prompt per IMDb name), not of the baseline prompt")
    attrs = attribute_frame(named)
    if attrs.empty:
        raise RebalanceError("no face was analysed in the pilot audit: nothing to rebalance")
    attrs = attrs.assign(nconst=named.loc[attrs.index, "nconst"].to_numpy(),
                         name=named.loc[attrs.index, "name"].to_numpy())

    def majority(s: pd.Series) -> Any:
        counts = s.dropna().value_counts()
        return counts.index[0] if len(counts) else None

    grouped = attrs.groupby("nconst", sort=True)
    return pd.DataFrame({
        "nconst": list(grouped.groups),
        "name": grouped["name"].first().to_numpy(),
        **{attr: grouped[attr].agg(majority).to_numpy() for attr in CATEGORIES},
    })


def expected_distribution(names: pd.DataFrame, weights: np.ndarray, attrs: list[str] | None = None
                          ) -> dict[str, dict[str, float]]:
    """Attribute shares of a draw proportional to ``weights`` (one draw, i.e. with replacement)."""
    return {a: distribution(names[a], CATEGORIES[a], weights) for a in (attrs or list(CATEGORIES))}


def _support(names: pd.DataFrame, target: Target) -> np.ndarray:
    """Names that can be steered: every target attribute known, and a category the target gives a share > 0."""
    keep = np.ones(len(names), dtype=bool)
    for attr, shares in target.items():
        labels = names[attr]
        keep &= labels.notna().to_numpy() & labels.map(lambda c, s=shares: s.get(c, 0.0) > 0).to_numpy(dtype=bool)
    return keep


def effective_target(names: pd.DataFrame, target: Target, warn: bool = True) -> Target:
    """The target renormalised over the categories the pilot can reach (present among the steerable names).

    A category no steerable name has cannot get weight: its share is re-spread over the reachable ones in
    proportion to their target shares (uniform over six races with only three present -> 1/3 each).
    """
    support = _support(names, target)
    out: Target = {}
    for attr, shares in target.items():
        present = set(names.loc[support, attr])
        reach = {c: (share if c in present else 0.0) for c, share in shares.items()}
        total = sum(reach.values())
        if total <= 0:
            raise RebalanceError(f"no name of the pilot has a {attr} the target asks for "
                                 f"({', '.join(c for c, s in shares.items() if s > 0)})")
        missing = sorted(c for c, share in shares.items() if share > 0 and c not in present)
        if missing and warn:
            log.warning("target %s asks for %s but the pilot has no such names: their share is re-spread over "
                        "the reachable categories", attr, missing)
        out[attr] = {c: share / total for c, share in reach.items()}
    return out


def _cap(w: np.ndarray, max_ratio: float) -> np.ndarray:
    """Rescale the positive weights to mean 1, none above ``max_ratio`` (the excess goes to the others)."""
    pos = w > 0
    capped = np.zeros_like(pos)
    out = w.copy()
    for _ in range(len(w) + 1):
        free = pos & ~capped
        scale = (pos.sum() - max_ratio * capped.sum()) / w[free].sum()
        out[free] = w[free] * scale
        out[capped] = max_ratio
        over = free & (out > max_ratio)
        if not over.any():
            break
        capped |= over
    return out


def rake(names: pd.DataFrame, target: Target, max_ratio: float = 20.0, max_iter: int = 500,
         tol: float = 1e-9) -> np.ndarray:
    """Weights (mean 1 over the names with weight > 0, each at most ``max_ratio``) whose weighted marginals
    match the target renormalised over the reachable categories (``effective_target``).

    Iterative proportional fitting: each attribute's categories are rescaled together from the same totals,
    attributes in sorted order, so the result depends neither on the order of the categories nor on that of
    the attributes in ``target``.
    """
    if max_ratio <= 1:
        raise RebalanceError(f"max_ratio must be > 1, got {max_ratio}")
    goal = effective_target(names, target)
    w = _support(names, target).astype(float)
    labels = {attr: names[attr].to_numpy(dtype=object) for attr in goal}
    for _ in range(max_iter):
        previous = w.copy()
        for attr in sorted(goal):
            total = w.sum()
            factor = np.zeros(len(w))
            for cat, share in goal[attr].items():
                mask = labels[attr] == cat
                current = w[mask].sum()
                if current > 0:
                    factor[mask] = share * total / current
            w = w * factor
        w = _cap(w, max_ratio)
        if np.abs(w - previous).max() < tol:
            break
    return w


def inclusion_probabilities(weights: np.ndarray, count: int) -> np.ndarray:
    """pi_i proportional to weight, summing to ``count``, capped at 1 (the excess goes to the others)."""
    w = np.asarray(weights, dtype=float)
    pi = np.zeros_like(w)
    free = w > 0
    if count > free.sum():
        raise RebalanceError(f"cannot draw {count} names from {int(free.sum())} with weight > 0")
    for _ in range(len(w) + 1):
        pi[free] = (count - (~free & (pi >= 1)).sum()) * w[free] / w[free].sum()
        over = free & (pi >= 1)
        if not over.any():
            break
        pi[over] = 1.0
        free &= ~over
    return np.minimum(pi, 1.0)


def weights_for_count(weights: np.ndarray, count: int) -> np.ndarray:
    """Weights whose successive draw of ``count`` names (numpy ``choice`` without replacement) includes
    each name with probability ~ pi_i: successive sampling behaves like exponential order sampling, whose
    inclusion probability is 1 - exp(-w t), so w = -log(1 - pi) (Rosen 1997). Without this, a draw of a
    large fraction of the pool drifts back toward the pilot's distribution.
    """
    pi = np.clip(inclusion_probabilities(weights, count), 0.0, 1.0 - 1e-6)
    w = -np.log1p(-pi)
    return w / w[w > 0].mean()


def compute_weights(audit: pd.DataFrame, target: Target, max_ratio: float = 20.0, count: int | None = None,
                    seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-name weights (contract columns) and a report of distributions before/after and distances.

    ``count``: the size of the next build's draw; weights are then tuned for drawing that many names
    without replacement and the report includes a simulated draw.
    """
    names = name_attributes(audit)
    raked = rake(names, target, max_ratio=max_ratio)
    weights = raked if count is None else weights_for_count(raked, count)
    before = expected_distribution(names, np.ones(len(names)), list(target))
    # expected composition: of one draw, or (with count) of the sample, from the inclusion probabilities
    after = expected_distribution(names, raked if count is None else inclusion_probabilities(raked, count),
                                  list(target))
    df = pd.DataFrame({"nconst": names["nconst"].astype(str), "name": names["name"].fillna("").astype(str),
                       "weight": weights.astype(float)})
    report = {
        "names": len(names), "eligible": int((weights > 0).sum()), "max_ratio": max_ratio,
        "target": target, "reachable_target": effective_target(names, target, warn=False), "pilot": before,
        "expected": after,
        "tv_before": {a: tv_distance(before[a], target[a]) for a in target},
        "tv_after": {a: tv_distance(after[a], target[a]) for a in target},
    }
    if count is not None:
        drawn_before = simulate_sampling(names, None, count, seed)
        drawn_after = simulate_sampling(names, weights, count, seed)
        report["draw"] = {
            "count": count, "seed": seed,
            "tv_uniform": {a: tv_distance(drawn_before[a], target[a]) for a in target},
            "tv_weighted": {a: tv_distance(drawn_after[a], target[a]) for a in target},
        }
    return df, report


def simulate_sampling(names: pd.DataFrame, weights: np.ndarray | None, count: int, seed: int = 0
                      ) -> dict[str, dict[str, float]]:
    """The build's draw: ``count`` eligible names without replacement, probability ∝ weight."""
    w = np.ones(len(names)) if weights is None else np.asarray(weights, dtype=float)
    eligible = np.flatnonzero(w > 0)
    if count > len(eligible):
        raise RebalanceError(f"cannot draw {count} names from {len(eligible)} with weight > 0")
    rng = np.random.default_rng(seed)
    pick = rng.choice(eligible, size=count, replace=False, p=w[eligible] / w[eligible].sum())
    return expected_distribution(names.iloc[pick].reset_index(drop=True), np.ones(count))


def weights_to_parquet(df: pd.DataFrame) -> bytes:
    from facelift.dataset import table_to_parquet_bytes

    if (df["weight"] < 0).any() or not np.isfinite(df["weight"]).all():
        raise RebalanceError("weights must be finite and >= 0")
    return table_to_parquet_bytes(pa.Table.from_pandas(df[["nconst", "name", "weight"]], schema=WEIGHTS_SCHEMA,
                                                       preserve_index=False))


def write_weights(df: pd.DataFrame, uri: str, endpoint_url: str | None = None) -> str:
    """Write the weights Parquet to a local path or object-store URI (atomic); returns its URI."""
    from facelift.storage import Store

    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name.endswith(".parquet"):
        raise RebalanceError(f"weights output must be a .parquet file, got {uri}")
    store = Store(parent or ".", endpoint_url)
    store.write_bytes(name, weights_to_parquet(df))
    return store.url(name)
