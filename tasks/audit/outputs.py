"""Write an audit run's outputs under ``runs/<run_id>/``: report, Table 1, failure list, t-SNE and plots.

```
report.json     summaries per prompt mode, Table 1 rows, distances between the modes, t-SNE stats
table1.md/.csv  the paper's Table 1, baseline vs enriched side by side
failures.csv    every image without an analysed face (no face detected, or unreadable)
tsne.parquet    dataset_id, label, pair_id, x, y, race, gender (joinable with the per-image audit)
tsne_race.png, tsne_gender.png (and tsne_prompt.png with several datasets)
```
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from facelift.dataset import Dataset
from facelift.storage import Store
from facelift.tasks.audit import report as audit_report
from facelift.tasks.audit.analyze import load_audit, prompt_mode
from facelift.tasks.audit.tsne import GENDER_COLORS, RACE_COLORS, plot_tsne, tsne_embed

log = logging.getLogger(__name__)


@dataclass
class AuditOutputs:
    run_uri: str
    report: dict[str, Any]
    table1: pd.DataFrame
    table1_markdown: str
    plots: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes
    files: list[str] = field(default_factory=list)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(obj: Any) -> Any:
    """JSON has no Infinity/NaN: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def collect(datasets: list[Dataset], detector: str, images: tuple[str, ...]
            ) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """Per-image results of each dataset's audit, keyed by a unique label (prompt mode)."""
    modes = [prompt_mode(ds) for ds in datasets]
    labels = audit_report.unique_labels(modes, [ds.dataset_id for ds in datasets])
    audits, meta = {}, {}
    for label, ds, mode in zip(labels, datasets, modes, strict=True):
        audits[label] = load_audit(ds, detector, images)
        meta[label] = {"dataset_id": ds.dataset_id, "dataset_uri": ds.uri, "prompt_mode": mode}
    return audits, meta


def tsne_frame(audits: dict[str, pd.DataFrame], meta: dict[str, dict[str, Any]], perplexity: float,
               max_fit: int, seed: int) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """Joint t-SNE of the schnell-image embeddings of every audit (so the modes share one map)."""
    parts = []
    for label, df in audits.items():
        rows = df[(df["image"] == "schnell") & df["embedding"].map(lambda e: e is not None and len(e) > 0)]
        parts.append(pd.DataFrame({"dataset_id": meta[label]["dataset_id"], "label": label,
                                   "pair_id": rows["pair_id"].to_numpy(),
                                   "race": rows["dominant_race"].to_numpy(),
                                   "gender": rows["gender"].str.lower().to_numpy(),
                                   "embedding": rows["embedding"].to_numpy()}))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(frame) < 4:
        log.warning("t-SNE skipped: %d embeddings (at least 4 needed)", len(frame))
        return None
    x = np.stack([np.asarray(e, dtype=np.float32) for e in frame["embedding"]])
    result = tsne_embed(x, perplexity=perplexity, max_fit=max_fit, seed=seed)
    frame = frame.drop(columns="embedding").assign(x=result.coords[:, 0], y=result.coords[:, 1])
    stats = {"points": len(frame), "fitted": result.fitted, "placed": result.placed,
             "perplexity": result.perplexity, "gradient": result.gradient, "seconds": round(result.seconds, 3)}
    return frame, stats


def failures_frame(audits: dict[str, pd.DataFrame], meta: dict[str, dict[str, Any]]) -> pd.DataFrame:
    cols = ["dataset_id", "label", "pair_id", "image", "reason"]
    parts = []
    for label, df in audits.items():
        bad = df[~df["face_detected"].fillna(False).astype(bool)]
        parts.append(pd.DataFrame({"dataset_id": meta[label]["dataset_id"], "label": label,
                                   "pair_id": bad["pair_id"].to_numpy(), "image": bad["image"].to_numpy(),
                                   "reason": bad["error"].fillna("no face detected").to_numpy()}))
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def write_outputs(datasets: list[Dataset], detector: str, out: Store, include_dev: bool = False,
                  tsne: bool = True, perplexity: float = 30.0, tsne_max_fit: int = 20_000, seed: int = 0
                  ) -> AuditOutputs:
    """Aggregate the stored audits of ``datasets`` and write every output file into ``out``."""
    images = ("schnell", "dev") if include_dev else ("schnell",)
    audits, meta = collect(datasets, detector, images)
    # Table 1 describes the schnell images (what the dataset's inputs look like); dev gets its own columns.
    main = {label: df[df["image"] == "schnell"] for label, df in audits.items()}
    report = audit_report.report(main, meta)
    report["detector"] = detector
    if include_dev:
        report["dev"] = audit_report.report({label: df[df["image"] == "dev"] for label, df in audits.items()},
                                            meta)
    table = audit_report.table1({label: s for label, s in report["audits"].items()})
    markdown = audit_report.to_markdown(table)
    outputs = AuditOutputs(run_uri=out.url(), report=report, table1=table, table1_markdown=markdown)

    failures = failures_frame(audits, meta)
    out.write_bytes("failures.csv", failures.to_csv(index=False).encode())
    out.write_bytes("table1.md", (markdown + "\n").encode())
    out.write_bytes("table1.csv", table.to_csv(index=False).encode())
    outputs.files += ["failures.csv", "table1.md", "table1.csv"]

    if tsne:
        embedded = tsne_frame(main, meta, perplexity, tsne_max_fit, seed)
        if embedded is not None:
            frame, stats = embedded
            report["tsne"] = stats
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            out.write_bytes("tsne.parquet", buf.getvalue())
            outputs.files.append("tsne.parquet")
            coords = frame[["x", "y"]].to_numpy()
            groups = frame["label"].tolist()
            n = len(frame)
            outputs.plots["tsne_race.png"] = plot_tsne(
                coords, frame["race"].tolist(), f"ArcFace t-SNE by perceived race (n={n})", RACE_COLORS, groups)
            outputs.plots["tsne_gender.png"] = plot_tsne(
                coords, frame["gender"].tolist(), f"ArcFace t-SNE by perceived gender (n={n})", GENDER_COLORS,
                groups)
            if len(main) > 1:
                outputs.plots["tsne_prompt.png"] = plot_tsne(
                    coords, groups, f"ArcFace t-SNE by prompt (n={n})")
            for name, png in outputs.plots.items():
                out.write_bytes(name, png)
                outputs.files.append(name)

    out.write_bytes("report.json", json.dumps(_finite(report), indent=2, default=_json_default).encode())
    outputs.files.append("report.json")
    return outputs

