"""Decide from stored scores and write the curation: ``<dataset>/curation/<curation_id>/``.

- ``keep.parquet``: pair_id, split, keep, reasons, first_reason (and report-only ``flagged``)
- ``curation.json``: config, models, counts, versions
- ``latest.json`` beside the curations names the newest one that passed its guard (``--curation latest``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from facelift import done
from facelift.dataset import Dataset, read_parquet_bytes, table_to_parquet_bytes
from facelift.ids import check_id
from facelift.tasks.curate.config import REASONS, CurateConfig, curation_id
from facelift.tasks.curate.decide import decide_masks, reason_counts, reason_masks
from facelift.tasks.curate.dedup import near_duplicates
from facelift.tasks.curate.score import CURATION_DIR, load_scores

log = logging.getLogger(__name__)
LATEST = f"{CURATION_DIR}/latest.json"


class CurationError(RuntimeError):
    """A curation cannot run, or would drop too much (then ``curation`` holds what was decided, for the report)."""

    def __init__(self, message: str, curation: Curation | None = None) -> None:
        super().__init__(message)
        self.curation = curation


def is_tiny(ds: Dataset) -> bool:
    return ds.info().get("config", {}).get("profile") == "tiny"


@dataclass
class Curation:
    """A decided curation: what was written, and the frames the report is made of."""

    curation_id: str
    uri: str
    scores: pd.DataFrame
    keep: pd.DataFrame
    clusters: pd.DataFrame
    counts: pd.DataFrame
    enforced: frozenset[str]
    info: dict[str, Any] = field(default_factory=dict)


def decide_curation(ds: Dataset, key: str, models: dict[str, str], cfg: CurateConfig,
                    shards: list[int]) -> Curation:
    """Dedup and decide from the stored scores (no model runs); writes keep.parquet and curation.json. Raises
    :class:`CurationError` (after writing, so the report shows why) if it keeps less than the guard allows."""
    tiny = is_tiny(ds)
    enforced = cfg.enforced(tiny)
    cid = curation_id(done.dataset_identity(ds), key, cfg, enforced)
    scores = load_scores(ds, key, shards).to_pandas()
    scores["split"] = ds.splits().assign(scores["pair_id"])
    th = cfg.thresholds
    # CLIP's near-copy edges count only where CLIP is trusted to decide (its scene_changed filter is enforced)
    clip_dedup = "scene_changed" in enforced
    clusters = near_duplicates(scores, th.phash_max, th.dup_clip_min if clip_dedup else None)
    dropped = set(clusters.loc[~clusters["kept"], "pair_id"]) if len(clusters) else set()
    masks = reason_masks(scores, dropped, th)
    keep = decide_masks(scores, masks, enforced)
    counts = reason_counts(keep, masks)
    out = ds.store.child(f"{CURATION_DIR}/{cid}")
    out.write_bytes("keep.parquet", table_to_parquet_bytes(pa.Table.from_pandas(keep, preserve_index=False)))
    kept = float(keep["keep"].mean()) if len(keep) else 0.0
    info = {
        "curation_id": cid, "dataset_uri": ds.uri, "scores_key": key, "models": models,
        "config": cfg.model_dump(mode="json"), "enforced": sorted(enforced),
        "report_only": sorted({r.name for r in REASONS} - enforced),
        "report_only_why": ("tiny profile: random-weight models and faceless pictures, so the semantic filters "
                            "report only" if tiny and cfg.report_only is None else None),
        "pairs": len(keep), "kept": int(keep["keep"].sum()), "kept_fraction": kept,
        "kept_by_split": {s: int(g["keep"].sum()) for s, g in keep.groupby("split")},
        "dedup": "pHash and CLIP" if clip_dedup else "pHash only (CLIP reports only here)",
        "counts": counts.to_dict("records"), "duplicate_clusters": int(clusters["cluster"].nunique())
        if len(clusters) else 0, "passed_guard": kept >= cfg.min_kept_fraction,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_bytes("curation.json", json.dumps(info, indent=1, default=str).encode())
    cur = Curation(cid, out.url(), scores, keep, clusters, counts, enforced, info)
    if not info["passed_guard"]:
        raise CurationError(f"curation {cid} of {ds.dataset_id} would keep {kept:.0%} of {len(keep)} pairs, below "
                            f"min_kept_fraction {cfg.min_kept_fraction:.0%} (first reasons: "
                            f"{_top_reasons(keep)}); see {out.url('report.md')}", cur)
    ds.store.write_bytes(LATEST, json.dumps({"curation_id": cid, "created_at": info["created_at"]}).encode())
    return cur


def _top_reasons(keep: pd.DataFrame) -> str:
    top = keep["first_reason"].value_counts().head(3)
    return ", ".join(f"{r} {n}" for r, n in top.items()) or "none"


def resolve_curation(ds: Dataset, curation: str | None) -> str | None:
    """A curation id for ``--curation``: ``latest`` names the newest that passed; None: no curation."""
    if curation in (None, "", "none"):
        return None
    if curation == "latest":
        try:
            return json.loads(ds.store.read_bytes(LATEST))["curation_id"]
        except FileNotFoundError:
            raise CurationError(f"dataset {ds.dataset_id} has no curation yet: run `facelift curate {ds.uri}` "
                                "first, or train without --curation") from None
    check_id(curation, "curation id")
    if not ds.store.exists(f"{CURATION_DIR}/{curation}/keep.parquet"):
        raise CurationError(f"dataset {ds.dataset_id} has no curation {curation!r} (no "
                            f"{ds.store.url(f'{CURATION_DIR}/{curation}/keep.parquet')})")
    return curation


def kept_pairs(ds: Dataset, curation_id: str) -> frozenset[str]:
    """The pair ids a curation keeps."""
    table = read_parquet_bytes(ds.store.read_bytes(f"{CURATION_DIR}/{curation_id}/keep.parquet"),
                               columns=["pair_id", "keep"])
    df = table.to_pandas()
    return frozenset(df.loc[df["keep"], "pair_id"])
