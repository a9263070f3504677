"""Training data, the Ray Train loop (2 CPU workers, gloo) on SeaweedFS S3, resume, sweep and the flow."""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid

import pytest
import torch

from facelift.dataset import Dataset, DatasetError
from facelift.ids import artifact_key
from facelift.models.heads import HeadError, load_head
from facelift.storage import Store
from facelift.tasks.feed import BackgroundBatches
from facelift.tasks.train.data import DataConfig, PairStream, load_validation, open_training_dataset, to_model
from facelift.tasks.train.loop import LoopEnv, TrainConfig, resolve_run, run_loop, train
from facelift.testing import make_synthetic_dataset

SIZE = 32


@pytest.fixture(scope="module")
def s3_root(seaweed) -> Store:
    return Store(f"s3://facelift/train-{uuid.uuid4().hex[:8]}", seaweed.endpoint)


@pytest.fixture(scope="module")
def dataset(s3_root: Store) -> Dataset:
    return make_synthetic_dataset(s3_root, "tiny", n_pairs=24, size=SIZE, shard_size=8, seed=3)


def base_config(ds: Dataset, **kw) -> TrainConfig:
    values = dict(dataset_uri=ds.uri, endpoint_url=ds.store.endpoint_url, flavor="debug", batch_size=2,
                  resolution=SIZE, max_val_pairs=8, shuffle_buffer=4, log_every=1,
                  steps_per_epoch=2, checkpoint_every=2, max_steps=4)
    return TrainConfig(**{**values, **kw})


def test_training_reads_only_train_and_validation_only_val(dataset: Dataset):
    spec = dataset.splits()
    manifest = dataset.manifest()
    split = dict(zip(manifest["pair_id"], spec.assign(manifest["pair_id"]), strict=True))
    val = {p for p, s in split.items() if s == "val"}
    assert len(val) > 0 and sum(s == "test" for s in split.values()) > 0
    _, shards = open_training_dataset(dataset.uri, dataset.store.endpoint_url)
    cfg = DataConfig(resolution=SIZE, splits=spec, max_val_pairs=100, shuffle_buffer=4)
    ids = {s: dataset.read_shard(s, ["pair_id"]).column(0).to_pylist() for s in shards}
    stream = PairStream(dataset, shards, cfg, 4, True)
    n_train = sum(s == "train" for s in split.values())
    seen = [ids[shard][row] for (shard, row), _, _ in itertools.islice(stream._pairs(), n_train)]
    assert sorted(seen) == sorted(p for p, s in split.items() if s == "train")  # one pass: each train pair once
    held_out = load_validation(dataset, shards, cfg)
    assert held_out["schnell"].shape == (len(val), 3, SIZE, SIZE)
    halves = [load_validation(dataset, shards, cfg, rank, 2)["schnell"] for rank in (0, 1)]
    assert sum(h.shape[0] for h in halves) == len(val)  # two workers split the validation pairs
    many = load_validation(dataset, shards, cfg, 0, len(val) + 1)  # more workers than pairs: all of them
    assert many["schnell"].shape[0] == len(val)


def _mean_pair_gap(batch: dict[str, torch.Tensor]) -> float:
    batch = to_model(batch, "cpu")
    return float((batch["schnell"] - batch["dev"]).abs().mean())


def test_paired_and_unpaired_streams(dataset: Dataset):
    _, shards = open_training_dataset(dataset.uri, dataset.store.endpoint_url)
    cfg = DataConfig(resolution=SIZE, crop=24, flip=True, splits=dataset.splits(), shuffle_buffer=6)
    paired = iter(PairStream(dataset, shards, cfg, batch_size=4, paired=True))
    unpaired = iter(PairStream(dataset, shards, cfg, batch_size=4, paired=False))
    p = [next(paired) for _ in range(4)]
    u = [next(unpaired) for _ in range(4)]
    # uint8 leaves the input threads (a quarter of float's bytes to pin and copy); to_model makes [-1, 1] floats
    assert p[0]["schnell"].shape == (4, 3, 24, 24) and p[0]["schnell"].dtype == torch.uint8
    model_in = to_model(p[0], "cpu", torch.channels_last)
    assert model_in["schnell"].dtype == torch.float32
    assert model_in["dev"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(model_in["schnell"], p[0]["schnell"].float() / 127.5 - 1)
    assert float(model_in["schnell"].min()) >= -1 and float(model_in["dev"].max()) <= 1
    # dev is a blurred, warmer schnell: paired images (same crop/flip) are close, unpaired ones are not
    gap_p = sum(map(_mean_pair_gap, p)) / 4
    gap_u = sum(map(_mean_pair_gap, u)) / 4
    assert gap_p < 0.5 * gap_u
    # two workers see disjoint shards
    w0 = PairStream(dataset, shards, cfg, 2, True, rank=0, world=2)
    w1 = PairStream(dataset, shards, cfg, 2, True, rank=1, world=2)
    assert set(w0.shards).isdisjoint(w1.shards)


def test_parallel_decode_and_background_batches_keep_the_order_and_resume_exactly(dataset: Dataset):
    """Decode threads and the background batch thread change when work happens, never what the loop sees;
    the background stream's position is the one after the last batch handed out, not the prefetcher's."""
    _, shards = open_training_dataset(dataset.uri, dataset.store.endpoint_url)
    inline = DataConfig(resolution=SIZE, crop=24, splits=dataset.splits(), shuffle_buffer=6, decode_workers=0)
    threaded = DataConfig(resolution=SIZE, crop=24, splits=dataset.splits(), shuffle_buffer=6, decode_workers=2,
                          prefetch_batches=3)
    ref = list(itertools.islice(iter(PairStream(dataset, shards, inline, 3, paired=False)), 8))
    stream = PairStream(dataset, shards, threaded, 3, paired=False)
    bg = stream.background()
    got = [next(bg) for _ in range(5)]
    state = bg.state_dict()
    bg.close()
    resumed = PairStream(dataset, shards, threaded, 3, paired=False, state=state).background()
    got += [next(resumed) for _ in range(3)]
    resumed.close()
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a["schnell"], b["schnell"]) and torch.equal(a["dev"], b["dev"])


def test_background_batches_close_at_once_when_the_source_ended_into_a_full_queue():
    """The producer never blocks past close(): here it has queued the only batch and waits to queue the end."""
    bg = BackgroundBatches(iter([({"x": torch.zeros(1)}, {})]), prefetch=1)
    deadline = time.monotonic() + 5
    while not bg._queue.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the producer is now trying to queue the end marker
    start = time.monotonic()
    bg.close()
    assert time.monotonic() - start < 1 and not bg._thread.is_alive()


def test_dataset_without_shards_is_a_clear_error(s3_root: Store):
    ds = Dataset.at(s3_root, "empty")
    ds.write_info({"dataset_id": "empty", "status": "planned"})
    with pytest.raises(DatasetError, match="no committed shards"):
        open_training_dataset(ds.uri, s3_root.endpoint_url)
    with pytest.raises(DatasetError, match="no dataset"):
        open_training_dataset(s3_root.child("datasets/missing").url(), s3_root.endpoint_url)


def test_unknown_head_is_a_clear_error(dataset: Dataset):
    with pytest.raises(HeadError, match="valid heads: unet_cbam, cyclegan, esa_cyclegan"):
        train(base_config(dataset, head="pix2pixHD"))


def test_compile_setting_accepts_bool_or_mode():
    from pydantic import ValidationError

    make = lambda v: TrainConfig(dataset_uri="s3://b/datasets/d", head="esa_cyclegan", compile=v)  # noqa: E731
    assert [make(v).compile for v in (True, False, "full", "none")] == ["regional", "none", "full", "none"]
    with pytest.raises(ValidationError, match="regional"):
        make("fast")


def test_paired_loop_in_process_writes_head(dataset: Dataset, tmp_path):
    """The loop without Ray (rank 0 of 1): U-Net+CBAM with LPIPS, outputs in a local run folder."""
    cfg = resolve_run(base_config(dataset, head="unet_cbam", run_uri=str(tmp_path / "run"),
                                  head_overrides={"lpips_pnet_rand": True}, max_steps=3))
    reports = []
    state = run_loop(cfg, LoopEnv(report=lambda m, folder: reports.append((m, folder))))
    assert state["step"] == 3 and [m["step"] for m, _ in reports] == [2, 3]
    assert {"val_loss", "val_grad", "val_lpips", "val_ssim"} <= set(reports[-1][0])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["step"] for r in metrics["steps"]] == [1, 2, 3]
    head = load_head(str(tmp_path / "run"))
    assert head.name == "unet_cbam" and head.translate(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.slow  # two Ray Train runs of 2 workers: make test-slow
def test_ray_train_two_workers_killed_run_resumes(dataset: Dataset, ray_local):
    """2 gloo workers on S3 storage; worker 0 dies at step 5; the rerun continues from step 4, not 0."""
    cfg = base_config(dataset, head="esa_cyclegan", run_id=f"resume-{uuid.uuid4().hex[:6]}", num_workers=2,
                      max_steps=6, fail_at_step=5)
    with pytest.raises(Exception):  # noqa: B017 - Ray wraps the worker death in its own error type
        train(cfg)
    run = resolve_run(cfg)
    store = Store(run.run_uri, dataset.store.endpoint_url)
    assert json.loads(store.read_bytes("run.json"))["status"] == "failed"
    checkpoints = [n for n in store.list("") if n.startswith("checkpoint_") and not n.endswith(".json")]
    assert checkpoints, store.list("")
    saved = json.loads(store.read_bytes(f"{checkpoints[-1]}/train_config.json"))
    assert saved["head"] == "esa_cyclegan" and saved["run_id"] == cfg.run_id

    result = train(cfg.model_copy(update={"fail_at_step": None}))
    # the latest registered checkpoint is step 4 (step 2 if the controller had not yet seen the last report)
    assert result.metrics["resumed_from"] in ([4], [2])
    assert result.metrics["step"] == 6
    assert [r["step"] for r in result.metrics["steps"]] == [1, 2, 3, 4, 5, 6]
    assert [e["epoch"] for e in result.metrics["epochs"]] == [1, 2, 3]
    assert all("val_ssim" in e for e in result.metrics["epochs"])
    assert result.run_uri == run.run_uri and json.loads(store.read_bytes("run.json"))["status"] == "completed"
    head = load_head(result.run_uri, dataset.store.endpoint_url)
    assert head.name == "esa_cyclegan" and head.flavor == "debug"
    with pytest.raises(HeadError, match="is a 'esa_cyclegan' head, not 'unet_cbam'"):
        load_head(result.run_uri, dataset.store.endpoint_url, expect="unet_cbam")
    with pytest.raises(HeadError, match="holds checkpoints of head 'esa_cyclegan'"):
        train(cfg.model_copy(update={"head": "unet_cbam", "fail_at_step": None}))  # fails before Ray starts


def test_sweep_flow_two_by_one_reports_table(dataset: Dataset, ray_local, prefect_harness, monkeypatch):
    import facelift.flows.sweep_heads as flow_module

    events = []
    monkeypatch.setattr(flow_module, "emit_event", lambda **kw: events.append(kw))
    out = flow_module.sweep_heads(dataset_uri=dataset.uri, head="cyclegan", flavor="debug", lambda_cycs=[10.0, 2.0],
                                  lrs=[2e-4], max_steps=2, batch_size=2, resolution=SIZE,
                                  endpoint_url=dataset.store.endpoint_url, run_id=f"sweep-{uuid.uuid4().hex[:6]}")
    rows = out["rows"]
    assert len(rows) == 2 and {r["lambda_cyc"] for r in rows} == {10.0, 2.0} and {r["lr"] for r in rows} == {2e-4}
    assert all(r["l_total"] is not None and -1 <= r["ssim"] <= 1 and r["l1"] > 0 and r["error"] is None
               for r in rows)
    assert out["best"]["selected_by"] == "l1" and out["best"]["l1"] == min(r["l1"] for r in rows)
    assert [r["selected"] != "" for r in rows].count(True) == 1
    store = Store(out["sweep_uri"], dataset.store.endpoint_url)
    saved = json.loads(store.read_bytes("sweep.json"))
    assert len(saved["rows"]) == 2 and saved["best"]["trial"] == out["best"]["trial"]
    assert load_head(out["best"]["head_uri"], dataset.store.endpoint_url).name == "cyclegan"
    assert events[0]["event"] == "facelift.sweep.completed"


def test_train_head_flow_publishes_reports_and_event(dataset: Dataset, ray_local, prefect_harness,
                                                     monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import facelift.flows.train_head as flow_module

    events = []
    monkeypatch.setattr(flow_module, "emit_event", lambda **kw: events.append(kw))
    run_id = f"flow-{uuid.uuid4().hex[:6]}"
    out = flow_module.train_head(dataset_uri=dataset.uri, head="cyclegan", flavor="debug", max_steps=2,
                                 batch_size=2, resolution=SIZE, checkpoint_every=2,
                                 endpoint_url=dataset.store.endpoint_url, run_id=run_id)
    assert out["run_uri"].endswith(f"/runs/{run_id}")
    store = Store(out["run_uri"], dataset.store.endpoint_url)
    assert store.read_bytes("loss_curve.png")[:4] == b"\x89PNG"
    assert store.read_bytes("samples.png")[:4] == b"\x89PNG"
    assert events == [{"event": "facelift.head.trained",
                       "resource": {"prefect.resource.id": f"facelift.run.{run_id}"},
                       "payload": {"run_uri": out["run_uri"], "dataset_uri": dataset.uri, "head": "cyclegan"}}]
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=f"train-{run_id}")))}
    key = artifact_key("train", run_id)
    assert {key, f"{key}-plots"} <= keys


def test_near_identity_head_is_flagged_in_evaluation_rows(tmp_path):
    """``facelift evaluate``'s row name carries the training run's near-identity flag (run.json ``identity``)."""
    from facelift.models.heads import build_head
    from facelift.tasks.evaluate.score import EvalConfig, HeadSource

    names = {}
    for flag in (True, False, None):
        run = tmp_path / f"run-{flag}"
        build_head("cyclegan", "debug").save(str(run / "head"))
        info = {"status": "completed", "identity": {"near_identity": flag}} if flag is not None else {}
        (run / "run.json").write_text(json.dumps(info))
        names[flag] = HeadSource(str(run / "head"), EvalConfig(device="cpu")).name
    assert names[True].endswith("⚠ near-identity")
    assert "near-identity" not in names[False] and "near-identity" not in names[None]


def test_workers_resuming_from_one_s3_checkpoint_read_their_own_copies(s3_root: Store, tmp_path):
    """Two workers of a node open the same S3 checkpoint at once. Ray's ``as_directory`` shares one folder per
    checkpoint, and the second worker re-downloads over the files the first is reading: rank 1 once failed
    with "PytorchStreamReader failed reading file data/213". Each worker must read a copy of its own."""
    import pickle

    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from facelift.tasks.train.checkpoint import STATE_FILE, checkpoint_folder
    from facelift.tasks.train.loop import ray_storage

    root, fs = ray_storage(s3_root)
    src = tmp_path / "checkpoint_000001"
    src.mkdir()
    payload = torch.arange(1 << 20, dtype=torch.float32)
    torch.save({"x": payload}, src / STATE_FILE)
    remote = f"{root}/shared-checkpoint-{uuid.uuid4().hex[:6]}"
    pafs.copy_files(str(src), remote, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    checkpoint = Checkpoint(remote, filesystem=fs)
    other_worker = pickle.loads(pickle.dumps(checkpoint))  # what Ray hands each worker: the same checkpoint

    with checkpoint_folder(checkpoint) as first:
        state = os.path.join(first, STATE_FILE)
        before = os.stat(state)
        with checkpoint_folder(other_worker) as second:
            assert torch.equal(torch.load(os.path.join(second, STATE_FILE))["x"], payload)
        after = os.stat(state)  # the first worker's file was neither rewritten nor removed
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns,
                                                                     before.st_size)
        assert torch.equal(torch.load(state)["x"], payload)
    assert not os.path.exists(first)  # the copy is removed once read


def test_cli_resolves_a_relative_dataset_path_at_the_door(tmp_path, monkeypatch):
    """``facelift train ../x/datasets/ID`` once failed inside the Ray Train worker (its working directory differs:
    ``WorkerGroupError ... dataset.json not found``). The path is made absolute, and checked, before Ray starts."""
    from typer.testing import CliRunner

    from facelift.cli.main import app
    from facelift.tasks.train.loop import TrainConfig

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = CliRunner().invoke(app, ["train", "../missing/datasets/d1", "--head", "cyclegan", "--flavor", "debug"])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert f"no dataset at {tmp_path / 'missing' / 'datasets' / 'd1'}" in lines[0], lines[0]  # absolute
    cfg = TrainConfig(dataset_uri="../missing/datasets/d1", head="cyclegan", run_uri="runs/r1")
    assert cfg.dataset_uri == str(tmp_path / "missing" / "datasets" / "d1")
    assert cfg.run_uri == str(work / "runs" / "r1")
    assert TrainConfig(dataset_uri="s3://b/p/datasets/d1", head="cyclegan").dataset_uri == "s3://b/p/datasets/d1"


def test_stuck_generator_is_named_in_the_report():
    """D winning while G does not move (issue 30's CycleGAN: 0.6 % of dev's change, D_dev at 0.84-0.97 on fakes)
    is a row of the run's summary; a head that moves, or a D at chance, is not flagged."""
    from facelift.tasks.train.report import epoch_rows, stuck_generator, summary_rows
    from facelift.tasks.train.select import epoch_line

    def run(ratio: float, fake: float) -> dict:
        last = {"epoch": 3, "step": 300, "val_l1": 0.1, "val_D_dev_acc_real": 0.9, "val_D_dev_acc_fake": fake,
                "val_change_ratio": ratio}
        return {"epochs": [last]}

    stuck = run(0.006, 0.93)
    assert "0.6% of dev's change" in stuck_generator(stuck) and "D_dev spots 93%" in stuck_generator(stuck)
    assert any(r["metric"] == "STUCK generator" for r in summary_rows(stuck))
    assert stuck_generator(run(0.5, 0.93)) is None and stuck_generator(run(0.006, 0.5)) is None
    assert list(epoch_rows(stuck)[0])[:5] == ["epoch", "step", "val_change_ratio", "val_D_dev_acc_fake",
                                              "val_D_dev_acc_real"]
    line = epoch_line(3, 300, stuck["epochs"][0])
    assert "0.6% of dev's change" in line and "D_dev accuracy real 0.90 / generated 0.93" in line
