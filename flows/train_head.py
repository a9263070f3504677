"""Prefect flow ``train_head``: train one head on a dataset with Ray Train, then publish its reports."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from facelift import done
from facelift.dataset import Dataset
from facelift.ids import artifact_key
from facelift.tasks.curate.run import resolve_curation
from facelift.tasks.train import TrainConfig, png_markdown, train, write_reports


@task(cache_policy=NO_CACHE)
def train_task(cfg: TrainConfig, ray_address: str | None, max_failures: int) -> dict[str, Any]:
    """Run (or resume) the Ray Train job."""
    result = train(cfg, max_failures=max_failures, ray_address=ray_address)
    return {"run_id": result.run_id, "run_uri": result.run_uri, "head_uri": result.head_uri}


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def report_task(run: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """Metric tables, loss curve and sample grid as artifacts (and PNGs in the run folder)."""
    rep = write_reports(run["run_uri"], cfg.dataset_uri, cfg.endpoint_url, cfg.resolution)
    key = artifact_key("train", run["run_id"])
    near = any(r["metric"] == "NEAR-IDENTITY head" for r in rep["summary"])
    create_table_artifact(rep["summary"], key=key, description=f"Run {run['run_uri']}" + (
        " - WARNING: the exported head is near the identity (it barely changes its input)" if near else ""))
    if rep["epochs"]:
        create_table_artifact(rep["epochs"], key=f"{key}-val"[:64],
                              description="validation per epoch: val_change_ratio = what the exported head changes "
                                          "in its input, as a share of dev's change (near 0: it returns its input); "
                                          "GANs: D_*_acc_real / _fake = discriminator accuracy on real and generated "
                                          "val images, 0.5 = chance")
    create_markdown_artifact(
        png_markdown("Loss curves", rep["loss_curve"], rep["loss_curve_uri"])
        + png_markdown("Samples: input | output | target", rep["samples"], rep["samples_uri"]),
        key=f"{key}-plots"[:64], description=f"{cfg.head} training plots")
    return {"loss_curve_uri": rep["loss_curve_uri"], "samples_uri": rep["samples_uri"]}


@flow(name="train-head", log_prints=False)
def train_head(
    dataset_uri: str,
    head: str = "esa_cyclegan",
    flavor: str = "full",
    max_steps: int = 1000,
    epochs: int | None = None,
    batch_size: int = 4,
    lr: float | None = None,
    num_workers: int = 1,
    use_gpu: bool = False,
    resolution: int = 512,
    crop: int | None = None,
    patience: int | None = 10,
    early_stopping: bool | None = None,
    checkpoint_every: int = 500,
    compile: bool | str = False,
    endpoint_url: str | None = None,
    run_id: str | None = None,
    ray_address: str | None = None,
    head_overrides: dict[str, Any] | None = None,
    max_failures: int = 0,
    skip_completed: bool = False,
    selection: str = "auto",
    inception_weights: str | None = None,
    curation: str | None = None,
) -> dict[str, Any]:
    """Train (or resume, given the same run_id) one head; returns the run URI and the exported head.

    ``early_stopping`` None: the head's default (U-Net: stop after ``patience`` epochs without improvement;
    CycleGANs: train the fixed schedule, whose linear lr decay early stopping would cut). ``skip_completed``
    (set by the event trigger): if this head was already trained with this config on a dataset with the same
    content fingerprint, return that run instead of training again (and emit no event). ``curation``: a curation
    id, or ``latest``, whose kept pairs train and validate (None: every pair); the run and its completion key
    record the id, so a new curation trains again."""
    logger = get_run_logger()
    ds = Dataset.open(dataset_uri, endpoint_url)
    ds.require_real("training")
    curation = resolve_curation(ds, curation)
    cfg = TrainConfig(dataset_uri=dataset_uri, head=head, flavor=flavor, max_steps=max_steps, epochs=epochs,
                      batch_size=batch_size, lr=lr, num_workers=num_workers, use_gpu=use_gpu,
                      resolution=resolution, crop=crop, patience=patience, early_stopping=early_stopping,
                      checkpoint_every=checkpoint_every,
                      compile=compile, endpoint_url=endpoint_url, run_id=run_id,
                      head_overrides=head_overrides or {}, selection=selection,
                      inception_weights=inception_weights, curation=curation)
    root, key = done.train_key(cfg)
    repeatable = skip_completed and run_id is None
    what = f"head {head} ({flavor}) with this config on this build of the dataset" + (
        f" and curation {curation}" if curation else "")
    with done.unless_done(root, key, "training", what, repeatable, logger) as prior:
        if prior is not None:
            return {**prior, "skipped": True}
        run = train_task(cfg, ray_address, max_failures)
        plots = report_task(run, cfg)
        result = {**run, **plots, "head": head, "dataset_uri": dataset_uri, "curation": curation}
        done.record_completed(root, key, {"run_id": run["run_id"], "run_uri": run["run_uri"], "result": result})
    logger.info("head %s trained%s: %s", head, f" on curation {curation}" if curation else "", run["head_uri"])
    emit_event(event="facelift.head.trained",
               resource={"prefect.resource.id": f"facelift.run.{run['run_id']}"},
               payload={"run_uri": run["run_uri"], "dataset_uri": dataset_uri, "head": head})
    return result


if __name__ == "__main__":
    train_head.serve(name="train-head")
