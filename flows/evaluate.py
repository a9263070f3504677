"""Prefect flow ``evaluate``: score schnell, dev, trained heads and an optional schnell+LoRA on the dataset's
test split (FID_schnell, FID_dev, FID_diff, KID, CLIP-IQA, LPIPS-to-dev, CIs), time them, write the report.

Heads trained on other splits than the dataset's (or that record none) are refused before anything runs.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event

from facelift.dataset import Dataset
from facelift.ids import check_id
from facelift.models.metrics import DEFAULT_CLIP_IQA_MODEL, DEFAULT_FID_RESIZE, MetricConfig
from facelift.tasks import evaluate as evaluation

EVENT = "facelift.evaluation.completed"

select_test_split = task(evaluation.select_test_split, name="test-split", cache_policy=NONE)
check_head_splits = task(evaluation.check_head_splits, name="check-head-splits", cache_policy=NONE)
timing_table = task(evaluation.timing_table, name="timing", cache_policy=NONE)


@task(name="score", cache_policy=NONE)
def score(ds: Dataset, split: evaluation.TestSplit, heads: list[str], lora: str | None, metrics: MetricConfig,
          cache: Any, cfg: evaluation.EvalConfig, endpoint_url: str | None, profile: str) -> tuple[Any, Any, dict]:
    """Stream the test split once through every row and the metric networks: (table, grid columns, networks)."""
    from facelift.config import resolve_config

    sources: list[evaluation.RowSource] = evaluation.reference_sources()
    sources += [evaluation.HeadSource(h, cfg, endpoint_url) for h in heads]
    if lora:
        conf = resolve_config(profile)
        sources.append(evaluation.LoraSource(lora, conf.generation.schnell, split.size, conf.cache_dir, cfg.device,
                                            conf.generation.dtype, cfg.batch_size))
    suite = evaluation.MetricSuite(metrics, cfg.device, cfg.batch_size, cfg.resize)
    table, grid = evaluation.score_rows(sources, ds, split, suite, cache, cfg)
    return table, grid, suite.describe()


@task(name="report", cache_policy=NONE)
def report(run: Any, table: Any, timing: Any, grid: list, meta: dict[str, Any], grid_images: int) -> dict[str, str]:
    """Files under runs/<id>/evaluation/ plus table and markdown artifacts in the Prefect UI."""
    png = evaluation.image_grid(grid, grid_images)
    plot = evaluation.timing_plot(timing) if timing is not None else None
    files = evaluation.write_outputs(run, table, timing, png, plot, meta)
    cols = ["row", "n", "fid_schnell", "fid_dev", "fid_diff", "kid_schnell", "kid_dev", "cmmd_dev", "clip_iqa",
            "lpips_dev", *evaluation.comparison_columns(table)]
    cols = [c for c in cols if c in table.columns]
    create_table_artifact(table[cols].round(5).to_dict("records"), key="evaluation-table",
                          description=f"Table 4 + KID + CMMD + LPIPS on the test split of {meta['dataset_uri']}")
    md = evaluation.table_markdown(table)
    if timing is not None:
        md += "\n\n" + evaluation.timing_markdown(timing)
    create_markdown_artifact(md + f"\n\nFiles: `{run.url(evaluation.EVAL_DIR)}`", key="evaluation-report")
    return files


@flow(name="evaluate")
def evaluate(dataset_uri: str, heads: list[str], lora: str | None = None, n_images: int | None = None,
             endpoint_url: str | None = None, run_id: str | None = None, inception_weights: str | None = None,
             clip_model: str = DEFAULT_CLIP_IQA_MODEL, lpips_random_backbone: bool = False,
             resolution: int | None = None, resize: Literal["clean", "torch"] = DEFAULT_FID_RESIZE, n_boot: int = 20,
             device: str = "auto", batch_size: int = 16, profile: str = "tiny",
             timing_resolutions: list[int] | None = None, timing_images: int = 2, feature_cache: bool = True,
             grid_images: int = 6, kid_subsets: int = 100, kid_subset_size: int = 1000,
             baseline: str = "schnell", primary: str = "d_kid_dev", alpha: float = 0.05) -> dict[str, Any]:
    """Evaluate heads (folders or run URIs) on the dataset's test split; outputs under runs/<run_id>/.

    ``n_images``: pairs per set (each half of the test split); None: min(half, 10_000). ``resize``: how images
    reach the Inception's 299² (clean: clean-fid's PIL bicubic; torch: pytorch-fid's bilinear). ``baseline``:
    the row every other row is compared with (paired differences with verdicts); ``primary`` the comparison
    shown first, ``alpha`` the family-wise error rate of the verdicts. Every option is checked before the dataset
    is opened.
    """
    from facelift.config import resolve_config

    logger = get_run_logger()
    if run_id:
        check_id(run_id, "run id")
    cfg = evaluation.EvalConfig(n_images=n_images, resolution=resolution, resize=resize, n_boot=n_boot, device=device,
                                batch_size=batch_size, grid_images=grid_images, kid_subsets=kid_subsets,
                                kid_subset_size=kid_subset_size, baseline=baseline, primary=primary, alpha=alpha)
    metrics = MetricConfig(inception_weights, clip_model, "alex", lpips_random_backbone)
    ds = Dataset.open(dataset_uri, endpoint_url)
    ds.require_real("evaluation")
    check_head_splits(heads, ds, endpoint_url)
    run_id = run_id or f"eval-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    run = ds.root_store().child(f"runs/{run_id}")
    split = select_test_split(ds, cfg.n_images, cfg.resolution)
    table, grid, networks = score(ds, split, heads, lora, metrics, ds.root_store() if feature_cache else None, cfg,
                                  endpoint_url, profile)
    timing = None
    if timing_resolutions and heads:
        gen = resolve_config(profile).generation
        timing = timing_table(gen.schnell, gen.dev, evaluation.timing_head(heads, endpoint_url), timing_resolutions,
                              resolve_config(profile).cache_dir, device, gen.dtype, timing_images)
    meta = {"run_id": run_id, "dataset_uri": ds.uri, "heads": heads, "lora": lora, **split.meta(), **networks,
            "profile": profile,
            "metrics": {"inception_weights": inception_weights or "default search path", "clip_model": clip_model,
                        "lpips": "alex" + (" (random backbone: tests only)" if lpips_random_backbone else "")}}
    files = report(run, table, timing, grid, meta, grid_images)
    logger.info("evaluation %s:\n%s", run_id, evaluation.table_markdown(table))
    emit_event(event=EVENT, resource={"prefect.resource.id": f"facelift.run.{run_id}"},
               payload={"run_uri": run.url(), "dataset_uri": ds.uri})
    return {"run_id": run_id, "run_uri": run.url(), "files": files, "table": table.to_dict("records"),
            "timing": None if timing is None else timing.to_dict("records"), "meta": meta}


if __name__ == "__main__":
    import sys

    evaluate(sys.argv[1], sys.argv[2:])
