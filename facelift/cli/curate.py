"""``facelift curate`` (registered on the main typer app in ``facelift/cli/main.py``)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from facelift.cli.common import fail, setup_logging

log = logging.getLogger("facelift")


def curate(
    dataset_uri: Annotated[str, typer.Argument(help="dataset URI (.../datasets/<id>)")],
    clip_model: Annotated[str | None, typer.Option(help="CLIP for image-image, text-image and dedup (hub id or "
                                                        "folder; default ViT-L/14; tiny: the tiny CLIP)")] = None,
    iqa_model: Annotated[str | None, typer.Option(help="CLIP for CLIP-IQA (default: the evaluation's "
                                                       "ViT-B/16)")] = None,
    detector: Annotated[str | None, typer.Option(help="DeepFace detector (default retinaface; tiny datasets "
                                                      "opencv)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="a threshold, e.g. --set clip_image_min=0.7 "
                                                                 "(repeatable; docs/curate.md)")] = None,
    report_only: Annotated[list[str] | None, typer.Option("--report-only", help="a filter that reports but "
                                                                                 "drops nothing (repeatable)")] = None,
    min_kept_fraction: Annotated[float, typer.Option(help="fail if fewer pairs are kept")] = 0.5,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// URIs")] = None,
    verbose: bool = False,
) -> None:
    """Score every pair, drop the ones dev did not improve (with reasons), write keep.parquet and a report.

    Scores are stored per shard and resume; other thresholds decide again from them without a model run."""
    from pydantic import ValidationError

    from facelift.config import parse_set_options, validation_problems
    from facelift.dataset import DatasetError
    from facelift.flows.curate_pairs import curate_pairs
    from facelift.models.deepface_weights import MissingWeightsError
    from facelift.models.metrics import MetricWeightsError
    from facelift.storage import StorageError, absolute_uri
    from facelift.tasks.curate import CurationError, Thresholds

    setup_logging(verbose)
    try:
        thresholds = parse_set_options(set_ or [])
        Thresholds(**thresholds)  # an unknown or out-of-range threshold: one line, before the flow starts
        result = curate_pairs(absolute_uri(dataset_uri), clip_model=clip_model, iqa_model=iqa_model,
                              detector=detector, thresholds=thresholds, report_only=report_only,
                              min_kept_fraction=min_kept_fraction, endpoint_url=endpoint_url)
    except (DatasetError, StorageError, CurationError, MissingWeightsError, MetricWeightsError, ValidationError,
            ValueError) as exc:
        raise fail(f"invalid curation setting: {validation_problems(exc)}" if isinstance(exc, ValidationError)
                   else str(exc)) from None
    typer.echo(summary(result))
    typer.echo(json.dumps({k: result[k] for k in ("curation_id", "curation_uri", "report_uri")}, indent=2))


def summary(result: dict) -> str:
    """A few lines: kept per split, what reports only, where the report is."""
    splits = ", ".join(f"{s} {n}" for s, n in sorted(result["kept_by_split"].items()))
    lines = [f"curation {result['curation_id']}: kept {result['kept']} of {result['pairs']} pairs "
             f"({100 * result['kept_fraction']:.0f} %; kept per split: {splits})"]
    if result.get("report_only_why"):
        lines.append(f"report only: {', '.join(result['report_only'])} ({result['report_only_why']})")
    lines.append(f"reasons, histograms, examples: {result['report_uri']}")
    return "\n".join(lines)


def demo_step(ctx: dict) -> dict:
    """Demo: curate the demo dataset (tiny profile: the semantic filters report only; offline models)."""
    from facelift.cli.common import demo_deepface, rel, section
    from facelift.flows.curate_pairs import curate_pairs

    demo_deepface(("arcface",))
    result = curate_pairs(ctx["dataset_uri"])
    section("curate (score every pair, drop with reasons; train reads the kept pairs)")
    typer.echo(summary({**result, "report_uri": rel(ctx, result["report_uri"])}))
    where = rel(ctx, result["curation_uri"])
    return {"curation_id": result["curation_id"],
            "summary": [("curate", f"{where}/keep.parquet", f"{where}/report.md (reasons, histograms, examples)")]}
