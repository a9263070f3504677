"""Prefect flow ``curate-pairs``: score every pair of a dataset, dedup, decide keep/drop with reasons.

build -> curate -> train: ``facelift.dataset.built`` triggers it; it emits ``facelift.curation.completed``
(dataset_uri, curation_id), which triggers train. Scores are per shard and resumable; a change of thresholds
only decides again from them (docs/curate.md).
"""

from __future__ import annotations

import functools
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from tqdm.auto import tqdm

from facelift import done
from facelift.dataset import Dataset
from facelift.ids import artifact_key
from facelift.progress import ProgressArtifact
from facelift.tasks.curate import CurateConfig, CurationError, Scorer, decide_curation, is_tiny, scores_key
from facelift.tasks.curate.report import build_report, kept_by, reasons_table
from facelift.tasks.curate.score import score_models, score_shard, unscored


def default_models(tiny: bool) -> dict[str, str]:
    if tiny:
        from facelift.models.tiny_metrics import ensure_tiny_clip

        clip = str(ensure_tiny_clip())
        return {"clip_model": clip, "iqa_model": clip, "detector": "opencv"}
    return {f: CurateConfig.model_fields[f].default for f in ("clip_model", "iqa_model", "detector")}


@functools.lru_cache(maxsize=2)
def _scorer(cfg: CurateConfig) -> Scorer:
    """The models, loaded once per process for every shard task."""
    return Scorer(cfg)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, task_run_name="score-{shard:05d}")
def score_task(dataset_uri: str, endpoint_url: str | None, shard: int, version: str, key: str,
               cfg: CurateConfig) -> dict:
    res = score_shard(Dataset.open(dataset_uri, endpoint_url), shard, key, _scorer(cfg), version)
    return {"shard": res.shard, "pairs": res.pairs, "corrupt": res.corrupt, "seconds": round(res.seconds, 2)}


@task(cache_policy=NO_CACHE)
def decide_task(dataset_uri: str, endpoint_url: str | None, key: str, models: dict[str, str], cfg: CurateConfig,
                shards: list[int]) -> dict[str, Any]:
    """Dedup, decide, write keep.parquet, curation.json and report.md, and publish the artifacts."""
    ds = Dataset.open(dataset_uri, endpoint_url)
    try:
        cur, failed = decide_curation(ds, key, models, cfg, shards), None
    except CurationError as exc:  # the guard: publish the report that shows why, then fail
        if exc.curation is None:
            raise
        cur, failed = exc.curation, exc
    md, _ = build_report(ds, cur, cfg.thresholds)
    key_ = artifact_key("curate", ds.dataset_id, cur.curation_id)
    create_table_artifact(reasons_table(cur, cfg.thresholds), key=key_,
                          description=f"Curation {cur.curation_id}: kept {cur.info['kept']} of {cur.info['pairs']} "
                                      f"pairs; {cur.uri}")
    create_table_artifact(kept_by(cur, "worker").to_dict("records"), key=f"{key_}-workers"[:64],
                          description="kept % per worker (LOW: below mean - 3 sd: check that node's GPU)")
    create_markdown_artifact(md, key=f"{key_}-report"[:64], description=f"Curation report {cur.curation_id}")
    if failed:
        raise failed
    return {**{k: cur.info[k] for k in ("curation_id", "pairs", "kept", "kept_fraction", "kept_by_split",
                                         "enforced", "report_only", "report_only_why")},
            "curation_uri": cur.uri, "report_uri": f"{cur.uri}/report.md"}


@flow(name="curate-pairs")
def curate_pairs(
    dataset_uri: str,
    clip_model: str | None = None,
    iqa_model: str | None = None,
    detector: str | None = None,
    thresholds: dict[str, float] | None = None,
    report_only: list[str] | None = None,
    min_kept_fraction: float = 0.5,
    batch_size: int = 16,
    endpoint_url: str | None = None,
    skip_completed: bool = False,
) -> dict[str, Any]:
    """Curate a dataset's pairs; returns the curation id, counts and where its files are.

    Models left None: a real dataset uses CLIP ViT-L/14, the evaluation's CLIP-IQA (ViT-B/16) and retinaface; a
    tiny-profile one the tiny random-weight CLIP and opencv (offline; nothing to download). ``report_only``
    None: every filter decides on a real dataset, the semantic ones report only on a tiny one.
    ``skip_completed`` (set by the event trigger): a curation already done for this build and config is not
    repeated (and emits no event)."""
    logger = get_run_logger()
    ds = Dataset.open(dataset_uri, endpoint_url)
    ds.require_real("curation")
    tiny = is_tiny(ds)
    defaults = default_models(tiny)
    cfg = CurateConfig(clip_model=clip_model or defaults["clip_model"], iqa_model=iqa_model or defaults["iqa_model"],
                       detector=detector or defaults["detector"],
                       thresholds=thresholds or {}, min_kept_fraction=min_kept_fraction, batch_size=batch_size,
                       report_only=tuple(report_only) if report_only is not None else None)
    models = score_models(cfg)
    key = scores_key(models)
    root = ds.root_store()
    run_key = done.run_key("curate", [done.dataset_identity(ds)], cfg.model_dump(mode="json", exclude={"batch_size"}))
    with done.unless_done(root, run_key, "curation", f"this build of {ds.dataset_id}", skip_completed,
                          logger) as prior:
        if prior is not None:
            return {**prior, "skipped": True}
        shards = ds.committed_shards()
        todo = unscored(ds, key, shards)
        logger.info("curating %s: %d shards, %d to score (scores %s%s)", ds.uri, len(shards), len(todo), key,
                    "; tiny profile: the semantic filters report only" if tiny else "")
        with tqdm(total=len(shards), initial=len(shards) - len(todo), unit="shard", desc="score",
                  disable=None) as bar, \
                ProgressArtifact(len(shards) - len(todo), len(shards), f"shards scored for {ds.dataset_id}") as shown:
            for shard, version in todo.items():
                score_task(ds.uri, endpoint_url, shard, version, key, cfg)
                bar.update(1)
                shown.value += 1
        result = decide_task(ds.uri, endpoint_url, key, models, cfg, shards)
        logger.info("curation %s: kept %d of %d pairs (%.0f%%); report %s", result["curation_id"], result["kept"],
                    result["pairs"], 100 * result["kept_fraction"], result["report_uri"])
        emit_event(event="facelift.curation.completed",
                   resource={"prefect.resource.id": f"facelift.curation.{ds.dataset_id}.{result['curation_id']}"},
                   payload={"dataset_uri": ds.uri, "curation_id": result["curation_id"],
                            "curation_uri": result["curation_uri"]})
        done.record_completed(root, run_key, {"run_id": result["curation_id"], "run_uri": result["curation_uri"],
                                              "result": result})
        return result
