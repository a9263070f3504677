"""Prefect flow ``sweep_heads``: a Ray Tune grid over lambda_cyc x lr (paper Tables 2-3) for one head."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from facelift.ids import artifact_key
from facelift.tasks.train import (
    PAPER_LAMBDA_CYC,
    PAPER_LR,
    TrainConfig,
    best_markdown,
    ray_session,
    sweep,
    sweep_caption,
    sweep_rows,
)


@task(cache_policy=NO_CACHE)
def sweep_task(cfg: TrainConfig, lambda_cycs: list[float], lrs: list[float], select: str,
               cpus_per_trial: float, gpus_per_trial: float, ray_address: str | None) -> dict[str, Any]:
    """Run the grid; every trial is a single-process training run."""
    with ray_session(ray_address):
        result = sweep(cfg, tuple(lambda_cycs), tuple(lrs), select, cpus_per_trial, gpus_per_trial)
    return {"sweep_id": result.sweep_id, "sweep_uri": result.sweep_uri,
            "rows": sweep_rows(result.table), "best": result.best}


@flow(name="sweep-heads", log_prints=False)
def sweep_heads(
    dataset_uri: str,
    head: str = "esa_cyclegan",
    flavor: str = "full",
    lambda_cycs: list[float] | None = None,
    lrs: list[float] | None = None,
    select: str = "l1",
    max_steps: int = 1000,
    batch_size: int = 4,
    resolution: int = 512,
    patience: int | None = 10,
    early_stopping: bool | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    endpoint_url: str | None = None,
    run_id: str | None = None,
    ray_address: str | None = None,
    head_overrides: dict[str, Any] | None = None,
    selection: str = "auto",
    inception_weights: str | None = None,
) -> dict[str, Any]:
    """Sweep lambda_cyc x lr (default: the paper's {10, 5, 2} x {1e-4, 2e-4, 3e-4}) and pick the best by
    ``select``: ``l1`` (validation L1(G(x), dev), min) or ``ssim`` (SSIM(x, F(G(x))), max); both independent
    of lambda_cyc; or ``kid`` (validation KID, min; with ``selection="kid"``). ``selection``: which weights each
    trial exports (tasks/train/select.py; auto = the head's default). ``early_stopping`` None: the head's default
    (CycleGANs: the fixed schedule)."""
    logger = get_run_logger()
    cfg = TrainConfig(dataset_uri=dataset_uri, head=head, flavor=flavor, max_steps=max_steps,
                      batch_size=batch_size, resolution=resolution, patience=patience,
                      early_stopping=early_stopping, endpoint_url=endpoint_url,
                      run_id=run_id, use_gpu=gpus_per_trial > 0, head_overrides=head_overrides or {},
                      selection=selection, inception_weights=inception_weights)
    result = sweep_task(cfg, list(PAPER_LAMBDA_CYC if lambda_cycs is None else lambda_cycs),
                        list(PAPER_LR if lrs is None else lrs), select, cpus_per_trial, gpus_per_trial,
                        ray_address)
    key = artifact_key("sweep", result["sweep_id"])
    best = result["best"]
    create_table_artifact(result["rows"], key=key,
                          description=sweep_caption(head, flavor, best["selected_by"], best.get("exported_by")))
    create_markdown_artifact(best_markdown(best), key=f"{key}-best"[:64])
    logger.info("sweep %s best: %s", result["sweep_id"], best)
    emit_event(event="facelift.sweep.completed",
               resource={"prefect.resource.id": f"facelift.run.{result['sweep_id']}"},
               payload={"sweep_uri": result["sweep_uri"], "dataset_uri": dataset_uri, "head": head,
                        "best_head_uri": best["head_uri"]})
    return result


if __name__ == "__main__":
    sweep_heads.serve(name="sweep-heads")
