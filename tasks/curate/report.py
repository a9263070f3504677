"""What a curation shows: the reasons table, kept % per split / shard / worker, histograms with their
thresholds, a sensitivity table, dropped examples side by side, duplicate clusters, and the kept fraction per
audited group. Written as ``report.md`` (with its PNGs) beside ``keep.parquet``; the flow publishes the same as
Prefect artifacts."""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import numpy as np
import pandas as pd

from facelift.dataset import Dataset, decode_image
from facelift.tasks.audit.report import to_markdown as _md
from facelift.tasks.curate.config import REASONS, Thresholds
from facelift.tasks.curate.decide import decide
from facelift.tasks.curate.run import Curation

log = logging.getLogger(__name__)
EXAMPLES = 8
THUMB = 80
HISTOGRAMS = (  # (title, statistic, threshold field)
    ("CLIP image cosine (scene_changed)", lambda s: s["clip_image"], "clip_image_min"),
    ("ArcFace cosine (identity_changed)", lambda s: s["identity"], "identity_min"),
    ("CLIP text cosine, lower image (off_prompt)", lambda s: np.fmin(s["clip_text_schnell"], s["clip_text_dev"]),
     "clip_text_min"),
    ("CLIP-IQA gain (no_improvement)", lambda s: s["iqa_dev"] - s["iqa_schnell"], "iqa_gain_min"),
    ("|dev - schnell| / median (no_change)",
     lambda s: s["mean_abs_diff"] / max(float(np.nanmedian(s["mean_abs_diff"])), 1e-9), "no_change_ratio"),
)


def reasons_table(cur: Curation, th: Thresholds) -> list[dict[str, Any]]:
    counts = cur.counts.set_index("reason")
    rows = []
    for r in REASONS:
        c = counts.loc[r.name]
        rows.append({"reason": r.name, "drops": "yes" if r.name in cur.enforced else "report only",
                     "rule": r.rule, "threshold": getattr(th, r.threshold) if r.threshold else "-",
                     "anchor": r.anchor, "failing": int(c["failing"]),
                     "dropped_by_this_alone": int(c["dropped_alone"]) if r.name in cur.enforced else 0,
                     "first_reason": int(c["first_reason"])})
    return rows


def kept_by(cur: Curation, column: str) -> pd.DataFrame:
    """Kept % per value of ``column`` (split, shard, worker); workers below mean - 3 sd are flagged."""
    df = cur.keep.merge(cur.scores[["pair_id", "shard", "worker"]], on="pair_id")
    df["worker"] = df["worker"].fillna("?")
    g = df.groupby(column)["keep"].agg(pairs="size", kept="sum").reset_index()
    g["kept_pct"] = (100 * g["kept"] / g["pairs"]).round(1)
    if column == "worker":
        mean, sd = g["kept_pct"].mean(), g["kept_pct"].std(ddof=0)
        g["flag"] = np.where((len(g) >= 3) & (g["kept_pct"] < mean - 3 * sd),
                             "LOW: check this node's GPU", "")
    return g


def sensitivity(cur: Curation, th: Thresholds) -> pd.DataFrame:
    """Kept % with every threshold x0.9, x1.0, x1.1 (duplicate clusters fixed at the chosen thresholds)."""
    dropped = set(cur.clusters.loc[~cur.clusters["kept"], "pair_id"]) if len(cur.clusters) else set()
    rows = []
    for f in (0.9, 1.0, 1.1):
        keep = decide(cur.scores, dropped, th.scaled(f), cur.enforced)
        rows.append({"thresholds": f"x{f}", "kept_pct": round(100 * float(keep["keep"].mean()), 1),
                     **{s: round(100 * float(g["keep"].mean()), 1) for s, g in keep.groupby("split")}})
    return pd.DataFrame(rows)


def histograms_png(cur: Curation, th: Thresholds) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HISTOGRAMS), figsize=(4 * len(HISTOGRAMS), 3))
    for ax, (title, stat, field) in zip(axes, HISTOGRAMS, strict=True):
        values = pd.to_numeric(stat(cur.scores), errors="coerce").dropna()
        if len(values):
            ax.hist(values, bins=40, color="#4c72b0")
        ax.axvline(getattr(th, field), color="#c44e52", linestyle="--", label=f"{field} {getattr(th, field)}")
        ax.set_title(f"{title}\n(n={len(values)})", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _thumb(cell: dict | None) -> np.ndarray:
    from PIL import Image

    try:
        im = decode_image(cell)
    except ValueError:
        return np.full((THUMB, THUMB, 3), 128, np.uint8)
    return np.asarray(im.resize((THUMB, THUMB), Image.Resampling.BILINEAR))


def examples_jpg(ds: Dataset, cur: Curation, reason: str) -> tuple[bytes, list[str]] | None:
    """Up to 8 pairs that ``reason`` drops (or flags): schnell | dev, one pair per row."""
    from PIL import Image

    hit = cur.keep[cur.keep["reasons"].map(lambda r: reason in r) | cur.keep["flagged"].map(lambda r: reason in r)]
    if hit.empty:
        return None
    picked = hit.head(EXAMPLES).merge(cur.scores[["pair_id", "shard"]], on="pair_id")
    tiles = []
    for shard, group in picked.groupby("shard"):
        table = ds.read_shard(int(shard), ["pair_id", "schnell_image", "dev_image"]).to_pandas()
        table = table[table["pair_id"].isin(group["pair_id"])]
        tiles += [(p, np.concatenate([_thumb(a), _thumb(b)], axis=1))
                  for p, a, b in zip(table["pair_id"], table["schnell_image"], table["dev_image"], strict=True)]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([t for _, t in tiles], axis=0)).save(buf, format="JPEG", quality=85)
    return buf.getvalue(), [p for p, _ in tiles]


def demographics(ds: Dataset, cur: Curation) -> pd.DataFrame | None:
    """Kept fraction per audited gender / race / age group, and the total variation distance between each
    attribute's distribution before and after curation; None when the dataset has no audit."""
    from facelift.tasks.audit.analyze import AuditError, load_audit

    for detector in ("retinaface", "opencv", "mtcnn", "ssd"):
        try:
            audit = load_audit(ds, detector)
        except AuditError:
            continue
        df = audit.merge(cur.keep[["pair_id", "keep"]], on="pair_id")
        df = df[df["face_detected"].fillna(False)]
        if df.empty:
            return None
        df["age_group"] = pd.cut(df["age"], [0, 30, 45, 60, 200], labels=["<30", "30-44", "45-59", "60+"])
        rows = []
        for attr in ("gender", "dominant_race", "age_group"):
            before = df[attr].value_counts(normalize=True)
            after = df.loc[df["keep"], attr].value_counts(normalize=True).reindex(before.index, fill_value=0)
            tvd = 0.5 * float((before - after).abs().sum())
            for value, g in df.groupby(attr, observed=True):
                rows.append({"attribute": attr, "group": str(value), "pairs": len(g),
                             "kept_pct": round(100 * float(g["keep"].mean()), 1), "tvd_before_after": round(tvd, 4)})
        return pd.DataFrame(rows)
    return None


def _img(data: bytes, alt: str) -> str:
    kind = "png" if data.startswith(b"\x89PNG") else "jpeg"
    return f"![{alt}](data:image/{kind};base64,{base64.b64encode(data).decode()})"


def build_report(ds: Dataset, cur: Curation, th: Thresholds) -> tuple[str, dict[str, bytes]]:
    """(markdown with embedded PNGs, the PNG files by name) of a decided curation; also written beside it."""
    info, files = cur.info, {"histograms.png": histograms_png(cur, th)}
    parts = [f"# Curation `{cur.curation_id}` of `{ds.dataset_id}`",
             f"Kept **{info['kept']} of {info['pairs']}** pairs ({100 * info['kept_fraction']:.1f} %); "
             f"files: `{cur.uri}`.",
             f"Models: {', '.join(f'{k} `{v}`' for k, v in info['models'].items())}."]
    if info.get("report_only_why"):
        parts.append(f"**Report only:** {', '.join(info['report_only'])} ({info['report_only_why']}).")
    parts += ["## Reasons", _md(pd.DataFrame(reasons_table(cur, th))),
              "## Kept per split", _md(kept_by(cur, "split")),
              "## Kept per worker (LOW: below mean - 3 sd, a bad GPU node?)", _md(kept_by(cur, "worker")),
              "## Shards with the lowest kept %", _md(kept_by(cur, "shard").sort_values("kept_pct").head(10)),
              "## Statistics and thresholds", _img(files["histograms.png"], "histograms"),
              "## Sensitivity (kept % per split)", _md(sensitivity(cur, th))]
    parts.append("## Dropped (or flagged) examples: schnell | dev")
    for r in REASONS:
        got = examples_jpg(ds, cur, r.name)
        if got:
            files[f"examples-{r.name}.jpg"] = got[0]
            scores = cur.scores.set_index("pair_id").loc[got[1], ["clip_image", "identity", "faces_schnell",
                                                                   "faces_dev", "iqa_schnell", "iqa_dev"]]
            parts += [f"### {r.name}", _img(got[0], r.name), _md(scores.round(3).reset_index())]
    if len(cur.clusters):
        sizes = cur.clusters.groupby("cluster")["pair_id"].agg(list).head(20)
        parts += [f"## Duplicate clusters ({cur.clusters['cluster'].nunique()}; first kept)",
                  "\n".join(f"- {', '.join(p)}" for p in sizes)]
    demo = demographics(ds, cur)
    parts += ["## Kept per audited group", _md(demo) if demo is not None else
              "No audit of this dataset (or no detected faces): run `facelift audit` to see this table."]
    md = "\n\n".join(parts) + "\n"
    out = ds.store.child(f"curation/{cur.curation_id}")
    for name, data in files.items():
        out.write_bytes(name, data)
    out.write_bytes("report.md", md.encode())
    return md, files
