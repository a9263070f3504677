"""Prefect flow ``pipeline``: build -> curate -> train -> audit -> evaluate in one run, each stage a subflow."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from facelift.flows.audit_diversity import audit_diversity
from facelift.flows.build_dataset import build_dataset
from facelift.flows.curate_pairs import curate_pairs
from facelift.flows.evaluate import evaluate
from facelift.flows.train_head import train_head


@flow(name="pipeline", log_prints=False)
def pipeline(
    profile: str = "tiny",
    names_uri: str | None = None,
    count: int | None = None,
    mode: Literal["enriched", "baseline"] = "enriched",
    root: str | None = None,
    endpoint_url: str | None = None,
    overrides: dict[str, Any] | None = None,
    heads: list[str] | None = None,
    train: dict[str, Any] | None = None,
    audit: bool = True,
    audit_options: dict[str, Any] | None = None,
    evaluate_options: dict[str, Any] | None = None,
    curate: bool = True,
    curate_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build (or resume) a dataset, curate it, train each head on the kept pairs, audit it, evaluate every trained
    head (on the full test split). ``curate`` False: train on every pair."""
    logger = get_run_logger()
    heads = ["esa_cyclegan"] if heads is None else heads
    if not heads:
        raise ValueError("heads is empty: give at least one head name (e.g. esa_cyclegan, unet_cbam)")
    built = build_dataset(profile=profile, names_uri=names_uri, count=count, mode=mode, root=root,
                          endpoint_url=endpoint_url, overrides=overrides)
    dataset_uri = built["dataset_uri"]
    logger.info("dataset ready: %s", dataset_uri)
    curated = (curate_pairs(dataset_uri=dataset_uri, endpoint_url=endpoint_url, **(curate_options or {}))
               if curate else None)
    curation = curated["curation_id"] if curated else None
    runs = [train_head(dataset_uri=dataset_uri, head=head, endpoint_url=endpoint_url, curation=curation,
                       **(train or {})) for head in heads]
    audited = (audit_diversity(dataset_uris=[dataset_uri], endpoint_url=endpoint_url, **(audit_options or {}))
               if audit else None)
    evaluated = evaluate(dataset_uri=dataset_uri, heads=[r["run_uri"] for r in runs], endpoint_url=endpoint_url,
                         **(evaluate_options or {}))
    rows = [{"stage": "build", "output": dataset_uri},
            *([{"stage": "curate", "output": curated["curation_uri"]}] if curated else []),
            *({"stage": f"train {r['head']}", "output": r["run_uri"]} for r in runs),
            *([{"stage": "audit", "output": audited["run_uri"]}] if audited else []),
            {"stage": "evaluate", "output": evaluated["run_uri"]}]
    create_table_artifact(rows, key="pipeline-outputs", description=f"pipeline outputs for {dataset_uri}")
    return {"dataset_uri": dataset_uri, "curation_id": curation, "train_runs": [r["run_uri"] for r in runs],
            "audit_run": audited["run_uri"] if audited else None, "evaluation_run": evaluated["run_uri"],
            "table": evaluated["table"]}


if __name__ == "__main__":
    pipeline()
