"""Prefect flow ``evaluate``: score schnell, dev, trained heads and an optional schnell+LoRA on the held-out
split (FID_schnell, FID_dev, FID_diff, KID, CLIP-IQA, LPIPS-to-dev, CIs), time them, write the report."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event

from facelift.dataset import Dataset
from facelift.models.metrics import DEFAULT_CLIP_IQA_MODEL, MetricConfig
from facelift.tasks import eval_flux, eval_report
from facelift.tasks import evaluate as ev

EVENT = "facelift.evaluation.completed"

load_heldout = task(ev.load_heldout, name="load-heldout", cache_policy=NONE)
head_row = task(ev.head_row, name="translate-head", cache_policy=NONE, retries=1)
lora_images = task(eval_flux.lora_images, name="schnell-lora", cache_policy=NONE)
timing_table = task(eval_flux.timing_table, name="timing", cache_policy=NONE)


@task(name="score", cache_policy=NONE)
def score(rows: list[ev.Row], held: ev.HeldOut, metrics: MetricConfig, cache: Any, cfg: ev.EvalConfig) -> Any:
    """Embed every row and compute the table (reference features come from the cache)."""
    return ev.score_rows(rows, held, ev.MetricSuite(metrics, cfg.device, cfg.batch_size), cache, cfg)


@task(name="report", cache_policy=NONE)
def report(run: Any, table: Any, timing: Any, rows: list[ev.Row], held: ev.HeldOut, meta: dict[str, Any],
           grid_images: int) -> dict[str, str]:
    """Files under runs/<id>/evaluation/ plus table and markdown artifacts in the Prefect UI."""
    grid = eval_report.image_grid([(r.name.split(" (")[0], r.images) for r in rows], grid_images)
    plot = eval_flux.timing_plot(timing) if timing is not None else None
    files = eval_report.write_outputs(run, table, timing, grid, plot, meta)
    cols = ["row", "n", "fid_schnell", "fid_dev", "fid_diff", "kid_schnell", "kid_dev", "clip_iqa", "lpips_dev"]
    create_table_artifact(table[cols].round(5).to_dict("records"), key="evaluation-table",
                          description=f"Table 4 + KID + LPIPS on {meta['dataset_uri']}")
    md = eval_report.table_markdown(table)
    if timing is not None:
        md += "\n\n" + eval_report.timing_markdown(timing)
    create_markdown_artifact(md + f"\n\nFiles: `{run.url(eval_report.EVAL_DIR)}`", key="evaluation-report")
    return files


@flow(name="evaluate")
def evaluate(dataset_uri: str, heads: list[str], lora: str | None = None, n_images: int = 256,
             endpoint_url: str | None = None, run_id: str | None = None, inception_weights: str | None = None,
             clip_model: str = DEFAULT_CLIP_IQA_MODEL, lpips_random_backbone: bool = False,
             val_fraction: float | None = None, resolution: int | None = None, n_boot: int = 20,
             device: str = "auto", batch_size: int = 16, profile: str = "tiny",
             timing_resolutions: list[int] | None = None, timing_images: int = 2, feature_cache: bool = True,
             grid_images: int = 6) -> dict[str, Any]:
    """Evaluate heads (folders or run URIs) on the dataset's held-out split; outputs under runs/<run_id>/."""
    from facelift.config import resolve_config

    logger = get_run_logger()
    cfg = ev.EvalConfig(n_images=n_images, val_fraction=val_fraction, resolution=resolution, n_boot=n_boot,
                        device=device, batch_size=batch_size, grid_images=grid_images)
    metrics = MetricConfig(inception_weights, clip_model, "alex", lpips_random_backbone)
    ds = Dataset.open(dataset_uri, endpoint_url)
    run_id = run_id or f"eval-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    run = ds.root_store().child(f"runs/{run_id}")
    frac = ev.resolve_val_fraction(val_fraction, heads, dataset_uri, endpoint_url)
    held = load_heldout(ds, cfg, frac)
    rows = ev.reference_rows(held) + [head_row(h, held, cfg, endpoint_url) for h in heads]
    gen = resolve_config(profile).generation
    if lora:
        images, sec = lora_images(lora, gen.schnell, held.prompts, held.seeds, held.size,
                                  resolve_config(profile).cache_dir, device, gen.dtype, batch_size)
        rows.append(ev.Row("schnell + LoRA", "lora", lora, images, sec))
    table = score(rows, held, metrics, ds.root_store() if feature_cache else None, cfg)
    timing = None
    if timing_resolutions and heads:
        timing = timing_table(gen.schnell, gen.dev, ev.timing_head(heads, endpoint_url), timing_resolutions,
                              resolve_config(profile).cache_dir, device, gen.dtype, timing_images)
    meta = {"run_id": run_id, "dataset_uri": ds.uri, "heads": heads, "lora": lora, "val_fraction": frac,
            "n_input": held.n, "n_reference": len(held.ref_ids), "size": held.size, "profile": profile,
            "metrics": {"inception_weights": inception_weights or "default search path", "clip_model": clip_model,
                        "lpips": "alex" + (" (random backbone: tests only)" if lpips_random_backbone else "")}}
    files = report(run, table, timing, rows, held, meta, grid_images)
    logger.info("evaluation %s:\n%s", run_id, eval_report.table_markdown(table))
    emit_event(event=EVENT, resource={"prefect.resource.id": f"facelift.run.{run_id}"},
               payload={"run_uri": run.url(), "dataset_uri": ds.uri})
    return {"run_id": run_id, "run_uri": run.url(), "files": files, "table": table.to_dict("records"),
            "timing": None if timing is None else timing.to_dict("records")}


if __name__ == "__main__":
    import sys

    evaluate(sys.argv[1], sys.argv[2:])
