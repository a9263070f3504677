"""Aggregate per-image audit results: the paper's Table 1, one column per prompt mode.

Perceived gender (M:F), age buckets (under 18, 18-30, 31-50, 50+) and dominant race over DeepFace's six
groups, computed over the images where a face was analysed; the detection-failure rate over all images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from facelift.tasks.audit.analyze import RACES

AGE_BUCKETS: tuple[str, ...] = ("under 18", "18-30", "31-50", "50+")
GENDER_KEYS: tuple[str, ...] = ("man", "woman")
CATEGORIES: dict[str, tuple[str, ...]] = {"race": RACES, "gender": GENDER_KEYS, "age": AGE_BUCKETS}


def age_bucket(age: float | None) -> str | None:
    """18-30 / 31-50 / 50+ as in the paper (ages are DeepFace's whole-year estimates); None if unknown."""
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return None
    if age < 18:
        return "under 18"
    if age < 31:
        return "18-30"
    if age < 51:
        return "31-50"
    return "50+"


def attribute_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Analysed faces only, with one categorical column per audited attribute (race, gender, age)."""
    faces = df[df["face_detected"].fillna(False).astype(bool)]
    return pd.DataFrame({
        "race": faces["dominant_race"].to_numpy(),
        "gender": faces["gender"].str.lower().to_numpy(),
        "age": [age_bucket(a) for a in faces["age"].to_numpy(dtype=float)],
    }, index=faces.index)


def distribution(labels: pd.Series | list[Any], categories: tuple[str, ...],
                 weights: np.ndarray | None = None) -> dict[str, float]:
    """Share of each category (zeros included); all zeros when there is nothing to count."""
    s = pd.Series(list(labels))
    w = pd.Series(np.ones(len(s)) if weights is None else np.asarray(weights, dtype=float))
    totals = w.groupby(s.to_numpy()).sum() if len(s) else pd.Series(dtype=float)
    total = float(totals.reindex(list(categories)).fillna(0).sum())
    return {c: (float(totals.get(c, 0.0)) / total if total > 0 else 0.0) for c in categories}


def distributions(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    attrs = attribute_frame(df)
    return {attr: distribution(attrs[attr], cats) for attr, cats in CATEGORIES.items()}


def tv_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Total variation distance between two distributions over the same categories (0 = equal, 1 = disjoint)."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Counts and shares for one set of per-image results."""
    n = len(df)
    errors = int(df["error"].notna().sum())
    faces = int(df["face_detected"].fillna(False).astype(bool).sum())
    attrs = attribute_frame(df)
    men = int((attrs["gender"] == "man").sum())
    women = int((attrs["gender"] == "woman").sum())
    ages = df.loc[attrs.index, "age"].astype(float)
    no_face_rows = df[~df["face_detected"].fillna(False).astype(bool) & df["error"].isna()]
    return {
        "images": n, "faces": faces, "no_face": int(len(no_face_rows)), "errors": errors,
        "detection_failure_rate": (n - faces) / n if n else 0.0,
        "men": men, "women": women,
        "male_to_female": (men / women) if women else (math.inf if men else None),
        "mean_age": float(ages.mean()) if len(ages) else None,
        "gender": distribution(attrs["gender"], GENDER_KEYS),
        "age": distribution(attrs["age"], AGE_BUCKETS),
        "race": distribution(attrs["race"], RACES),
        "no_face_pair_ids": no_face_rows["pair_id"].tolist(),
        "error_pair_ids": df.loc[df["error"].notna(), "pair_id"].tolist(),
    }


def _ratio(summary: Mapping[str, Any]) -> str:
    ratio = summary["male_to_female"]
    if ratio is None:
        return "n/a"
    return f"{summary['men']}:0" if math.isinf(ratio) else f"{ratio:.2f}:1"


def table1(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Table 1: one row per statistic, one column per labelled audit (e.g. baseline, enriched)."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    rows: list[tuple[str, dict[str, str]]] = [
        ("images", {k: str(s["images"]) for k, s in summaries.items()}),
        ("faces analysed", {k: str(s["faces"]) for k, s in summaries.items()}),
        ("detection failures", {k: pct(s["detection_failure_rate"]) for k, s in summaries.items()}),
        ("gender M:F", {k: _ratio(s) for k, s in summaries.items()}),
        ("man", {k: pct(s["gender"]["man"]) for k, s in summaries.items()}),
        ("woman", {k: pct(s["gender"]["woman"]) for k, s in summaries.items()}),
    ]
    rows += [(f"age {b}", {k: pct(s["age"][b]) for k, s in summaries.items()}) for b in AGE_BUCKETS]
    rows += [(f"race {r}", {k: pct(s["race"][r]) for k, s in summaries.items()}) for r in RACES]
    return pd.DataFrame([{"statistic": name, **vals} for name, vals in rows])


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def unique_labels(modes: list[str], dataset_ids: list[str]) -> list[str]:
    """Column labels: the prompt mode, with the dataset id where two audits share a mode."""
    return [m if modes.count(m) == 1 else f"{m} ({d})" for m, d in zip(modes, dataset_ids, strict=True)]


def report(audits: Mapping[str, pd.DataFrame], meta: Mapping[str, Mapping[str, Any]] | None = None
           ) -> dict[str, Any]:
    """The JSON report: summaries per label, Table 1 rows, and distances between the audits' distributions."""
    summaries = {label: summarize(df) for label, df in audits.items()}
    def brief(s: Mapping[str, Any]) -> dict[str, Any]:  # full failure lists belong in failures.csv
        lists = {"no_face_pair_ids": "no_face_examples", "error_pair_ids": "error_examples"}
        return {lists.get(k, k): (v[:20] if k in lists else v) for k, v in s.items()}

    out: dict[str, Any] = {"audits": {label: {**dict((meta or {}).get(label, {})), **brief(s)}
                                      for label, s in summaries.items()},
                           "table1": table1(summaries).to_dict("records")}
    labels = list(summaries)
    if len(labels) >= 2:
        out["tv_distance"] = {
            f"{a} vs {b}": {attr: tv_distance(summaries[a][attr], summaries[b][attr]) for attr in CATEGORIES}
            for i, a in enumerate(labels) for b in labels[i + 1:]
        }
    return out
