"""The worked example of docs/evaluate.md: two heads whose own intervals overlap, and their paired difference,
through the evaluation's own table code (``tasks.evaluate.table.metric_columns`` + ``report.table_markdown``)
on simulated features with a known answer (``tasks.evaluate.simulate``); ``--coverage`` adds the coverage table
(the slow test's numbers).

    .venv/bin/python bench/eval_paired.py [--n 512] [--seed 3] [--coverage 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from facelift.tasks.evaluate.report import table_markdown
from facelift.tasks.evaluate.simulate import ROWS, scenarios, simulate
from facelift.tasks.evaluate.table import metric_columns


def example(n: int, seed: int) -> str:
    sc = scenarios(n=n)[1]  # separated: head_a and head_b close to each other, far from schnell
    rows, refs = sc.draw(np.random.default_rng(seed))
    feats = [rows[k] for k in ROWS]
    clip = [1 / (1 + np.exp(-f.mean(1))) for f in feats]  # a per-image score that moves with the features
    lpips = [np.abs(f - rows["dev"]).mean(1) / 4 for f in feats]
    cols = metric_columns(feats, refs, clip, lpips, baseline=ROWS.index("head_a"), kid_subsets=100, seed=seed)
    table = pd.DataFrame.from_records([{"row": r, "n": n, "n_reference": n, "baseline": "head_a", **c}
                                       for r, c in zip(ROWS, cols, strict=True)])
    truth = ", ".join(f"{r} {sc.true_fid(r, 'dev'):.3f}" for r in ROWS)
    a, b = table.set_index("row").loc["head_a"], table.set_index("row").loc["head_b"]
    overlap = a["fid_dev_bc_ci_low"] <= b["fid_dev_bc_ci_high"] and b["fid_dev_bc_ci_low"] <= a["fid_dev_bc_ci_high"]
    return "\n".join([
        f"Scenario `{sc.name}`, d = {sc.d}, N = {n} per set, seed {seed}. Population FID_dev: {truth}.", "",
        table_markdown(table), "",
        f"head_a vs head_b, their own bias-corrected FID_dev intervals overlap: {bool(overlap)}; paired Δ FID_dev "
        f"(head_b − head_a) {b['d_fid_dev']:.3f} [{b['d_fid_dev_ci_low']:.3f}, {b['d_fid_dev_ci_high']:.3f}]: "
        f"{b['d_fid_dev_verdict']} (population Δ {sc.true_fid('head_b', 'dev') - sc.true_fid('head_a', 'dev'):.3f})."])


def coverage(trials: int) -> str:
    lines = []
    for sc in scenarios():
        start = time.perf_counter()
        res = simulate(sc, trials)
        if not lines:
            lines = ["| scenario | " + " | ".join(res) + " | s |", "|---|" + "---|" * (len(res) + 1)]
        lines.append(f"| {sc.name} | " + " | ".join(f"{v.coverage():.3f}" for v in res.values())
                     + f" | {time.perf_counter() - start:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--coverage", type=int, default=0, help="trials per scenario for the coverage table (0: none)")
    args = p.parse_args()
    print(example(args.n, args.seed))
    if args.coverage:
        print()
        print(coverage(args.coverage))


if __name__ == "__main__":
    main()
