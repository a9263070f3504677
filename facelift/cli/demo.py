"""``facelift demo`` / ``make demo``: the whole system offline on CPU with tiny random-weight models.

Each step takes the demo context (a dict: ``root``, ``count``, and what earlier steps added, such as
``dataset_uri``) and returns what it adds, plus ``summary`` rows (stage, output, where to look) for the
table the demo ends with. Steps run in order; other features append theirs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import typer

from facelift.cli.common import rel, section

log = logging.getLogger(__name__)
Step = Callable[[dict[str, Any]], dict[str, Any]]
SummaryRow = tuple[str, str, str]  # stage, output, where to look
TINY_NOTE = "tiny random-weight models on this CPU: the numbers show the mechanics, not FLUX quality or GPU speed"


DEMO_SPLITS = {"splits.test": 0.34, "splits.val": 0.16}


def build_step(ctx: dict[str, Any]) -> dict[str, Any]:
    from facelift.dataset import Dataset
    from facelift.flows.build_dataset import build_dataset

    # a larger test split than the default 0.1, so the evaluation's two halves hold a few pairs each
    result = build_dataset(profile="tiny", count=ctx["count"], root=ctx["root"], overrides=DEMO_SPLITS)
    ds = Dataset.open(result["dataset_uri"])
    info = ds.info()
    gen, counts, names = info["config"]["generation"], info.get("counts", {}), info.get("names", {})
    section("dataset (schnell text-to-image, then dev image-to-image, one prompt per name)")
    typer.echo(f"{info['dataset_id']}: {counts.get('pairs')} pairs in {len(ds.committed_shards())} shards, "
               f"{gen['width']}x{gen['height']}; names: {names.get('kept')} kept of {names.get('rows')} rows "
               f"({sum(names.get('dropped', {}).values())} dropped, by reason in dataset.json)")
    per_split = ds.splits().counts(ds.manifest()["pair_id"])
    typer.echo(f"splits (demo: test {DEMO_SPLITS['splits.test']}, val {DEMO_SPLITS['splits.val']} instead of the "
               f"defaults, for enough test pairs): " + ", ".join(f"{k} {v}" for k, v in per_split.items()))
    uri = result["dataset_uri"]
    return {"dataset_uri": uri, "summary": [("build", rel(ctx, uri), f"facelift info {rel(ctx, uri)}")]}


DEMO_STEPS: list[Step] = [build_step]

from facelift.cli.curate import demo_step as curate_demo_step  # noqa: E402

DEMO_STEPS.append(curate_demo_step)  # curate the pairs; train reads the kept ones

from facelift.cli.audit import demo_step as audit_demo_step  # noqa: E402

DEMO_STEPS.append(audit_demo_step)  # diversity audit: baseline vs enriched, rebalance weights

from facelift.cli.train import demo_step as train_demo_step  # noqa: E402

DEMO_STEPS.append(train_demo_step)  # train each head's debug flavor a few steps

from facelift.cli.evaluate import demo_step as evaluate_demo_step  # noqa: E402

DEMO_STEPS.append(evaluate_demo_step)  # evaluate the trained heads + enhance a folder; after train

from facelift.cli.generate import demo_step as generate_demo_step  # noqa: E402

DEMO_STEPS.append(generate_demo_step)  # schnell + a trained head from prompts; after train


def summary_table(rows: list[SummaryRow]) -> str:
    lines = ["| stage | output | where to look |", "|---|---|---|"]
    return "\n".join(lines + [f"| {s} | {o} | {w} |" for s, o, w in rows])


def run_demo(root: str, count: int) -> dict[str, Any]:
    """Run every demo step; print each stage's result, then one summary table of outputs and pictures."""
    root = os.path.abspath(root)
    typer.echo(f"facelift demo in {root}: {count} pairs, {TINY_NOTE}.")
    ctx: dict[str, Any] = {"root": root, "count": count}
    rows: list[SummaryRow] = []
    for step in DEMO_STEPS:
        log.info("demo step: %s", step.__module__)
        added = dict(step(ctx) or {})
        rows += added.pop("summary", [])
        ctx.update(added)
    section(f"summary (paths relative to {root})")
    typer.echo(summary_table(rows))
    return ctx
