"""``facelift demo`` / ``make demo``: the whole system offline on CPU with tiny random-weight models.

Each step takes the demo context (a dict: ``root``, ``count``, and what earlier steps added, such as
``dataset_uri``) and returns what it adds. Steps run in order; other features append theirs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import typer

log = logging.getLogger(__name__)
Step = Callable[[dict[str, Any]], dict[str, Any]]


def build_step(ctx: dict[str, Any]) -> dict[str, Any]:
    from facelift.cli.info import describe
    from facelift.dataset import Dataset
    from facelift.flows.build_dataset import build_dataset

    result = build_dataset(profile="tiny", count=ctx["count"], root=ctx["root"])
    typer.echo("\n== dataset ==\n" + describe(Dataset.open(result["dataset_uri"])))
    return {"dataset_uri": result["dataset_uri"]}


DEMO_STEPS: list[Step] = [build_step]

from facelift.cli.audit import demo_step as audit_demo_step  # noqa: E402

DEMO_STEPS.append(audit_demo_step)  # diversity audit (issue 5): baseline vs enriched, rebalance weights

from facelift.cli.train import demo_step as train_demo_step  # noqa: E402

DEMO_STEPS.append(train_demo_step)  # train each head's debug flavor a few steps (issue 3)

from facelift.cli.evaluate import demo_step as evaluate_demo_step  # noqa: E402

DEMO_STEPS.append(evaluate_demo_step)  # evaluate the trained heads + enhance a folder (issue 4); after train


def run_demo(root: str, count: int) -> dict[str, Any]:
    ctx: dict[str, Any] = {"root": root, "count": count}
    for step in DEMO_STEPS:
        log.info("demo step: %s", step.__name__)
        ctx.update(step(ctx) or {})
    typer.echo("\n== demo outputs ==\n" + json.dumps({k: v for k, v in ctx.items()}, indent=2, default=str))
    return ctx
