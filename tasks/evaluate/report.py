"""Evaluation outputs: the Table 4 markdown, the timing table, a side-by-side grid, files under ``runs/``."""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import torch

from facelift.storage import Store
from facelift.tasks.evaluate.family import Family
from facelift.tasks.evaluate.forest import forest_plot
from facelift.tasks.evaluate.table import BC_MIN_N_PER_DIM, COMPARISONS, FID_AT_N, bias_corrected_valid, ordered

log = logging.getLogger(__name__)

EVAL_DIR = "evaluation"


def intervals_violated(table: pd.DataFrame) -> list[str]:
    """``row: metric`` for every finite point estimate outside its own interval (should be none)."""
    bad = []
    for col in [c[: -len("_ci_low")] for c in table.columns if c.endswith("_ci_low")]:
        v, lo, hi = table[col], table[f"{col}_ci_low"], table[f"{col}_ci_high"]
        outside = v.notna() & lo.notna() & ((v < lo) | (v > hi))
        bad += [f"{r}: {col}" for r in table.loc[outside, "row"]]
    return bad


def fid_below_zero(table: pd.DataFrame) -> list[str]:
    """``row: metric`` for every FID (not a difference) whose value or interval goes below 0 (should be none)."""
    cols = [c for c in table.columns if c.startswith(("fid_schnell", "fid_dev")) and not c.endswith("method")]
    return [f"{r['row']}: {c}" for _, r in table.iterrows() for c in cols if pd.notna(r[c]) and r[c] < 0]


def _ci(r: pd.Series, name: str, digits: int = 3, scale: float = 1.0) -> str:
    v, lo, hi = r.get(name), r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high")
    if v is None or pd.isna(v):
        return "n/a"
    if lo is None or hi is None or pd.isna(lo):
        return f"{scale * v:.{digits}f}"
    return f"{scale * v:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def _kid(r: pd.Series, name: str) -> str:
    if pd.isna(r.get(name)):
        return f"n/a ({r.get(f'{name}_flag') or 'not computed'})"
    return _ci(r, name, 2, 1e3)


def population_fid(table: pd.DataFrame) -> bool:
    """N >= 2·d: the bias-corrected FIDs are valid and shown (else the table leads with KID)."""
    if table.empty:
        return False
    r = table.iloc[0]
    return bool(bias_corrected_valid(r.get("n", 0), r.get("feature_dim", math.inf)))


Column = tuple[str, Callable[[pd.Series], str]]


def _subsets(r: pd.Series) -> str:
    return (f"{int(r['kid_schnell_subsets'])} × {int(r['kid_schnell_subset_size'])}"
            if r.get("kid_schnell_subsets") else "none")


def _seconds(r: pd.Series) -> str:
    return "" if pd.isna(r.get("seconds_per_image")) else f"{r['seconds_per_image']:.4f}"


def table_columns(table: pd.DataFrame) -> list[Column]:
    """The main table's columns, (header, cell of a row): with N >= 2·d the bias-corrected FIDs beside the FIDs at
    N; below that KID first and the FIDs marked * (not population rankings). Append to extend."""
    kid = [("KID_schnell ×10³", lambda r: _kid(r, "kid_schnell")), ("KID_dev ×10³ ↓", lambda r: _kid(r, "kid_dev")),
           ("KID subsets", _subsets)]
    if "cmmd_dev" in table.columns:
        kid.insert(2, ("CMMD_dev ×10³ ↓", lambda r: _kid(r, "cmmd_dev")))
    if population_fid(table):
        fid = [("FID_schnell", lambda r: _ci(r, "fid_schnell")), ("FID_dev ↓", lambda r: _ci(r, "fid_dev")),
               ("FID_diff ↑", lambda r: _ci(r, "fid_diff")),
               ("FID_schnell bias-corr.", lambda r: _ci(r, "fid_schnell_bc")),
               ("FID_dev bias-corr. ↓", lambda r: _ci(r, "fid_dev_bc")),
               ("FID_diff bias-corr. ↑", lambda r: _ci(r, "fid_diff_bc"))]
        lead = fid + [("FID CI", lambda r: str(r.get("fid_ci_method", "")))] + kid
    else:
        fid = [("FID_schnell*", lambda r: _ci(r, "fid_schnell")), ("FID_dev* ↓", lambda r: _ci(r, "fid_dev")),
               ("FID_diff* ↑", lambda r: _ci(r, "fid_diff"))]
        lead = kid + fid + [("FID CI", lambda r: str(r.get("fid_ci_method", "")))]
    return [("row", lambda r: str(r["row"])), ("N", lambda r: str(r["n"])), *lead,
            ("CLIP-IQA ↑", lambda r: _ci(r, "clip_iqa")), ("LPIPS→dev ↓", lambda r: _ci(r, "lpips_dev")),
            ("s/img", _seconds)]


def _markdown(columns: list[Column], rows: Iterable[pd.Series]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]


def table_caption(table: pd.DataFrame) -> str:
    """Lines under the table: the split, N, the FID resize and feature network, the CLIP-IQA variant; below
    N = 2·d, that FID rankings at this N are not population rankings."""
    if table.empty or "split" not in table.columns:
        return ""
    r = table.iloc[0]
    parts = [f"Pairs: {r['split']} split only ({r.get('split_rule', '')}), {r.get('n_test', '?')} test pairs, "
             f"N = {r['n']} per set (input half) vs {r['n_reference']} reference pairs"]
    if "fid_resize" in table.columns:
        parts.append(f"FID: {r.get('feature_network', '')}, resize {r['fid_resize']}")
    if "clip_iqa_model" in table.columns:
        parts.append(f"CLIP-IQA: {r['clip_iqa_model']} ({r.get('clip_iqa_variant', '')})")
    return ". ".join(parts) + "."


def fid_note(table: pd.DataFrame) -> str:
    if table.empty or population_fid(table) or "feature_dim" not in table.columns:
        return ""
    r = table.iloc[0]
    return (f"\\* FID at N = {r['n']} < {BC_MIN_N_PER_DIM}·d = {BC_MIN_N_PER_DIM * int(r['feature_dim'])}: plug-in "
            "FID is biased upward by an amount that depends on each row, so FID rankings at this N are not "
            "population rankings, and the paired Δ FIDs get no verdict. Rank by KID and CMMD (unbiased at any N) "
            "and their paired comparisons.")


def _delta(r: pd.Series, key: str, scale: float = 1.0) -> str:
    if key.startswith("d_fid") and r.get("d_fid_target") == FID_AT_N and pd.notna(r.get(key)):
        return f"{_ci(r, key, 4)} (at N, not a ranking)"
    word = r.get(f"{key}_verdict") or ""
    digits = 2 if scale != 1.0 else 4
    return f"{_ci(r, key, digits, scale)} {word}".strip()


def _comparisons(table: pd.DataFrame) -> list:
    """The comparisons in the table's order: its primary first, and without the Δ FIDs below N = 2·d."""
    r = table.iloc[0]
    comparisons = ordered(r.get("primary") or COMPARISONS[0].key)
    if r.get("d_fid_target") == FID_AT_N:  # shown last, with no verdict
        comparisons = tuple(c for c in comparisons if not c.key.startswith("d_fid")) + tuple(
            c for c in comparisons if c.key.startswith("d_fid"))
    return [c for c in comparisons if c.key in table.columns]


def family_line(table: pd.DataFrame) -> str:
    """What the verdicts control: the family, its level and method."""
    r = table.iloc[0]
    if pd.isna(r.get("family_size")):
        return ""
    family = Family(int(r["family_size"]), float(r["family_alpha"]))
    return (f"Family: every row × every Δ with a verdict, {family.describe()}: the chance of any false better/worse "
            f"in this table is at most {100 * family.alpha:g}%. Primary: {r['primary']}. inconclusive = the interval "
            "includes 0 (not equivalence).")


def comparison_markdown(table: pd.DataFrame) -> str:
    """Each row minus the baseline row: paired intervals that hold simultaneously at the family's level, each
    ending with better / worse / inconclusive; the primary comparison first; the Δ FIDs below N = 2·d last, marked
    "at N, not a ranking", with no verdict. Empty without a ``baseline`` column."""
    if table.empty or "baseline" not in table.columns:
        return ""
    base = table.iloc[0]["baseline"]
    target = table.iloc[0].get("d_fid_target", "")
    cols: list[Column] = [("row", lambda r: str(r["row"]))]
    for c in _comparisons(table):
        cols.append((c.label, lambda r, k=c.key, s=c.scale: _delta(r, k, s)))
    rows = [r for _, r in table.iterrows() if r["row"] != base]
    head = (f"Paired comparisons with the baseline row `{base}` (Δ = row − {base}; the same inputs, halves, "
            f"subsets and images for every row; Δ FID: {target}):")
    return "\n".join([head, "", *_markdown(cols, rows), "", family_line(table)])


def comparison_columns(table: pd.DataFrame) -> list[str]:
    """The table's paired-comparison columns (baseline, each Δ with its interval, p-value and verdict)."""
    keys = [f"{c.key}{s}" for c in COMPARISONS for s in ("", "_ci_low", "_ci_high", "_p", "_verdict")]
    return [c for c in ["baseline", *keys, "primary", "family_size", "family_alpha", "family_method"]
            if c in table.columns]


def table_markdown(table: pd.DataFrame) -> str:
    """Paper Table 4 (FID_schnell, FID_dev, FID_diff, CLIP-IQA) plus KID, LPIPS-to-dev and 95% intervals, with
    N, the FID interval method and the KID subsets (count × size) on every row; under it the split, the FID
    resize and the CLIP-IQA variant when the table records them; then the paired comparisons with the baseline."""
    lines = _markdown(table_columns(table), (r for _, r in table.iterrows()))
    notes = [n for n in (fid_note(table), table_caption(table)) if n]
    if notes:
        lines += ["", *notes]
    paired = comparison_markdown(table)
    return "\n".join(lines + (["", paired] if paired else []))


TABLE_NOTE = (
    "Brackets: 95% intervals (the paired Δs: simultaneous, see the family line). FID: every row from the same "
    "halves and quarters of the input and reference sets (joint resampling, variance a/N + b/N² fitted from the "
    "halves and quarters of at least d images, t interval); the FID at N is biased upward like 1/N, its interval is "
    "on the log scale (never below 0). Bias-corrected FID (2·FID − FID on halves, truncated at 0) targets the "
    f"population FID and is shown when N >= {BC_MIN_N_PER_DIM} × the feature dimension (else NaN, and no verdict on "
    "a Δ FID). KID: mean over S random subsets of size m (m <= N/2), with its standard error from the spread of "
    "subsets of m and m/2. CMMD: the unbiased RBF-kernel MMD² on CLIP embeddings, like KID. CLIP-IQA, LPIPS: mean "
    "with a t interval. Paired comparisons: the same resampling for both rows, per-image differences for CLIP-IQA "
    "and LPIPS; their intervals hold simultaneously (family-wise) and give the verdicts. See docs/evaluate.md, "
    "Statistics.")


def _spread(r: pd.Series, col: str, digits: int) -> str:
    lo, hi = r.get(f"{col}_min"), r.get(f"{col}_max")
    if lo is None or pd.isna(lo):
        return f"{r[col]:.{digits}f}"
    return f"{r[col]:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def timing_markdown(timing: pd.DataFrame) -> str:
    """Seconds per image: the median over the repeats, [min–max] beside it."""
    lines = ["| resolution | repeats | dev T2I s/img | schnell T2I s/img | head s/img | schnell + head s/img | saved |",
             "|---|---|---|---|---|---|---|"]
    for _, r in timing.iterrows():
        reps = "" if pd.isna(r.get("repeats")) else int(r["repeats"])
        cells = [_spread(r, "dev_t2i_s", 4), _spread(r, "schnell_t2i_s", 4), _spread(r, "head_s", 5),
                 _spread(r, "schnell_head_s", 4), _spread(r, "saved_pct", 1) + "%"]
        lines.append(f"| {int(r.resolution)}² | {reps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def image_grid(columns: list[tuple[str, torch.Tensor]], n: int, cell: int = 128) -> bytes:
    """PNG: one column per row of the table (label on top), the first ``n`` input pairs down."""
    from PIL import Image, ImageDraw

    n = min(n, *(len(t) for _, t in columns))
    label_h = 16
    grid = Image.new("RGB", (cell * len(columns), label_h + cell * n), "white")
    draw = ImageDraw.Draw(grid)
    for j, (label, images) in enumerate(columns):
        draw.text((j * cell + 3, 2), label[: cell // 6], fill="black")
        for i in range(n):
            img = Image.fromarray(images[i].permute(1, 2, 0).numpy()).resize((cell, cell), Image.BICUBIC)
            grid.paste(img, (j * cell, label_h + i * cell))
    buf = io.BytesIO()
    grid.save(buf, "PNG")
    return buf.getvalue()


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_outputs(run: Store, table: pd.DataFrame, timing: pd.DataFrame | None, grid_png: bytes,
                  timing_png: bytes | None, meta: dict[str, Any]) -> dict[str, str]:
    """Write the evaluation files under ``<run>/evaluation/``; returns name -> URI."""
    report = [f"# Evaluation {meta.get('run_id', '')}", "",
              f"Dataset `{meta.get('dataset_uri')}`, {meta.get('split', 'test')} split only "
              f"({meta.get('split_rule')}; {meta.get('n_test')} test pairs): {meta.get('n_input')} input pairs, "
              f"{meta.get('n_reference')} reference pairs, {meta.get('size')}px; FID resize "
              f"{meta.get('fid_resize')}. FID_diff = FID_schnell − FID_dev (higher = closer to dev). "
              + TABLE_NOTE, "",
              "## Quality (paper Table 4 + KID, LPIPS-to-dev)", "", table_markdown(table), "",
              f"Metric networks: {meta.get('metrics')}", ""]
    files: dict[str, bytes] = {
        "table.parquet": _parquet(table), "table.csv": table.to_csv(index=False).encode(), "grid.png": grid_png,
    }
    forest = forest_plot(table)
    if forest:
        report += ["![paired comparisons, simultaneous intervals](forest.png)", ""]
        files["forest.png"] = forest
    if timing is not None:
        report += ["## Timing (paper Fig. 8)", "", timing_markdown(timing), "", "![timing](timing.png)", ""]
        files["timing.parquet"] = _parquet(timing)
        files["timing.csv"] = timing.to_csv(index=False).encode()
        if timing_png:
            files["timing.png"] = timing_png
    report += ["## Samples", "", "![grid](grid.png)", ""]
    files["report.md"] = "\n".join(report).encode()
    files["summary.json"] = json.dumps({**meta, "table": table.to_dict("records"),
                                        "timing": None if timing is None else timing.to_dict("records")},
                                       indent=2, default=str).encode()
    out = {}
    for name, data in files.items():
        run.write_bytes(f"{EVAL_DIR}/{name}", data)
        out[name] = run.url(f"{EVAL_DIR}/{name}")
    log.info("evaluation written to %s", run.url(EVAL_DIR))
    return out
