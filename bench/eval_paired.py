"""The worked example of docs/evaluate.md: two heads whose own intervals overlap, and their paired difference,
through the evaluation's own table code (``tasks.evaluate.table.metric_columns`` + ``report.table_markdown``)
on simulated features with a known answer (``tasks.evaluate.simulate``), and its forest plot (``--forest``).
The coverage against N/d: ``bench/eval_coverage.py``.

    .venv/bin/python bench/eval_paired.py [--n 512] [--seed 3] [--forest docs/results/eval_forest.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from facelift.tasks.evaluate.forest import forest_plot
from facelift.tasks.evaluate.report import table_markdown
from facelift.tasks.evaluate.simulate import ROWS, scenarios
from facelift.tasks.evaluate.table import metric_columns


def example(n: int, seed: int, forest: Path | None = None) -> str:
    sc = scenarios(n=n)[1]  # separated: head_a and head_b close to each other, far from schnell
    rows, refs = sc.draw(np.random.default_rng(seed))
    feats = [rows[k] for k in ROWS]
    clip = [1 / (1 + np.exp(-f.mean(1))) for f in feats]  # a per-image score that moves with the features
    lpips = [np.abs(f - rows["dev"]).mean(1) / 4 for f in feats]
    unit = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in feats]  # CLIP-like embeddings for CMMD
    ref = refs["dev"] / np.linalg.norm(refs["dev"], axis=1, keepdims=True)
    cols = metric_columns(feats, refs, clip, lpips, baseline=ROWS.index("head_a"), kid_subsets=100, seed=seed,
                          clip=unit, clip_ref=ref)
    table = pd.DataFrame.from_records([{"row": r, "n": n, "n_reference": n, "baseline": "head_a", **c}
                                       for r, c in zip(ROWS, cols, strict=True)])
    truth = ", ".join(f"{r} {sc.true_fid(r, 'dev'):.3f}" for r in ROWS)
    a, b = table.set_index("row").loc["head_a"], table.set_index("row").loc["head_b"]
    overlap = a["fid_dev_bc_ci_low"] <= b["fid_dev_bc_ci_high"] and b["fid_dev_bc_ci_low"] <= a["fid_dev_bc_ci_high"]
    if forest:
        forest.write_bytes(forest_plot(table))
    return "\n".join([
        f"Scenario `{sc.name}`, d = {sc.d}, N = {n} per set, seed {seed}. Population FID_dev: {truth}.", "",
        table_markdown(table), "",
        f"head_a vs head_b, their own bias-corrected FID_dev intervals overlap: {bool(overlap)}; paired Δ FID_dev "
        f"(head_b − head_a) {b['d_fid_dev']:.3f} [{b['d_fid_dev_ci_low']:.3f}, {b['d_fid_dev_ci_high']:.3f}]: "
        f"{b['d_fid_dev_verdict']} (population Δ {sc.true_fid('head_b', 'dev') - sc.true_fid('head_a', 'dev'):.3f})."])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--forest", type=Path, default=None, help="write the forest plot of the paired Δs here")
    args = p.parse_args()
    print(example(args.n, args.seed, args.forest))


if __name__ == "__main__":
    main()
