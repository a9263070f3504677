"""End to end: Prefect flow -> Ray workers -> tiny FLUX -> Parquet shards, on a local path and on S3."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import datasets
import pytest
from typer.testing import CliRunner

from facelift.cli.main import app
from facelift.dataset import IMAGE_COLUMNS, Dataset, DatasetError
from facelift.flows.build_dataset import build_dataset
from facelift.storage import StorageError

pytestmark = pytest.mark.usefixtures("prefect_harness", "ray_local", "cache_dir")
SMALL = {"plan.shard_size": 4}


def _mtimes(path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(path.glob("*.parquet"))}


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    result = build_dataset(count=12, root=str(root), overrides=SMALL)
    return root, result


def test_build_writes_plan_shards_manifest_and_info(local_build):
    _, result = local_build
    ds = Dataset.open(result["dataset_uri"])
    plan, manifest, info = ds.plan(), ds.manifest(), ds.info()
    assert result["generated_pairs"] == 12 and result["shards"] == 3 and ds.committed_shards() == [0, 1, 2]
    assert sorted(manifest["pair_id"]) == sorted(plan["pair_id"]) and manifest["pair_id"].is_unique
    assert not set(IMAGE_COLUMNS) & set(manifest.columns)
    assert info["status"] == "complete" and info["counts"]["pairs"] == 12
    assert info["config"]["generation"]["dev"]["guidance"] == 3.5 and info["versions"]["diffusers"]
    assert info["names"]["dropped"]["malformed_line"] == 2
    assert (manifest["dev_steps_run"] == 3).all() and (manifest["width"] == 64).all()
    # splits fixed at creation: the rule in dataset.json, its counts cover the plan
    assert {k: info["splits"][k] for k in ("val", "test", "salt")} == {"val": 0.05, "test": 0.1, "salt": "split"}
    assert sum(info["splits"]["counts"].values()) == 12 and ds.splits().counts(plan["pair_id"]) == \
        info["splits"]["counts"]
    assert result["rendered_pairs"] == 12 and result["spooled_shards_committed"] == []
    from facelift.tasks.build.steps import summary_rows

    assert {"metric": "generation", "value": "placement auto / compile none / fp8 False"} in summary_rows(info)


def test_shards_decode_as_images_with_hf_datasets(local_build):
    _, result = local_build
    files = sorted(str(p) for p in (os.path.join(result["dataset_uri"], "shards"),))
    hf = datasets.load_dataset("parquet", data_files=f"{files[0]}/*.parquet", split="train")
    assert len(hf) == 12 and hf.features["schnell_image"].__class__.__name__ == "Image"
    row = hf[0]
    assert row["schnell_image"].size == (64, 64) and row["dev_image"].mode == "RGB"
    table = Dataset.open(result["dataset_uri"]).read_shard(0)
    cell = table.column("dev_image")[0].as_py()
    assert hashlib.sha256(cell["bytes"]).hexdigest() == table.column("dev_sha256")[0].as_py()


def test_rerun_generates_nothing_and_a_deleted_or_corrupt_shard_alone_is_redone(local_build):
    root, result = local_build
    shards = root / "datasets" / result["dataset_id"] / "shards"
    before = _mtimes(shards)
    again = build_dataset(count=12, root=str(root), overrides=SMALL)
    assert again["generated_pairs"] == 0 and again["dataset_id"] == result["dataset_id"]
    assert _mtimes(shards) == before
    (shards / "00001.parquet").unlink()
    (shards / "00002.parquet").write_bytes(b"not parquet: a torn write from some other tool")
    repaired = build_dataset(count=12, root=str(root), overrides=SMALL)
    assert repaired["generated_shards"] == 2 and repaired["generated_pairs"] == 8
    after = _mtimes(shards)
    assert after["00000.parquet"] == before["00000.parquet"]
    manifest = Dataset.open(result["dataset_uri"]).manifest()
    assert len(manifest) == 12 and manifest["pair_id"].is_unique


def test_same_parameters_on_s3_give_the_same_dataset(seaweed, local_build):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]  # SeaweedFS checks signatures made with it
    _, local = local_build
    root = f"s3://facelift/{uuid.uuid4().hex}"
    result = build_dataset(count=12, root=root, endpoint_url=seaweed.endpoint, overrides=SMALL)
    assert result["dataset_id"] == local["dataset_id"]  # identity comes from content parameters
    ds = Dataset.open(result["dataset_uri"], seaweed.endpoint)
    assert ds.uri.startswith("s3://facelift/") and ds.committed_shards() == [0, 1, 2]
    s3_manifest = ds.manifest().set_index("pair_id").sort_index()
    local_manifest = Dataset.open(local["dataset_uri"]).manifest().set_index("pair_id").sort_index()
    assert (s3_manifest["schnell_sha256"] == local_manifest["schnell_sha256"]).all()
    raw = ds.store.read_bytes("dataset.json").decode()
    assert secret not in raw and json.loads(raw)["status"] == "complete"
    table = ds.read_shard(0)  # (load_dataset refuses remote URLs under HF_HUB_OFFLINE; decode in place)
    hf = datasets.Dataset(table, info=datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(
        table.schema)))
    assert hf[0]["schnell_image"].size == (64, 64)


def test_killed_worker_shard_is_retried_without_duplicates(tmp_path):
    marker = tmp_path / "killed-once"
    result = build_dataset(count=12, root=str(tmp_path / "data"), overrides={
        **SMALL, "ray.chaos.kill_on_shard": 1, "ray.chaos.marker": str(marker)})
    assert marker.exists()  # the worker really died on shard 1
    manifest = Dataset.open(result["dataset_uri"]).manifest()
    assert len(manifest) == 12 and manifest["pair_id"].is_unique
    workers = manifest.groupby("shard")["worker"].first()
    assert workers[0] != workers[1]  # shard 1 was redone by the restarted actor (a new process)


def test_pooled_placement_builds_the_same_dataset_and_survives_a_killed_schnell_actor(local_build, tmp_path):
    """placement=pools: a schnell actor hands each shard's schnell images to a dev actor that commits it;
    the pairs are bit-identical to the resident build's, and a schnell actor killed mid-shard costs nothing."""
    marker = tmp_path / "killed-once"
    result = build_dataset(count=12, root=str(tmp_path / "data"), overrides={
        **SMALL, "generation.placement": "pools", "ray.num_workers": 2,
        "ray.chaos.kill_on_shard": 2, "ray.chaos.marker": str(marker)})
    assert marker.exists()  # the first actor to see shard 2 (the schnell one) really died
    resident = Dataset.open(local_build[1]["dataset_uri"]).manifest().set_index("pair_id").sort_index()
    pooled = Dataset.open(result["dataset_uri"]).manifest().set_index("pair_id").sort_index()
    assert result["dataset_uri"].endswith(local_build[1]["dataset_id"])  # placement is not part of the identity
    assert pooled.index.is_unique and len(pooled) == 12
    for col in ("schnell_sha256", "dev_sha256"):
        assert pooled[col].equals(resident[col]), col
    assert (pooled["schnell_s"] > 0).all() and (pooled["dev_s"] > 0).all()


def test_pool_sizes_follow_the_stage_costs():
    from facelift.config import resolve_config
    from facelift.tasks.build.generate import pool_sizes

    flux = resolve_config("flux", environ={}, overrides={"generation.placement": "pools", "ray.num_workers": 8})
    assert pool_sizes(flux) == {"schnell": 2, "dev": 6}  # 4 schnell steps : 17 dev steps (+ VAE passes)
    assert pool_sizes(flux.model_copy(update={"ray": flux.ray.model_copy(update={"schnell_workers": 9})})) == \
        {"schnell": 7, "dev": 1}  # an explicit size leaves at least one dev actor
    two = flux.model_copy(update={"ray": flux.ray.model_copy(update={"num_workers": 2})})
    assert pool_sizes(two) == {"schnell": 1, "dev": 1}
    with pytest.raises(ValueError, match="num_workers >= 2"):
        pool_sizes(flux.model_copy(update={"ray": flux.ray.model_copy(update={"num_workers": 1})}))
    assert pool_sizes(resolve_config("tiny", environ={})) == {"pair": 1}


def test_unreachable_store_is_a_clear_error_and_writes_nothing():
    with pytest.raises(StorageError, match=r"unreachable.*127\.0\.0\.1:9"):
        build_dataset(count=4, root="s3://facelift/x", endpoint_url="http://127.0.0.1:9",
                      overrides={"storage.connect_timeout_s": 1, "storage.max_attempts": 1})


def test_changed_parameters_cannot_reuse_a_dataset_id(tmp_path):
    build_dataset(count=4, root=str(tmp_path), dataset_id="fixed", overrides=SMALL)
    with pytest.raises(DatasetError, match="fixed.*different parameters"):
        build_dataset(count=5, root=str(tmp_path), dataset_id="fixed", overrides=SMALL)


def test_cli_info_and_clear_errors(local_build):
    root, result = local_build
    runner = CliRunner()
    out = runner.invoke(app, ["info", result["dataset_uri"]])
    assert out.exit_code == 0 and "12 of 12 planned" in out.output and "malformed_line 2" in out.output
    listing = runner.invoke(app, ["info", str(root)])
    assert result["dataset_id"] in listing.output
    bad = runner.invoke(app, ["build", "--profile", "nope"])
    assert bad.exit_code == 2 and "unknown profile 'nope'" in bad.output
    missing = runner.invoke(app, ["info", str(root / "nothing")])
    assert missing.exit_code == 2 and "no dataset.json" in missing.output


def test_weights_file_steers_the_plan_and_the_dataset_identity(tmp_path):
    import pandas as pd

    from facelift.tasks.build.names import read_names

    people = read_names()[0].head(6)
    weights = tmp_path / "weights.parquet"
    pd.DataFrame({"nconst": people["nconst"], "name": people["name"], "weight": [1.0] * 4 + [0.0] * 2}) \
        .to_parquet(weights)
    result = build_dataset(count=4, root=str(tmp_path / "data"), weights_uri=str(weights), overrides=SMALL)
    plan = Dataset.open(result["dataset_uri"]).plan()
    assert sorted(plan["nconst"]) == sorted(people["nconst"].head(4))  # weight 0 = never drawn
    unweighted = build_dataset(count=4, root=str(tmp_path / "data"), overrides=SMALL)
    assert unweighted["dataset_id"] != result["dataset_id"]
