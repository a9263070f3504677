"""Dataset build steps as pure functions: prepare (identity, plan), find missing shards, finalize.

Identity: the dataset id defaults to ``<mode>-<count>-<fingerprint[:10]>`` where the fingerprint hashes
every parameter that changes the content (plan + generation settings, names file bytes, weights file
bytes). The same parameters resume the same dataset; changed parameters give a new one. An explicit
``dataset_id`` whose stored fingerprint differs is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from facelift.config import BuildConfig
from facelift.dataset import MANIFEST as MANIFEST_KEY
from facelift.dataset import MANIFEST_COLUMNS, Dataset, DatasetError
from facelift.errors import first_line
from facelift.lease import Lease
from facelift.splits import SplitSpec, spec_fields
from facelift.storage import Store, open_uri
from facelift.tasks.build.names import bundled_names_uri, read_names
from facelift.tasks.build.plan import make_plan

log = logging.getLogger(__name__)
_PACKAGES = ("facelift", "torch", "diffusers", "transformers", "ray", "prefect", "pyarrow", "s3fs")


class BuildError(RuntimeError):
    """A build run that could not finish; its message is one line: cause, what was kept, what to run next."""


def failure_message(ds: Dataset, n_shards: int, failed: dict[int, str]) -> str:
    """One line for the CLI and the flow's final state in the Prefect UI."""
    first, reason = min(failed.items())
    reason = first_line(reason, 300) or "unknown error"
    kept = n_shards - len(failed)
    return (f"{len(failed)} of {n_shards} shard(s) failed ({', '.join(f'{s:05d}' for s in sorted(failed))}); "
            f"first: shard {first:05d}: {reason}. Kept: {kept} committed shard(s) in {ds.store.where()} and "
            f"any rendered but uncommitted shard in the workers' spool. Next: run the same build again; it "
            f"generates only the missing shards.")


@dataclass
class Prepared:
    dataset: Dataset
    plan: pd.DataFrame
    fingerprint: str
    names_report: dict[str, Any] | None
    resumed: bool
    lease: Lease | None = None  # held from here until the flow releases it: one writer per dataset


def file_sha256(uri: str, endpoint_url: str | None) -> str:
    h = hashlib.sha256()
    with open_uri(uri, endpoint_url) as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def prepare(cfg: BuildConfig) -> Prepared:
    """Check the store, read names, make the plan and create or verify the dataset's identity (resuming a
    dataset whose plan is committed, the names are not read again: only hashed for the fingerprint)."""
    store = Store.from_config(cfg.storage)
    store.check()
    endpoint = cfg.storage.endpoint_url
    people, report, parts = None, None, [cfg.fingerprint()]
    names_uri = cfg.plan.names_uri or bundled_names_uri()
    if cfg.plan.prompt.mode == "enriched":
        parts.append(file_sha256(names_uri, endpoint))
    weights = None
    if cfg.plan.weights_uri:
        with open_uri(cfg.plan.weights_uri, endpoint) as fh:
            weights = pd.read_parquet(fh)
        missing = {"nconst", "weight"} - set(weights.columns)
        if missing:
            raise DatasetError(f"weights file {cfg.plan.weights_uri} lacks columns {sorted(missing)}")
        parts.append(file_sha256(cfg.plan.weights_uri, endpoint))
    fingerprint = hashlib.sha256("|".join(parts).encode()).hexdigest()
    committed = _committed(store, cfg, fingerprint)
    if committed is not None:  # resuming: the plan made from these very names is committed, so it is not redone
        plan, report = committed.plan(), committed.info().get("names")
    else:
        if cfg.plan.prompt.mode == "enriched":
            people, names_report = read_names(names_uri, endpoint)
            report = names_report.as_dict()
        plan = make_plan(people, cfg.plan, weights)
    dataset_id = cfg.dataset_id or f"{cfg.plan.prompt.mode}-{len(plan)}-{fingerprint[:10]}"
    ds = Dataset.at(store, dataset_id)
    lease = Lease(ds.store, f"dataset {dataset_id}", cfg.storage.lease_ttl_s, cfg.storage.lease_wait_s).acquire()
    try:
        return _open_or_create(cfg, ds, plan, fingerprint, report, lease)
    except BaseException:
        lease.release()
        raise


def _open_or_create(cfg: BuildConfig, ds: Dataset, plan: pd.DataFrame, fingerprint: str,
                    report: dict[str, Any] | None, lease: Lease) -> Prepared:
    """Under the lease: verify a resumed dataset's identity, or write a new one's plan and dataset.json."""
    dataset_id = ds.dataset_id
    resumed = ds.store.exists("dataset.json")
    if resumed:
        info = ds.info()
        if info.get("fingerprint") != fingerprint:
            raise DatasetError(
                f"dataset {dataset_id} at {ds.store.where()} was built with different parameters "
                f"(fingerprint {str(info.get('fingerprint'))[:10]} != {fingerprint[:10]}); use another "
                f"dataset id, or omit it to get one derived from the parameters"
            )
        stored = ds.plan()
        if not stored[["pair_id", "seed", "shard"]].equals(plan[["pair_id", "seed", "shard"]]):
            raise DatasetError(f"dataset {dataset_id}: stored plan differs from the recomputed plan")
        if not info.get("splits"):  # created before splits were recorded: fix them now, from the same hash rule
            info["splits"] = _splits(cfg, plan)
            ds.write_info(info)
            log.warning("dataset %s had no recorded splits: fixed them now (%s)", dataset_id, cfg.splits.describe())
        elif SplitSpec.model_validate(spec_fields(info["splits"])) != cfg.splits:
            log.warning("dataset %s keeps the splits it was created with (%s); the requested %s do not apply",
                        dataset_id, ds.splits().describe(), cfg.splits.describe())
        log.info("resuming dataset %s (%d pairs planned)", dataset_id, len(plan))
    else:
        ds.write_plan(plan)
        ds.write_info({
            "dataset_id": dataset_id, "status": "building", "fingerprint": fingerprint, "created": _now(),
            "config": cfg.public_dict(), "names": report, "versions": versions(), "splits": _splits(cfg, plan),
            "counts": {"planned": len(plan), "shards_planned": int(plan["shard"].nunique())},
            **({"simulated": True} if cfg.generation.simulated else {}),  # sim profile: placeholder images
        })
        log.info("new dataset %s: %d pairs in %d shards", dataset_id, len(plan), plan["shard"].nunique())
    return Prepared(ds, plan, fingerprint, report, resumed, lease)


def _committed(store: Store, cfg: BuildConfig, fingerprint: str) -> Dataset | None:
    """The enriched dataset these parameters resume, if its id is known without reading the names (an explicit
    id, or a count) and it exists with the same fingerprint (config, names and weights bytes) and a plan."""
    if cfg.plan.prompt.mode != "enriched" or (cfg.dataset_id is None and cfg.plan.count is None):
        return None
    ds = Dataset.at(store, cfg.dataset_id or f"enriched-{cfg.plan.count}-{fingerprint[:10]}")
    if not (ds.store.exists("dataset.json") and ds.store.exists("plan.parquet")):
        return None
    return ds if ds.info().get("fingerprint") == fingerprint else None


def _splits(cfg: BuildConfig, plan: pd.DataFrame) -> dict[str, Any]:
    return {**cfg.splits.model_dump(), "counts": cfg.splits.counts(plan["pair_id"])}


IO_THREADS = 16  # shard footers and manifest columns are read this many at a time (object-store latency)
MANIFEST_CHUNK = 256  # shards whose manifest columns are read before they are combined into one table


def missing_shards(ds: Dataset, plan: pd.DataFrame) -> list[int]:
    """Planned shards without a valid committed object (a corrupt or short object counts as missing)."""
    expected = plan.groupby("shard").size().to_dict()
    committed = sorted(set(ds.committed_shards()) & set(expected))
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="footer") as pool:
        footers = dict(zip(committed, pool.map(ds.shard_rows, committed), strict=True))
    missing = []
    for shard, rows in sorted(expected.items()):
        if shard in footers:
            found = footers[shard]
            if found == rows:
                continue
            log.warning("shard %05d is corrupt or incomplete (%s rows, expected %d): regenerating",
                        shard, found, rows)
        missing.append(int(shard))
    return missing


def finalize(ds: Dataset, plan: pd.DataFrame, build_seconds: float, nothing_new: bool = False,
             lease: Lease | None = None) -> dict[str, Any]:
    """Write manifest.parquet and the final dataset.json once every planned shard is committed.

    It reads only each shard's footer and manifest columns (ranged reads: kilobytes per shard, not its images).
    ``nothing_new``: the caller found every shard committed and valid and generated none; a dataset already
    complete with its manifest is then left as it is (resuming a finished dataset reads no shard twice).
    ``lease``: the build's; each write happens only while it holds (:class:`~facelift.lease.LeaseLost`)."""
    t0 = time.perf_counter()
    info = ds.info()
    if nothing_new and info.get("status") == "complete" and ds.store.exists(MANIFEST_KEY):
        log.info("dataset %s was already complete: manifest kept", ds.dataset_id)
        return info
    expected = plan.groupby("shard").size().to_dict()
    missing = sorted(set(expected) - set(ds.committed_shards()))
    if missing:
        raise DatasetError(f"dataset {ds.dataset_id} is incomplete: shards {missing} are not committed; "
                           f"run the same build again to resume")
    shards, parts, short = sorted(expected), [], []
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="manifest") as pool:
        for i in range(0, len(shards), MANIFEST_CHUNK):  # a few hundred small tables alive at a time, not all
            chunk = shards[i:i + MANIFEST_CHUNK]
            tables = list(pool.map(lambda k: ds.read_shard_columns(k, MANIFEST_COLUMNS), chunk))
            short += [k for k, t in zip(chunk, tables, strict=True) if t.num_rows != expected[k]]
            parts.append(pa.concat_tables(tables).combine_chunks())
    if short:
        raise DatasetError(f"dataset {ds.dataset_id} is incomplete: shards {short} are short; "
                           f"run the same build again to regenerate them")
    manifest = pa.concat_tables(parts).to_pandas()
    del parts
    if manifest["pair_id"].duplicated().any():
        dups = manifest.loc[manifest["pair_id"].duplicated(), "pair_id"].head(5).tolist()
        raise DatasetError(f"dataset {ds.dataset_id}: duplicate pairs across shards, e.g. {dups}")
    if set(manifest["pair_id"]) != set(plan["pair_id"]):
        raise DatasetError(f"dataset {ds.dataset_id}: committed pairs do not match the plan")
    _fenced(lease)
    ds.write_manifest(manifest)
    stages = {k: float(manifest[k].sum()) for k in ("encode_s", "schnell_s", "dev_s", "png_s")}
    info.update({
        "status": "complete", "completed": _now(), "versions": versions(),
        "counts": {"planned": len(plan), "pairs": len(manifest), "shards": int(plan["shard"].nunique()),
                   "workers": int(manifest["worker"].nunique())},
        "timings": {
            "last_run_s": round(build_seconds, 3), "finalize_s": round(time.perf_counter() - t0, 3),
            "worker_seconds_per_pair": {k: round(v / len(manifest), 6) for k, v in stages.items()},
            "worker_seconds_total": {k: round(v, 3) for k, v in stages.items()},
        },
    })
    info["cost"] = cost_projection(stages, len(manifest))
    _fenced(lease)
    ds.write_info(info)
    log.info("dataset %s complete: %d pairs; manifest written", ds.dataset_id, len(manifest))
    return info


def _fenced(lease: Lease | None) -> None:
    """Publish only as the holder: the local view (renewed recently) and the record itself (this generation)."""
    if lease is not None:
        lease.check()
        lease.fence.check()


GPU_STAGES = ("encode_s", "schnell_s", "dev_s")  # the GPU is held; PNG encoding overlaps on the CPU


def cost_projection(stage_seconds: dict[str, float], pairs: int, target_pairs: int = 140_000,
                    gpus: tuple[int, ...] = (1, 8, 64)) -> dict[str, Any]:
    """GPU-seconds per pair per stage, and wall-clock hours for ``target_pairs`` on N GPUs (the paper's
    ~140k IMDb actors), assuming the measured per-pair cost and perfect scaling across shards."""
    per_pair = {k: stage_seconds[k] / pairs for k in GPU_STAGES}
    total = sum(per_pair.values())
    return {
        "gpu_seconds_per_pair": {k: round(v, 6) for k, v in per_pair.items()} | {"total": round(total, 6)},
        "projection": {"pairs": target_pairs, "gpu_hours": round(total * target_pairs / 3600, 2),
                       "wall_hours_on_n_gpus": {str(n): round(total * target_pairs / 3600 / n, 2) for n in gpus}},
    }


def summary_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    """A small table of the build for artifacts and the CLI."""
    counts, timings = info.get("counts", {}), info.get("timings", {})
    per_pair = timings.get("worker_seconds_per_pair", {})
    g = info.get("config", {}).get("generation", {})
    setup = " / ".join(f"{k} {g[k]}" for k in ("placement", "compile", "fp8") if k in g)
    return [{"metric": k, "value": v} for k, v in [
        ("dataset", info.get("dataset_id")), ("pairs", counts.get("pairs")), ("shards", counts.get("shards")),
        ("generation", setup),
        ("build seconds (this run)", timings.get("last_run_s")),
        *[(f"{k} per pair", round(v, 4)) for k, v in per_pair.items()],
        *[(f"140k pairs on {n} GPU(s), hours", h)
          for n, h in info.get("cost", {}).get("projection", {}).get("wall_hours_on_n_gpus", {}).items()],
    ]]
