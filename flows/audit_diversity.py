"""Prefect flow ``audit_diversity``: DeepFace audit of datasets -> Table 1 + t-SNE plots under runs/<run_id>/."""

from __future__ import annotations

import base64
import dataclasses
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from facelift import done
from facelift.dataset import Dataset
from facelift.ids import artifact_key, check_id
from facelift.storage import Store
from facelift.tasks.audit import AuditOptions, ShardAudit, audit_shard, prepare_audit, summary_dict, write_outputs


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, task_run_name="audit-{dataset_id}-{shard:05d}")
def audit_shard_task(dataset_uri: str, dataset_id: str, shard: int, options: AuditOptions,
                     endpoint_url: str | None) -> ShardAudit:
    """Audit one dataset shard (skipped if its results object already exists)."""
    return audit_shard(Dataset.open(dataset_uri, endpoint_url), shard, options)


@task(cache_policy=NO_CACHE)
def check_weights_task(detector: str) -> None:
    """Fail fast, naming every missing DeepFace file."""
    from facelift.models.deepface_weights import check_weights

    check_weights(detector=detector)


def _default_run_id() -> str:
    return f"audit-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


@flow(name="audit-diversity")
def audit_diversity(
    dataset_uris: list[str],
    detector: str = "opencv",
    include_dev: bool = False,
    tsne: bool = True,
    endpoint_url: str | None = None,
    run_id: str | None = None,
    output_root: str | None = None,
    enforce_detection: bool = True,
    perplexity: float = 30.0,
    tsne_max_fit: int = 20_000,
    skip_completed: bool = False,
) -> dict[str, Any]:
    """Audit perceived gender/age/race and ArcFace embeddings of datasets; Table 1 and t-SNE plots.

    ``skip_completed`` (set by the event trigger): if these datasets' contents were already audited with these
    options, return that audit instead of running it again (and emit no event)."""
    logger = get_run_logger()
    if not dataset_uris:
        raise ValueError("dataset_uris is empty: give at least one dataset URI (.../datasets/<id>)")
    datasets = [Dataset.open(uri, endpoint_url) for uri in dataset_uris]
    for ds in datasets:
        ds.require_real("the diversity audit")
    repeatable = skip_completed and run_id is None  # an explicit run id is always run
    run_id = check_id(run_id, "run id") if run_id else _default_run_id()
    root = Store(output_root, endpoint_url) if output_root else datasets[0].root_store()
    out = root.child(f"runs/{run_id}")
    options = AuditOptions(detector=detector, include_dev=include_dev, enforce_detection=enforce_detection)
    key = done.run_key("audit", [done.dataset_identity(ds) for ds in datasets],
                       {"options": dataclasses.asdict(options),
                        "tsne": tsne, "perplexity": perplexity, "tsne_max_fit": tsne_max_fit,
                        "output_root": output_root})
    what = f"the contents of {', '.join(ds.dataset_id for ds in datasets)}"
    with done.unless_done(root, key, "audit", what, repeatable, logger) as prior:
        if prior is not None:
            return {**prior, "skipped": True}
        check_weights_task(detector)

        summaries = {}
        for ds in datasets:
            prepare_audit(ds, options)
            shards = ds.committed_shards()
            logger.info("auditing %s: %d shards (%s images, detector %s)", ds.uri, len(shards),
                        "+".join(options.images), detector)
            results = [audit_shard_task(ds.uri, ds.dataset_id, s, options, endpoint_url) for s in shards]
            summaries[ds.dataset_id] = summary_dict(results)
            logger.info("%s: %s", ds.dataset_id, {k: v for k, v in summaries[ds.dataset_id].items()
                                                   if k != "per_shard"})

        outputs = write_outputs(datasets, detector, out, include_dev=include_dev, tsne=tsne,
                                perplexity=perplexity, tsne_max_fit=tsne_max_fit)
        create_table_artifact(outputs.table1.to_dict("records"), key=artifact_key("audit", run_id, "table1"),
                              description=f"Diversity audit (Table 1), {detector} detector: {outputs.run_uri}")
        plots = "\n\n".join(f"### {name}\n![{name}](data:image/png;base64,{base64.b64encode(png).decode()})"
                            for name, png in outputs.plots.items())
        create_markdown_artifact(
            f"# Diversity audit `{run_id}`\n\nOutputs: `{outputs.run_uri}`\n\n{outputs.table1_markdown}\n\n{plots}",
            key=artifact_key("audit", run_id, "report"), description="Diversity audit: Table 1 and ArcFace t-SNE plots")
        dataset_uris_out = [ds.uri for ds in datasets]
        emit_event(event="facelift.audit.completed", resource={"prefect.resource.id": f"facelift.run.{run_id}"},
                   payload={"run_uri": outputs.run_uri, "dataset_uris": dataset_uris_out})
        logger.info("audit written to %s\n%s", outputs.run_uri, outputs.table1_markdown)
        result = {"run_id": run_id, "run_uri": outputs.run_uri, "dataset_uris": dataset_uris_out,
                "files": outputs.files, "audit": {k: {kk: vv for kk, vv in v.items() if kk != "per_shard"}
                                                  for k, v in summaries.items()},
                "report": outputs.report}
        done.record_completed(root, key, {"run_id": run_id, "run_uri": outputs.run_uri, "result": result})
        return result


if __name__ == "__main__":
    import sys

    audit_diversity(sys.argv[1:])
