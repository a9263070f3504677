"""The ``sim`` profile: a real build (plan, Ray actors, Prefect tasks, commit, manifest) with a stand-in renderer."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from typer.testing import CliRunner

from facelift.cli.main import app
from facelift.config import resolve_config
from facelift.dataset import Dataset
from facelift.tasks.build.sim import SimPair, placeholder

pytestmark = pytest.mark.usefixtures("prefect_harness", "ray_local", "cache_dir")
SIM = ["--profile", "sim", "--mode", "baseline", "--set", "generation.height=16", "--set", "generation.width=32",
       "--set", "plan.shard_size=3"]


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory):
    """`facelift build --profile sim` through the CLI: 5 workers as slots of two threaded actors."""
    root = tmp_path_factory.mktemp("sim")
    res = CliRunner().invoke(app, ["build", *SIM, "--count", "14", "--workers", "5", "--out", str(root),
                                   "--set", "generation.sim_slots_per_actor=3",
                                   "--set", "generation.sim_seconds_per_pair=0.05"])
    assert res.exit_code == 0, res.output
    return root, Dataset.open(f"{root}/datasets/{_result_id(res.output)}")


def _result_id(output: str) -> str:
    import json

    return json.loads(output[output.index("{"):])["dataset_id"]


def test_sim_build_commits_placeholder_shards_and_is_marked_simulated(sim_dataset):
    _, ds = sim_dataset
    info, manifest = ds.info(), ds.manifest()
    assert info["simulated"] is True and info["status"] == "complete"
    assert info["config"]["generation"]["schnell"]["model"] == "sim://schnell"
    assert ds.committed_shards() == [0, 1, 2, 3, 4] and len(manifest) == 14
    # each pair slept 0.05 s, half per image
    assert manifest["dev_s"].sum() == pytest.approx(14 * 0.025, rel=0.01)
    table = ds.read_shard(0, ["dev_image", "schnell_image"]).to_pylist()
    img = Image.open(io.BytesIO(table[0]["dev_image"]["bytes"]))
    assert img.size == (32, 16) and table[0]["dev_image"]["bytes"] != table[0]["schnell_image"]["bytes"]
    assert manifest["worker"].nunique() == 2  # 5 simulated workers on 2 actors (slots 3 + 2)


def test_sim_build_resumes_without_rendering(sim_dataset):
    root, ds = sim_dataset
    manifest = root / "datasets" / ds.dataset_id / "manifest.parquet"
    before = manifest.stat().st_mtime_ns
    res = CliRunner().invoke(app, ["build", *SIM, "--count", "14", "--workers", "5", "--out", str(root)])
    assert res.exit_code == 0, res.output
    assert '"generated_pairs": 0' in res.output and _result_id(res.output) == ds.dataset_id
    assert manifest.stat().st_mtime_ns == before  # a finished dataset: its manifest is not rebuilt


@pytest.mark.parametrize("command", [["train", "{uri}", "--max-steps", "1"], ["audit", "{uri}"],
                                     ["evaluate", "{uri}"], ["sweep", "{uri}", "--max-steps", "1"]])
def test_train_audit_evaluate_refuse_a_simulated_dataset_in_one_line(sim_dataset, command):
    _, ds = sim_dataset
    res = CliRunner().invoke(app, [c.format(uri=ds.uri) for c in command])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "is simulated" in lines[0] and "Traceback" not in res.output, res.output


def test_sim_ids_differ_from_real_ones_and_speed_settings_do_not_change_them():
    sim = resolve_config("sim", overrides={"plan.count": 10})
    faster = resolve_config("sim", overrides={"plan.count": 10, "generation.sim_seconds_per_pair": 3,
                                              "generation.sim_slots_per_actor": 8})
    real = resolve_config("flux", overrides={"plan.count": 10})
    assert sim.generation.simulated and not real.generation.simulated
    assert sim.fingerprint() == faster.fingerprint() != real.fingerprint()
    assert resolve_config("tiny").fingerprint() == resolve_config("tiny", overrides={
        "generation.sim_seconds_per_pair": 1}).fingerprint()


def test_placeholders_are_deterministic_noise_of_the_configured_size():
    cfg = resolve_config("sim", overrides={"generation.height": 32, "generation.width": 48}).generation
    (s_imgs, d_imgs, t), = SimPair(cfg).render_batches([(["a", "b"], [1, 2])])
    assert [i.size for i in s_imgs + d_imgs] == [(48, 32)] * 4 and t["dev_s"] == 0
    assert placeholder(1, 8, 8, 0).tobytes() == placeholder(1, 8, 8, 0).tobytes() != \
        placeholder(1, 8, 8, 1).tobytes()


def test_a_sweep_started_by_its_flow_refuses_a_simulated_dataset(sim_dataset):
    """The deployment path (flow ``sweep-heads``) reaches :func:`tune.sweep` without the CLI's check."""
    from facelift.dataset import DatasetError
    from facelift.tasks.train.loop import TrainConfig
    from facelift.tasks.train.tune import sweep

    _, ds = sim_dataset
    with pytest.raises(DatasetError, match="is simulated .* a sweep needs"):
        sweep(TrainConfig(dataset_uri=ds.uri, head="cyclegan", flavor="debug", max_steps=1), lrs=(1e-3,))
