"""Evaluation outputs: the Table 4 markdown, the timing table, a side-by-side grid, files under ``runs/``."""

from __future__ import annotations

import io
import json
import logging
import math
from typing import Any

import pandas as pd
import torch

from facelift.storage import Store

log = logging.getLogger(__name__)

EVAL_DIR = "evaluation"


def _ci(r: pd.Series, name: str, digits: int = 3) -> str:
    v, lo, hi = r[name], r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high")
    if lo is None or hi is None or math.isnan(lo):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table_markdown(table: pd.DataFrame) -> str:
    """Paper Table 4 (FID_schnell, FID_dev, FID_diff, CLIP-IQA) plus KID, LPIPS-to-dev and 95% CIs."""
    head = ("| row | N | FID_schnell | FID_dev | FID_diff ↑ | KID_schnell ×10³ | KID_dev ×10³ | CLIP-IQA ↑ "
            "| LPIPS→dev ↓ | s/img |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for _, r in table.iterrows():
        sec = "" if pd.isna(r.get("seconds_per_image")) else f"{r['seconds_per_image']:.4f}"
        lines.append(
            f"| {r['row']} | {r['n']} | {_ci(r, 'fid_schnell')} | {_ci(r, 'fid_dev')} | {_ci(r, 'fid_diff')} "
            f"| {1e3 * r['kid_schnell']:.2f} ± {1e3 * r['kid_schnell_std']:.2f} "
            f"| {1e3 * r['kid_dev']:.2f} ± {1e3 * r['kid_dev_std']:.2f} | {_ci(r, 'clip_iqa')} "
            f"| {_ci(r, 'lpips_dev')} | {sec} |"
        )
    return "\n".join(lines)


def timing_markdown(timing: pd.DataFrame) -> str:
    lines = ["| resolution | dev T2I s/img | schnell T2I s/img | head s/img | schnell + head s/img | saved |",
             "|---|---|---|---|---|---|"]
    for _, r in timing.iterrows():
        lines.append(f"| {int(r.resolution)}² | {r.dev_t2i_s:.4f} | {r.schnell_t2i_s:.4f} | {r.head_s:.5f} "
                     f"| {r.schnell_head_s:.4f} | {r.saved_pct:.1f}% |")
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
              f"Dataset `{meta.get('dataset_uri')}`, held-out split (val_fraction {meta.get('val_fraction')}): "
              f"{meta.get('n_input')} input pairs, {meta.get('n_reference')} reference pairs, "
              f"{meta.get('size')}px. FID_diff = FID_schnell − FID_dev (higher = closer to dev). "
              "Brackets: 95% bootstrap CIs; KID: mean ± std over subsets.", "",
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
