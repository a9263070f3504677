"""A forest plot of the paired comparisons: one panel per Δ, one line per row, each Δ with its simultaneous
interval (the family's level), coloured by its verdict; Δ FIDs below N = 2·d are drawn grey (no verdict)."""

from __future__ import annotations

import io

import pandas as pd

from facelift.tasks.evaluate.table import COMPARISONS, FID_AT_N, ordered

COLOURS = {"better": "tab:green", "worse": "tab:red", "inconclusive": "tab:blue", "": "grey"}


def forest_plot(table: pd.DataFrame) -> bytes | None:
    """PNG of every non-baseline row's Δs with their intervals (None without a baseline or comparisons)."""
    if table.empty or "baseline" not in table.columns:
        return None
    first = table.iloc[0]
    comparisons = [c for c in ordered(first.get("primary") or COMPARISONS[0].key) if c.key in table.columns]
    rows = table[table["row"] != first["baseline"]]
    if not comparisons or rows.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(comparisons), figsize=(2.6 * len(comparisons), 0.5 * len(rows) + 1.6),
                             sharey=True, squeeze=False)
    names = [str(r) for r in rows["row"]]
    for ax, c in zip(axes[0], comparisons, strict=True):
        for y, (_, r) in enumerate(rows.iterrows()):
            value, low, high = (c.scale * r.get(f"{c.key}{s}", float("nan")) for s in ("", "_ci_low", "_ci_high"))
            word = r.get(f"{c.key}_verdict") or ""
            colour = COLOURS.get(word, "grey")
            ax.plot([low, high], [y, y], color=colour, lw=2)
            ax.plot([value], [y], "o", color=colour)
        ax.axvline(0, color="black", lw=0.8)
        at_n = c.key.startswith("d_fid") and first.get("d_fid_target") == FID_AT_N
        ax.set_title(c.label + (" (at N, no verdict)" if at_n else ""), fontsize=8)
    axes[0][0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0][0].invert_yaxis()
    size, alpha = first.get("family_size"), first.get("family_alpha")
    level = f"simultaneous {100 * (1 - alpha):g}% over {int(size)} comparisons" if pd.notna(size) else "95%"
    fig.suptitle(f"Δ = row − {first['baseline']}, {level}; green better, red worse, blue inconclusive", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
