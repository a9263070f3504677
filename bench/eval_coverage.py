"""Coverage of the evaluation's intervals against N/d, each tail apart: the numbers and the figure behind
docs/evaluate.md ("Coverage against N/d"). The same cells as tests/test_eval_grid.py (targets from
tests/stat_targets.py, computed independently of the evaluation's code), plus any extra cells asked for.

    .venv/bin/python bench/eval_coverage.py [--trials 300] [--cells 16x1,16x2,...] [--out docs/results]

Writes ``eval_coverage.csv`` (one line per cell × scenario × interval: misses above and below, efficiency) and
``eval_coverage.png`` (misses per tail against N/d, pooled over the scenarios) under ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import stat_targets as T  # noqa: E402

from facelift.tasks.evaluate.simulate import scenarios, simulate  # noqa: E402

log = logging.getLogger("eval_coverage")
DEFAULT_CELLS = "16x1,16x2,16x4,16x16,64x1,64x2,64x4"


def cell_rows(d: int, mult: int, trials: int, kid_subsets: int) -> list[dict]:
    rows = []
    for sc in scenarios(n=d * mult, d=d):
        start = time.perf_counter()
        res = simulate(sc, trials, kid_subsets=kid_subsets, score=T.score, seed=d * mult)
        for key, target in T.targets(sc).items():
            if key not in res:
                continue
            iv = res[key]
            iv.target = target
            above, below = iv.misses()
            half = np.median((np.asarray(iv.high) - np.asarray(iv.low)) / 2)
            rows.append({"d": d, "n": d * mult, "n_per_d": mult, "scenario": sc.name, "interval": key,
                         "above_pct": 100 * above, "below_pct": 100 * below,
                         "efficiency": 1.96 * float(np.std(iv.value)) / half if half > 0 else np.nan,
                         "trials": trials, "seconds": time.perf_counter() - start})
        log.info("d=%d N=%d %s: %.0f s", d, d * mult, sc.name, time.perf_counter() - start)
    return rows


def figure(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = df.groupby(["interval", "d", "n_per_d"], as_index=False)[["above_pct", "below_pct"]].mean()
    keys = sorted(pooled["interval"].unique())
    fig, axes = plt.subplots(2, (len(keys) + 1) // 2, figsize=(3 * ((len(keys) + 1) // 2), 6), sharey=True)
    for ax, key in zip(axes.ravel(), keys, strict=False):
        for d, part in pooled[pooled["interval"] == key].groupby("d"):
            ax.plot(part["n_per_d"], part["above_pct"], "v-", label=f"above, d={d}")
            ax.plot(part["n_per_d"], part["below_pct"], "^--", label=f"below, d={d}")
        ax.axhline(2.5, color="grey", lw=0.8)
        ax.axhline(4.5, color="red", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("N / d")
    axes.ravel()[0].set_ylabel("% of trials the interval misses, per side")
    axes.ravel()[0].legend(fontsize=6)
    fig.suptitle("Interval misses per tail (pooled over scenarios); grey 2.5% nominal, red the 4.5% bound")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--kid-subsets", type=int, default=50)
    p.add_argument("--cells", default=DEFAULT_CELLS, help="d x N/d, comma-separated")
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    args = p.parse_args()
    rows = []
    with threadpool_limits(1):
        for cell in args.cells.split(","):
            d, mult = (int(v) for v in cell.split("x"))
            rows += cell_rows(d, mult, args.trials, args.kid_subsets)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "eval_coverage.csv", index=False)
    figure(df, args.out / "eval_coverage.png")
    pooled = df.groupby(["interval", "d", "n_per_d"])[["above_pct", "below_pct", "efficiency"]].mean().round(1)
    sys.stdout.write(pooled.to_string() + "\n")


if __name__ == "__main__":
    main()
