"""``facelift audit`` and ``facelift rebalance`` (registered on the main typer app in ``facelift/cli/main.py``)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from facelift.cli.common import fail, setup_logging

log = logging.getLogger("facelift")


def audit(
    dataset_uris: Annotated[list[str], typer.Argument(help="dataset URIs (.../datasets/<id>), e.g. baseline "
                                                           "and enriched")],
    detector: Annotated[str, typer.Option(help="DeepFace detector: opencv (no download), skip (whole "
                                               "image), retinaface, ...")] = "opencv",
    include_dev: Annotated[bool, typer.Option(help="also audit the dev images")] = False,
    tsne: Annotated[bool, typer.Option(help="t-SNE plots of the ArcFace embeddings")] = True,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// URIs")] = None,
    run_id: Annotated[str | None, typer.Option(help="run id (default: audit-<time>-<random>)")] = None,
    output_root: Annotated[str | None, typer.Option(help="storage root for runs/ (default: the first "
                                                         "dataset's root)")] = None,
    enforce_detection: Annotated[bool, typer.Option(help="no face = a detection failure (off: analyse "
                                                         "the whole image)")] = True,
    perplexity: Annotated[float, typer.Option(help="t-SNE perplexity")] = 30.0,
    tsne_max_fit: Annotated[int, typer.Option(help="t-SNE fits at most this many points, places the "
                                                   "rest")] = 20_000,
    verbose: bool = False,
) -> None:
    """Audit perceived gender/age/race (DeepFace) and ArcFace t-SNE of datasets; resumable per shard."""
    from facelift.dataset import DatasetError
    from facelift.flows.audit_diversity import audit_diversity
    from facelift.models.deepface_weights import MissingWeightsError
    from facelift.storage import StorageError, absolute_uri
    from facelift.tasks.audit import AuditError

    setup_logging(verbose)
    try:
        dataset_uris = [absolute_uri(u) for u in dataset_uris]  # flow-run processes run elsewhere
        output_root = None if output_root is None else absolute_uri(output_root)
        result = audit_diversity(dataset_uris=dataset_uris, detector=detector, include_dev=include_dev,
                                 tsne=tsne, endpoint_url=endpoint_url, run_id=run_id, output_root=output_root,
                                 enforce_detection=enforce_detection, perplexity=perplexity,
                                 tsne_max_fit=tsne_max_fit)
    except (DatasetError, StorageError, MissingWeightsError, AuditError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(_table(result))
    typer.echo(json.dumps({k: result[k] for k in ("run_id", "run_uri", "files", "audit")}, indent=2))


DEMO_SKIP_ROWS = ("images", "faces analysed", "detection failures", "man", "woman", "age under 18")


def _table(result: dict, skip: tuple[str, ...] = ()) -> str:
    import pandas as pd

    from facelift.tasks.audit import to_markdown

    table = pd.DataFrame(result["report"]["table1"])
    return to_markdown(table[~table.iloc[:, 0].isin(skip)] if skip else table)


def rebalance(
    dataset_uri: Annotated[str, typer.Argument(help="an audited pilot dataset (enriched prompt)")],
    target: Annotated[str, typer.Option(help="target distribution, JSON or TOML: "
                                             "{\"race\": {\"white\": 0.2, ...}, \"gender\": {...}}")],
    out: Annotated[str | None, typer.Option(help="weights .parquet (default: "
                                                 "<dataset>/audit/<detector>/weights.parquet)")] = None,
    detector: Annotated[str, typer.Option(help="which audit of the dataset to use")] = "opencv",
    count: Annotated[int | None, typer.Option(help="size of the next build's draw: tune the weights for "
                                                   "drawing that many names without replacement")] = None,
    max_ratio: Annotated[float, typer.Option(help="cap on a name's weight, in multiples of the mean")] = 20.0,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// URIs")] = None,
    seed: int = 0,
    verbose: bool = False,
) -> None:
    """Per-name sampling weights that move the next build toward a target race/gender/age distribution.

    Feed the file to the next build with ``--set plan.weights_uri=<weights.parquet>``.
    """
    from facelift.dataset import Dataset, DatasetError
    from facelift.storage import StorageError
    from facelift.tasks.audit import (
        AuditError,
        RebalanceError,
        audit_prefix,
        compute_weights,
        load_audit,
        load_target,
        write_weights,
    )

    setup_logging(verbose)
    try:
        ds = Dataset.open(dataset_uri, endpoint_url)
        goal = load_target(target, endpoint_url)
        weights, report = compute_weights(load_audit(ds, detector), goal, max_ratio=max_ratio, count=count,
                                          seed=seed)
        uri = write_weights(weights, out or ds.store.url(f"{audit_prefix(detector)}/weights.parquet"),
                            endpoint_url)
    except (DatasetError, StorageError, AuditError, RebalanceError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps({"weights_uri": uri, **report}, indent=2))
    typer.echo(f"next build: facelift build --set plan.weights_uri={uri}" +
               (f" --count {count}" if count else ""))


def demo_step(ctx: dict) -> dict:
    """Demo: build a baseline-prompt dataset beside the enriched one, audit both, derive rebalance weights.

    Offline, DeepFace uses random-weight model files (made once under the facelift cache) unless
    ``DEEPFACE_HOME`` already holds real ones; tiny-FLUX images hold no faces, so the demo analyses the
    whole image (``detector="skip"``). The numbers show the mechanics, not real demographics.
    """
    from facelift.cli.common import demo_deepface
    from facelift.dataset import Dataset
    from facelift.flows.audit_diversity import audit_diversity
    from facelift.flows.build_dataset import build_dataset
    from facelift.tasks.audit import compute_weights, load_audit, parse_target, write_weights
    from facelift.tasks.audit.analyze import RACES

    demo_deepface()
    baseline = build_dataset(profile="tiny", count=ctx["count"], root=ctx["root"], mode="baseline")
    result = audit_diversity([baseline["dataset_uri"], ctx["dataset_uri"]], detector="skip")
    typer.echo("\n== diversity audit, Table 1 (random-weight DeepFace on faceless tiny images: mechanics only) ==\n"
               + _table(result, skip=(*DEMO_SKIP_ROWS, *(f"race {r}" for r in RACES)))
               + "\n(race rows: the table1.md in the summary)")
    target = parse_target({"race": {r: 1 / len(RACES) for r in RACES},
                           "gender": {"man": 0.5, "woman": 0.5}})
    enriched = Dataset.open(ctx["dataset_uri"])
    weights, report = compute_weights(load_audit(enriched, "skip"), target)
    uri = write_weights(weights, f"{result['run_uri']}/weights.parquet")
    before, after = (", ".join(f"{k} {v:.3f}" for k, v in report[key].items()) for key in ("tv_before", "tv_after"))
    typer.echo(f"rebalance: distance to the target before {before}; after {after}")
    from facelift.cli.common import rel

    run = rel(ctx, result["run_uri"])
    plots = ", ".join(f for f in result["files"] if f.endswith(".png"))
    return {"baseline_dataset_uri": baseline["dataset_uri"], "audit_run_uri": result["run_uri"],
            "rebalance_weights_uri": uri,
            "summary": [("build (baseline prompt)", rel(ctx, baseline["dataset_uri"]), "the audit's left column"),
                        ("audit", f"{run}/table1.md", f"t-SNE plots in {run}: {plots}"),
                        ("rebalance", rel(ctx, uri), "`facelift build --weights` draws names with them")]}
