"""One id rule for datasets and runs, checked before any work; artifact keys derived safely from any valid id."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from facelift.cli.main import app
from facelift.ids import IdError, artifact_key, check_id

VALID = ["v1.2", "enriched-24-0123456789", "a_b-C.9", "x" * 128, "1", "v.1_2-3"]
INVALID = ["../x", "a/b", "..", ".", "a..b", "", "x" * 129, "a b", "é", "a\\b", "x\n", "$(id)"]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids_pass(value):
    assert check_id(value) == value


@pytest.mark.parametrize("value", INVALID)
def test_invalid_ids_are_one_clear_line(value):
    with pytest.raises(IdError) as err:
        check_id(value, "run id")
    message = str(err.value)
    assert "\n" not in message and message.startswith("run id")


def test_artifact_keys_are_valid_and_distinct():
    keys = {artifact_key("build", v) for v in [*VALID, "v1-2", "V1.2", "v1_2"]}
    assert len(keys) == len(VALID) + 3  # no two ids share a key
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", k) and len(k) <= 60 for k in keys)
    assert artifact_key("build", "abc").startswith("build-abc-")  # readable, and always the hash
    assert artifact_key("a-b", "c") != artifact_key("a", "b-c")


def test_no_id_forges_another_ids_artifact_key():
    """``v1.2`` gets ``build-v1-2-<hash>``; an id spelled ``v1-2-<that hash>`` must not get the same key (it did:
    a key that needed no change was used as it was)."""
    key = artifact_key("build", "v1.2")
    forged = key.removeprefix("build-")
    check_id(forged)  # a valid dataset id
    assert artifact_key("build", forged) != key


def test_a_run_id_taken_from_run_uri_is_checked(tmp_path):
    from facelift.tasks.train.loop import TrainConfig, resolve_run

    def cfg(run: str) -> TrainConfig:
        return TrainConfig(dataset_uri=str(tmp_path / "datasets" / "d"), head="unet_cbam",
                           run_uri=str(tmp_path / "runs" / run))

    with pytest.raises(IdError, match=r"run_uri\) 'a b' contains ' '"):
        resolve_run(cfg("a b"))
    assert resolve_run(cfg("r1")).run_id == "r1"


def test_cli_refuses_a_bad_id_before_any_work(tmp_path, prefect_harness):
    runner = CliRunner()
    out = tmp_path / "data"
    res = runner.invoke(app, ["build", "--dataset-id", "../x", "--count", "4", "--out", str(out)])
    assert res.exit_code == 2 and "dataset id '../x'" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()  # one line; nothing planned or written
    res = runner.invoke(app, ["rebuild", "--dataset-id", "a/b"])  # refused before the server is asked
    assert res.exit_code == 2 and "dataset id 'a/b'" in res.output, res.output
    res = runner.invoke(app, ["train", str(tmp_path / "nope"), "--run-id", "..", "--max-steps", "1"])
    assert res.exit_code == 2 and "run id '..'" in res.output, res.output


def test_dotted_dataset_id_builds_and_publishes_its_table(tmp_path, prefect_harness, ray_local, cache_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    res = CliRunner().invoke(app, ["build", "--dataset-id", "v1.2", "--count", "4", "--out", str(tmp_path),
                                   "--set", "plan.shard_size=4"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "datasets" / "v1.2" / "manifest.parquet").is_file()
    with get_client(sync_client=True) as client:
        key = ArtifactFilterKey(any_=[artifact_key("build", "v1.2")])  # not build-v1.2: an invalid key
        assert client.read_artifacts(artifact_filter=ArtifactFilter(key=key))


def test_a_dataset_id_taken_from_a_uri_is_checked(tmp_path):
    from facelift.dataset import Dataset, DatasetError

    with pytest.raises(DatasetError, match=r"dataset id \(the last part of the dataset URI\) 'a b' contains ' '"):
        Dataset.open(str(tmp_path / "datasets" / "a b"))
