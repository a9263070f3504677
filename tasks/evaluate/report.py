"""Evaluation outputs: the Table 4 markdown, the timing table, a side-by-side grid, files under ``runs/``."""

from __future__ import annotations

import io
import json
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from facelift.storage import Store
from facelift.tasks.evaluate.metrics import SampleSizeError, fid_with_ci, kid

log = logging.getLogger(__name__)

EVAL_DIR = "evaluation"
BC_MIN_N_PER_DIM = 2  # the bias-corrected FID covered the true FID in simulation from N = 2·d on


def fid_columns(feats: np.ndarray, refs: dict[str, np.ndarray], rounds: int, seed: int) -> dict[str, Any]:
    """The table's FID columns: FID_schnell, FID_dev, FID_diff and their bias-corrected twins (``_bc``), each with
    its interval (``_ci_low`` / ``_ci_high``), the interval method and the feature dimension."""
    est = fid_with_ci(feats, refs, n_boot=rounds, seed=seed)
    out: dict[str, Any] = {"fid_ci_method": est["schnell"].method, "feature_dim": int(np.shape(feats)[1])}
    for key in ("schnell", "dev", "diff"):
        out.update(est[key].as_dict(f"fid_{key}"))
        out.update(est[f"{key}_bc"].as_dict(f"fid_{key}_bc"))
    return out


def kid_columns(name: str, feats: np.ndarray, ref: np.ndarray, n_subsets: int, subset_cap: int | None,
                seed: int) -> dict[str, Any]:
    """One KID's columns (value, std, interval, subset size, subsets, flag); too few images: NaN and a flag."""
    try:
        return {**kid(feats, ref, n_subsets, subset_cap, seed).as_dict(name), f"{name}_flag": ""}
    except SampleSizeError as exc:
        log.warning("%s not computed: %s", name, exc)
        nan = float("nan")
        return {name: nan, f"{name}_std": nan, f"{name}_ci_low": nan, f"{name}_ci_high": nan,
                f"{name}_subset_size": 0, f"{name}_subsets": 0, f"{name}_flag": str(exc)}


def intervals_violated(table: pd.DataFrame) -> list[str]:
    """``row: metric`` for every finite point estimate outside its own interval (should be none)."""
    bad = []
    for col in [c[: -len("_ci_low")] for c in table.columns if c.endswith("_ci_low")]:
        v, lo, hi = table[col], table[f"{col}_ci_low"], table[f"{col}_ci_high"]
        outside = v.notna() & lo.notna() & ((v < lo) | (v > hi))
        bad += [f"{r}: {col}" for r in table.loc[outside, "row"]]
    return bad


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
    return f"{_ci(r, name, 2, 1e3)} ± {1e3 * r[f'{name}_std']:.2f}"


def _bc(r: pd.Series) -> str:
    if r.get("n", 0) < BC_MIN_N_PER_DIM * r.get("feature_dim", math.inf):
        return f"n/a (N < {BC_MIN_N_PER_DIM}·d)"
    return _ci(r, "fid_diff_bc")


def table_caption(table: pd.DataFrame) -> str:
    """One line under the table: the split, N, the FID resize and feature network, the CLIP-IQA variant."""
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


def table_markdown(table: pd.DataFrame) -> str:
    """Paper Table 4 (FID_schnell, FID_dev, FID_diff, CLIP-IQA) plus KID, LPIPS-to-dev and 95% intervals,
    with N, the FID interval method and the KID subsets (size × count) on every row; under it the split, the
    FID resize and the CLIP-IQA variant when the table records them."""
    head = ("| row | N | FID_schnell | FID_dev | FID_diff ↑ | FID_diff bias-corr. | FID CI | KID_schnell ×10³ "
            "| KID_dev ×10³ | KID subsets | CLIP-IQA ↑ | LPIPS→dev ↓ | s/img |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for _, r in table.iterrows():
        sec = "" if pd.isna(r.get("seconds_per_image")) else f"{r['seconds_per_image']:.4f}"
        subsets = (f"{int(r['kid_schnell_subsets'])} × {int(r['kid_schnell_subset_size'])}"
                   if r.get("kid_schnell_subsets") else "none")
        lines.append(
            f"| {r['row']} | {r['n']} | {_ci(r, 'fid_schnell')} | {_ci(r, 'fid_dev')} | {_ci(r, 'fid_diff')} "
            f"| {_bc(r)} | {r.get('fid_ci_method', '')} | {_kid(r, 'kid_schnell')} | {_kid(r, 'kid_dev')} "
            f"| {subsets} | {_ci(r, 'clip_iqa')} | {_ci(r, 'lpips_dev')} | {sec} |"
        )
    caption = table_caption(table)
    return "\n".join(lines + (["", caption] if caption else []))


TABLE_NOTE = ("Brackets: 95% intervals. FID: half-sampling (delete-N/2 jackknife, t interval) around the plug-in "
              "FID; it targets FID at this N (plug-in FID is biased upward like 1/N, so compare rows at one N). "
              "FID_diff bias-corr.: 2·FID − mean over halves, targeting the population value, shown when "
              f"N >= {BC_MIN_N_PER_DIM} × the feature dimension. KID: mean over S random subsets of size m "
              "(m <= N/2) ± std over subsets, interval mean ± t·sd·√(m/(N−m) + 1/S). CLIP-IQA, LPIPS: percentile "
              "bootstrap of the mean. See docs/evaluate.md, Statistics.")


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
