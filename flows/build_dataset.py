"""Prefect flow ``build_dataset``: names -> plan -> Ray FLUX workers -> Parquet shards -> manifest."""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from tqdm.auto import tqdm

from facelift.config import resolve_config
from facelift.ids import artifact_key
from facelift.progress import ProgressArtifact
from facelift.tasks import build


@flow(name="build-dataset", log_prints=False)
def build_dataset(
    profile: str = "tiny",
    names_uri: str | None = None,
    count: int | None = None,
    mode: Literal["enriched", "baseline"] = "enriched",
    root: str | None = None,
    dataset_id: str | None = None,
    endpoint_url: str | None = None,
    weights_uri: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build (or resume) a paired schnell/dev dataset; returns the dataset summary with its URI."""
    logger = get_run_logger()
    given = {"plan.names_uri": names_uri, "plan.count": count, "plan.prompt.mode": mode,
             "storage.root": root, "dataset_id": dataset_id, "storage.endpoint_url": endpoint_url,
             "plan.weights_uri": weights_uri}
    given = {k: v for k, v in given.items() if v is not None}
    cfg = resolve_config(profile, config_file=config_file, overrides={**given, **(overrides or {})})
    t0 = time.perf_counter()
    prepared = build.prepare(cfg)
    with prepared.lease:  # one writer per dataset: a second identical build waits here, then resumes
        ds = prepared.dataset
        shards = build.missing_shards(ds, prepared.plan)
        n_shards = int(prepared.plan["shard"].nunique())
        logger.info("dataset %s: %d of %d shards to generate (lease generation %d)", ds.uri, len(shards), n_shards,
                    prepared.lease.generation)
        committed = n_shards - len(shards)
        with tqdm(total=n_shards, initial=committed, unit="shard", disable=None) as bar, \
                ProgressArtifact(committed, n_shards, f"shards committed for {ds.dataset_id}") as shown:

            def progress(done: int, total: int) -> None:  # on the dispatch loop: no API call here
                bar.update(1)
                shown.value = committed + done

            outcome = build.run_shards(cfg, prepared, shards, progress) if shards else build.ShardOutcome()
        if outcome.failed:
            raise build.BuildError(build.failure_message(ds, n_shards, outcome.failed))
        seconds = time.perf_counter() - t0
        was_complete = ds.info().get("status") == "complete"
        info = build.finalize(ds, prepared.plan, seconds, nothing_new=not shards, lease=prepared.lease)
        changed = bool(outcome.committed) or not was_complete  # new pairs, or this run completed the dataset
        generated = int(prepared.plan["shard"].isin(shards).sum())
        rows = build.summary_rows(info) + [
            {"metric": "pairs generated (this run)", "value": generated},
            {"metric": "pairs rendered (this run)", "value": outcome.rendered},
            {"metric": "shards committed from a spooled render", "value": len(outcome.from_spool)},
            {"metric": "pairs/s (this run)", "value": round(generated / seconds, 3) if generated else 0},
        ]
        create_table_artifact(rows, key=artifact_key("build", ds.dataset_id),
                              description=f"Dataset {ds.uri}")
        if changed:  # events mean change: a rebuild that committed nothing starts no train/audit/evaluate
            simulated = bool(info.get("simulated"))  # the triggers match "false": a sim build chains nothing
            emit_event(event="facelift.dataset.built",
                       resource={"prefect.resource.id": f"facelift.dataset.{ds.dataset_id}",
                                 "facelift.simulated": str(simulated).lower()},
                       payload={"dataset_uri": ds.uri, "dataset_id": ds.dataset_id, "pairs": info["counts"]["pairs"],
                                "simulated": simulated})
        else:
            logger.info("dataset %s unchanged (complete, nothing committed by this run): no facelift.dataset.built "
                        "event", ds.dataset_id)
        return {"dataset_uri": ds.uri, "dataset_id": ds.dataset_id, "changed": changed, "generated_pairs": generated,
                "generated_shards": len(shards), "rendered_pairs": outcome.rendered,
                "spooled_shards_committed": outcome.from_spool, "workers_busy": round(outcome.busy_fraction, 4),
                **info["counts"]}


if __name__ == "__main__":
    build_dataset()
