"""Evaluation: only the test split, heads trained on other splits refused, streaming in bounded memory, the
evaluate flow end to end (S3, debug heads, LoRA, random metric nets), timing."""

from __future__ import annotations

import io
import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from facelift.dataset import Dataset
from facelift.models.heads import build_head
from facelift.models.tiny_metrics import ensure_random_fid_weights, ensure_tiny_clip
from facelift.splits import SplitError
from facelift.storage import Store
from facelift.tasks.evaluate import data as eval_data
from facelift.tasks.evaluate import report as eval_report
from facelift.tasks.evaluate import score as ev
from facelift.testing import make_synthetic_dataset

SPLITS = {"val": 0.1, "test": 0.5}  # 32 pairs -> 17 test pairs: halves of 8


@pytest.fixture(scope="module")
def s3_root(seaweed, tmp_path_factory) -> Store:
    return Store(f"s3://facelift/test-evaluate-{tmp_path_factory.mktemp('ev').name}", seaweed.endpoint)


@pytest.fixture(scope="module")
def dataset(s3_root: Store) -> Dataset:
    return make_synthetic_dataset(s3_root, "evalset", n_pairs=32, size=32, shard_size=8, seed=3, splits=SPLITS)


def _trained_run(run: Store, head: str, dataset: Dataset, splits: dict[str, Any] | None) -> str:
    """A head in a run folder with the run.json training writes (``splits``: the spec it trained with)."""
    torch.manual_seed(0)
    build_head(head, "debug").save(run.child("head").url(), run.endpoint_url)
    record: dict[str, Any] = {"status": "completed", "config": {"dataset_uri": dataset.uri, "head": head}}
    if splits is not None:
        record["splits"] = splits
    run.write_bytes("run.json", json.dumps(record).encode())
    return run.url()


@pytest.fixture(scope="module")
def heads(s3_root: Store, dataset: Dataset, tmp_path_factory) -> list[str]:
    """An ESA-CycleGAN debug head in an S3 run folder and a U-Net debug head in a local run folder, both trained
    (as their run.json says) on the dataset's splits."""
    splits = dataset.info()["splits"]
    local = Store(str(tmp_path_factory.mktemp("unet") / "runs" / "unet-run"))
    return [_trained_run(s3_root.child("runs/esa-run"), "esa_cyclegan", dataset, splits),
            _trained_run(local, "unet_cbam", dataset, splits)]


@pytest.fixture(scope="module")
def lora_file(cache_dir, tmp_path_factory) -> Path:
    """A non-trivial LoRA for the tiny schnell transformer, saved in the diffusers format."""
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from facelift.models.tiny_flux import ensure_tiny_flux

    pipe = FluxPipeline.from_pretrained(ensure_tiny_flux(cache_dir, "schnell"))
    torch.manual_seed(0)
    pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"]))
    for name, p in pipe.transformer.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    return folder / "pytorch_lora_weights.safetensors"


# -- the test split -------------------------------------------------------------------------------
def test_only_the_test_split_is_evaluated(dataset: Dataset, monkeypatch) -> None:
    spec = dataset.splits()
    ids = dataset.manifest()["pair_id"]
    test = set(ids[spec.mask(ids, "test")])
    split = eval_data.select_test_split(dataset, n_images=100)
    inputs, refs = [p.pair_id for p in split.input], [p.pair_id for p in split.reference]
    assert set(inputs) | set(refs) <= test and not set(inputs) & set(refs)
    assert len(inputs) == len(refs) == len(test) // 2 == split.n == 8 and split.n_test == len(test) == 17
    assert split.size == 32 and split.meta()["split"] == "test" and split.meta()["splits"] == spec.model_dump()
    assert not any(isinstance(v, torch.Tensor) for v in vars(split).values())  # pair ids only, no images
    again = eval_data.select_test_split(dataset, n_images=2)
    assert [p.pair_id for p in again.input] == inputs[:2] and again.reference_key("dev") != split.reference_key("dev")
    # default N: min(test half, 10_000)
    assert eval_data.select_test_split(dataset).n == 8
    monkeypatch.setattr(eval_data, "DEFAULT_MAX_N", 3)
    assert eval_data.select_test_split(dataset).n == 3


def test_too_few_test_pairs_is_clear(s3_root: Store) -> None:
    small = make_synthetic_dataset(s3_root, "tinysplit", n_pairs=8, size=32, splits={"val": 0.1, "test": 0.01})
    with pytest.raises(SplitError, match=r"only 0 of 8 pairs are in the test split \(train 0.89 / val 0.1 / "
                                         r"test 0.01"):
        eval_data.select_test_split(small)


def test_dataset_without_fixed_splits_is_refused(s3_root: Store) -> None:
    old = make_synthetic_dataset(s3_root, "nosplits", n_pairs=8, size=32)
    old.write_info({k: v for k, v in old.info().items() if k != "splits"})
    with pytest.raises(SplitError, match="no fixed train/val/test splits"):
        eval_data.select_test_split(old)


def test_heads_trained_on_other_splits_or_none_are_refused(dataset, heads, s3_root, tmp_path) -> None:
    eval_data.check_head_splits(heads, dataset, s3_root.endpoint_url)  # trained on these splits: accepted
    other = _trained_run(s3_root.child("runs/other-splits"), "unet_cbam", dataset,
                         {"val": 0.05, "test": 0.1, "salt": "split"})
    with pytest.raises(SplitError, match=r"head .*other-splits was trained with other splits than the dataset's "
                                         r"\(val 0.05 != 0.1, test 0.1 != 0.5\)"):
        eval_data.check_head_splits([heads[0], other], dataset, s3_root.endpoint_url)
    salted = _trained_run(s3_root.child("runs/other-salt"), "unet_cbam", dataset, {**SPLITS, "salt": "x"})
    with pytest.raises(SplitError, match="salt 'x' != 'split'"):
        eval_data.check_head_splits([salted], dataset, s3_root.endpoint_url)
    old_run = _trained_run(s3_root.child("runs/old-run"), "unet_cbam", dataset, None)  # run.json without splits
    with pytest.raises(SplitError, match="old-run records no train/val/test splits"):
        eval_data.check_head_splits([old_run], dataset, s3_root.endpoint_url)
    build_head("unet_cbam", "debug").save(str(tmp_path / "bare"))
    with pytest.raises(SplitError, match=r"bare \(no run.json of a training run beside its head/ folder\) "
                                         r"records no train/val/test splits"):
        eval_data.check_head_splits([str(tmp_path / "bare")], dataset)


def test_cli_refuses_a_head_without_recorded_splits(prefect_harness, dataset, s3_root, tmp_path) -> None:
    from typer.testing import CliRunner

    from facelift.cli.main import app

    build_head("unet_cbam", "debug").save(str(tmp_path / "bare"))
    res = CliRunner().invoke(app, ["evaluate", dataset.uri, "--head", str(tmp_path / "bare"), "--endpoint-url",
                                   s3_root.endpoint_url])
    assert res.exit_code == 2 and "records no train/val/test splits" in res.output


# -- streaming ------------------------------------------------------------------------------------
class FakeSuite:
    """The MetricSuite interface without networks: features are image means, and every call is recorded."""

    extractor_id, clip_id, resize = "fake-extractor", "fake-clip", "clean"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def describe(self) -> dict[str, str]:
        return {"feature_network": self.extractor_id, "fid_resize": self.resize, "clip_iqa_model": "none",
                "clip_iqa_variant": "none"}

    def cache_suffix(self) -> str:
        return f"-{self.resize}-cpu-fp32"

    def features(self, images: torch.Tensor) -> np.ndarray:
        self.calls.append(("features", len(images)))
        x = images.float()
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), x[:, :, ::8, ::8].flatten(1)], 1).numpy()

    def clip_embeddings(self, images: torch.Tensor) -> np.ndarray:
        self.calls.append(("clip", len(images)))
        x = images.float().mean((2, 3)).double()
        return torch.nn.functional.normalize(x + 1, dim=1).numpy()

    def clip_iqa(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings[:, 0]

    def lpips_to(self, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        self.calls.append(("lpips", len(images)))
        return (images.float() - targets.float()).abs().mean((1, 2, 3)).double().numpy()


@pytest.fixture(scope="module")
def bigger(s3_root: Store) -> Dataset:
    return make_synthetic_dataset(s3_root, "streamset", n_pairs=64, size=32, shard_size=8, seed=4, splits=SPLITS)


def test_streaming_never_holds_more_than_a_few_batches_of_images(bigger, heads, s3_root, monkeypatch) -> None:
    """An evaluation at N decodes each image once, a batch at a time, and never holds N images."""
    live: dict[int, int] = {}  # id of every decoded tensor still alive -> images in it
    peak = [0]

    def track(t: torch.Tensor, images: int) -> torch.Tensor:
        live[id(t)] = images
        weakref.finalize(t, live.pop, id(t), None)
        peak[0] = max(peak[0], sum(live.values()))
        return t

    real_decode, real_to_uint8 = eval_data._decode, eval_data.to_uint8

    def decode(*args: Any) -> eval_data.Batch:
        batch = real_decode(*args)
        for images in batch.images.values():
            track(images, len(images))
        return batch

    monkeypatch.setattr(eval_data, "to_uint8", lambda cell, size: track(real_to_uint8(cell, size), 1))
    monkeypatch.setattr(eval_data, "_decode", decode)
    split = eval_data.select_test_split(bigger)  # 18 pairs per half: 36 input images, 72 in all
    cfg = ev.EvalConfig(batch_size=2, n_boot=4, device="cpu", grid_images=3)
    suite = FakeSuite()
    sources = ev.reference_sources() + [ev.HeadSource(heads[0], cfg, s3_root.endpoint_url)]
    table, grid = ev.score_rows(sources, bigger, split, suite, None, cfg)  # type: ignore[arg-type]
    assert split.n == 18 and (table["n"] == 18).all() and (table["n_reference"] == 18).all()
    assert {n for _, n in suite.calls} == {2}  # every metric call sees one batch, never the whole set
    assert len(suite.calls) == 3 * 9 + 3 * 3 * 9  # 3 reference passes (2 Inception, 1 CLIP) + 3 rows x 3, 9 each
    # alive at once: the batch being scored, the one before it (until the loop rebinds), one queued and one
    # being decoded: <= 5 batches of 2 pairs x 2 kinds = 20 images, whatever N (the input half alone is 36)
    assert 0 < peak[0] <= 5 * 2 * 2
    assert [(label, g.shape[0]) for label, g in grid] == [("schnell", 3), ("dev", 3), ("esa_cyclegan", 3)]
    assert eval_report.intervals_violated(table) == []


def test_batches_come_from_the_shards_in_order_and_missing_pairs_are_clear(dataset) -> None:
    split = eval_data.select_test_split(dataset)
    batches = list(eval_data.iter_batches(dataset, split.reference, 32, 3, ("dev",), prefetch=1))
    assert [len(b) for b in batches] == [3, 3, 2] and set(batches[0].images) == {"dev"}
    assert sorted(p for b in batches for p in b.pair_ids) == sorted(p.pair_id for p in split.reference)
    ghost = [*split.reference, eval_data.PairRef("no-such-pair", split.reference[0].shard, "", "")]
    with pytest.raises(eval_data.DatasetError, match="1 of 9 test pairs are in the manifest but not in their shards"):
        list(eval_data.iter_batches(dataset, ghost, 32, 4, ("dev",)))


def test_a_corrupt_shard_is_a_clear_error(s3_root: Store) -> None:
    broken = make_synthetic_dataset(s3_root, "corrupt", n_pairs=16, size=32, shard_size=8, splits=SPLITS)
    split = eval_data.select_test_split(broken)
    shard = split.input[0].shard
    broken.store.write_bytes(f"shards/{shard:05d}.parquet", b"not parquet")
    with pytest.raises(eval_data.DatasetError, match=f"shard shards/{shard:05d}.parquet of corrupt is unreadable"):
        list(eval_data.iter_batches(broken, split.input, 32, 4))


def test_evaluate_flow_end_to_end(prefect_harness, dataset, heads, lora_file, s3_root, cache_dir,
                                  monkeypatch) -> None:
    import facelift.flows.evaluate as flow_mod

    events = []
    monkeypatch.setattr(flow_mod, "emit_event", lambda **kw: events.append(kw))
    result = flow_mod.evaluate(
        dataset.uri, heads, lora=str(lora_file), n_images=8, endpoint_url=s3_root.endpoint_url,
        run_id="eval-test", inception_weights=str(ensure_random_fid_weights(cache_dir)),
        clip_model=str(ensure_tiny_clip(cache_dir)), lpips_random_backbone=True, n_boot=4, device="cpu",
        batch_size=4, profile="tiny", timing_resolutions=[32, 64], timing_images=2)

    table = pd.DataFrame(result["table"])
    assert list(table["row"][:2]) == ["schnell", "dev"]
    assert list(table["kind"]) == ["reference", "reference", "head", "head", "lora"]
    assert table["row"][2].startswith("esa_cyclegan") and table["row"][3].startswith("unet_cbam")
    assert (table["n"] == 8).all() and (table["n_reference"] == 8).all()
    assert (table["split"] == "test").all() and (table["n_test"] == 17).all()
    assert (table["split_rule"] == "train 0.4 / val 0.1 / test 0.5 (salt 'split')").all()
    assert (table["fid_resize"] == "clean").all() and table["feature_network"][0].startswith("fid-inception-")
    assert (table["clip_iqa_model"] == str(ensure_tiny_clip(cache_dir))).all()
    variant = table["clip_iqa_variant"][0]
    assert "centre crop 32²" in variant and "original CLIP-IQA: RN50" in variant
    assert result["meta"]["split"] == "test" and result["meta"]["splits"] == {**SPLITS, "salt": "split"}
    np.testing.assert_allclose(table["fid_diff"], table["fid_schnell"] - table["fid_dev"], rtol=1e-9)
    for m in ("fid_schnell", "fid_dev", "fid_diff", "kid_schnell", "kid_dev", "clip_iqa", "lpips_dev"):
        assert (table[f"{m}_ci_low"] <= table[m]).all() and (table[m] <= table[f"{m}_ci_high"]).all(), m
    assert eval_report.intervals_violated(table) == []
    assert (table["fid_ci_method"] == "joint halves ×4").all()  # quarters of 2 images < d = 2048: halves only
    assert eval_report.fid_below_zero(table) == []
    assert (table["kid_schnell_subset_size"] == 4).all() and (table["kid_dev_subsets"] == 100).all()  # n/2
    # every row against the schnell row, from the same resampling, each Δ with an interval and a verdict
    assert (table["baseline"] == "schnell").all() and table.loc[0, ["d_fid_dev", "d_kid_dev"]].isna().all()
    for key in ("d_fid_dev", "d_fid_diff", "d_kid_dev", "d_clip_iqa", "d_lpips_dev"):
        rest = table.loc[1:]
        assert (rest[f"{key}_ci_low"] <= rest[key]).all() and (rest[key] <= rest[f"{key}_ci_high"]).all(), key
        assert set(rest[f"{key}_verdict"]) <= {"better", "worse", "inconclusive", ""}, key
    assert table.loc[1, "d_lpips_dev_verdict"] == "better"  # dev vs its own pairs: LPIPS 0
    # N = 8 < 2·2048: no FID verdict, no bias-corrected FID; CMMD on the CLIP embeddings, judged with the family
    assert (table["d_fid_dev_verdict"] == "").all() and table["fid_dev_bc"].isna().all()
    assert table["cmmd_dev"].notna().all() and (table.loc[1:, "d_cmmd_dev_verdict"] != "").all()
    assert (table["family_size"] == 4 * 4).all()  # 4 rows beside the baseline × KID, CMMD, CLIP-IQA, LPIPS
    assert table["clip_iqa"].between(0, 1).all()
    assert table.loc[1, "lpips_dev"] == pytest.approx(0, abs=1e-6)  # dev row vs its own pairs
    assert (table.loc[[0, 2, 3, 4], "lpips_dev"] > 0).all()
    assert (table[["fid_schnell", "fid_dev"]] > 0).all().all()  # disjoint halves: no trivial zeros
    assert table.loc[4, "fid_dev"] != table.loc[0, "fid_dev"]  # the LoRA row is freshly generated

    timing = pd.DataFrame(result["timing"])
    assert list(timing["resolution"]) == [32, 64]
    assert (timing[["dev_t2i_s", "schnell_t2i_s", "head_s"]] > 0).all().all()
    assert (timing["repeats"] == 3).all()  # median of 3 timed runs, min and max beside it
    for col in ("dev_t2i_s", "schnell_t2i_s", "head_s"):
        assert (timing[f"{col}_min"] <= timing[col]).all() and (timing[col] <= timing[f"{col}_max"]).all()
    np.testing.assert_allclose(timing["saved_pct"],
                               100 * (1 - (timing["schnell_t2i_s"] + timing["head_s"]) / timing["dev_t2i_s"]))

    run = s3_root.child("runs/eval-test/evaluation")
    assert {"table.parquet", "table.csv", "report.md", "grid.png", "timing.parquet", "timing.csv", "timing.png",
            "summary.json", "forest.png"} <= set(run.list(""))
    stored = pd.read_parquet(io.BytesIO(run.read_bytes("table.parquet")))
    assert list(stored["row"]) == list(table["row"])
    report = run.read_bytes("report.md").decode()
    assert "FID_diff" in report and "schnell + LoRA" in report and "saved" in report
    assert "joint resampling" in report and "KID subsets" in report and "| 100 × 4 |" in report
    assert "Paired comparisons with the baseline row `schnell`" in report and "FID rankings at this N" in report
    assert "test split only (train 0.4 / val 0.1 / test 0.5 (salt 'split'); 17 test pairs): 6 input pairs" not in report
    assert "test split only (train 0.4 / val 0.1 / test 0.5 (salt 'split'); 17 test pairs): 8 input pairs" in report
    csv = pd.read_csv(io.BytesIO(run.read_bytes("table.csv")))
    assert {"d_fid_diff", "d_fid_diff_ci_low", "d_fid_diff_ci_high", "d_fid_diff_verdict"} <= set(csv.columns)
    assert "FID resize clean" in report and "CLIP-IQA: " in report
    from PIL import Image

    grid = Image.open(io.BytesIO(run.read_bytes("grid.png")))
    assert grid.size[0] == 5 * 128
    assert len(s3_root.list("cache/features")) == 2  # reference features cached once per extractor (Inception, CLIP)
    assert len(s3_root.list(f"cache/features/{table['feature_network'][0]}")) == 2  # schnell and dev, once

    assert events == [{"event": "facelift.evaluation.completed",
                       "resource": {"prefect.resource.id": "facelift.run.eval-test"},
                       "payload": {"run_uri": s3_root.child("runs/eval-test").url(), "dataset_uri": dataset.uri}}]


def test_reference_features_reused_per_resize(dataset, cache_dir, tmp_path, monkeypatch) -> None:
    from facelift.models.metrics import MetricConfig

    metrics = MetricConfig(str(ensure_random_fid_weights(cache_dir)), str(ensure_tiny_clip(cache_dir)),
                           lpips_random_backbone=True)
    split = eval_data.select_test_split(dataset, n_images=3)
    cfg = ev.EvalConfig(n_images=3, n_boot=2, device="cpu", batch_size=2)
    store = Store(str(tmp_path / "cache"))
    suite = ev.MetricSuite(metrics, "cpu", 2)
    first, _ = ev.score_rows(ev.reference_sources(), dataset, split, suite, store, cfg)
    calls = []
    real = suite.features
    monkeypatch.setattr(suite, "features", lambda x: calls.append(len(x)) or real(x))
    second, _ = ev.score_rows(ev.reference_sources(), dataset, split, suite, store, cfg)
    assert calls == [2, 2, 1, 1]  # only the two rows' batches: both reference sets came from the cache
    pd.testing.assert_frame_equal(first, second)
    # the other resize is another feature set: computed (and cached) beside the first
    torch_suite = ev.MetricSuite(metrics, "cpu", 2, resize="torch")
    legacy, _ = ev.score_rows(ev.reference_sources(), dataset, split, torch_suite, store, cfg)
    assert (legacy["fid_resize"] == "torch").all() and (first["fid_resize"] == "clean").all()
    keys = store.list(f"cache/features/{suite.extractor_id}")
    assert len(keys) == 4 and all(k.endswith(("-clean-cpu-fp32.npy", "-torch-cpu-fp32.npy")) for k in keys), keys
    assert not np.allclose(legacy["fid_dev"], first["fid_dev"])


@pytest.mark.parametrize(("args", "message"), [
    (["--kid-subsets", "5"], "kid_subsets must be >= 10"),
    (["--kid-subset-size", "3"], "kid_subset_size must be >= 4"),
    (["--n-boot", "1"], "n_boot must be >= 2"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--n-images", "1"], "n_images must be >= 2"),
    (["--baseline", " "], "baseline must name a row"),
    (["--primary", "fid"], "unknown primary comparison 'fid'"),
    (["--alpha", "0.7"], "alpha must be in (0, 0.5)"),
])
def test_cli_checks_every_option_before_reading_anything(prefect_harness, tmp_path, args, message) -> None:
    """A bad option is one clear line (exit 2) before the dataset is even opened: the dataset here does not
    exist, and the error is about the option, not the dataset."""
    from typer.testing import CliRunner

    from facelift.cli.main import app

    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "datasets" / "nope"), "--head", str(tmp_path), *args])
    assert res.exit_code == 2 and message in res.output and "no dataset" not in res.output, res.output
    assert "Traceback" not in res.output


def test_an_unknown_baseline_row_fails_before_any_image_is_decoded(dataset, cache_dir, monkeypatch) -> None:
    from facelift.models.metrics import MetricConfig

    split = eval_data.select_test_split(dataset, n_images=3)
    cfg = ev.EvalConfig(n_images=3, n_boot=2, device="cpu", batch_size=2, baseline="esa_cyclegan")
    decoded = []
    monkeypatch.setattr(ev, "iter_batches", lambda *a, **k: decoded.append(a) or iter(()))
    metrics = MetricConfig(str(ensure_random_fid_weights(cache_dir)), str(ensure_tiny_clip(cache_dir)),
                           lpips_random_backbone=True)
    with pytest.raises(ValueError, match=r"baseline 'esa_cyclegan' names no single row; rows: schnell, dev"):
        ev.score_rows(ev.reference_sources(), dataset, split, ev.MetricSuite(metrics, "cpu", 2), None, cfg)
    assert decoded == []
    assert ev.baseline_index(ev.reference_sources(), "dev") == 1


def test_feature_network_runs_without_tf32_and_the_cache_key_names_device_and_precision(monkeypatch) -> None:
    from types import SimpleNamespace

    seen = []

    def inception(x: torch.Tensor) -> torch.Tensor:
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return x.mean((2, 3))

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    fake = SimpleNamespace(inception=inception, batch_size=2, resize="torch", device=torch.device("cpu"),
                           precision="fp32")
    feats = ev.MetricSuite.features(fake, torch.zeros(3, 3, 8, 8, dtype=torch.uint8))  # type: ignore[arg-type]
    assert feats.shape == (3, 3) and seen == [(False, False), (False, False)]
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored
    assert ev.MetricSuite.cache_suffix(fake) == "-torch-cpu-fp32"  # type: ignore[arg-type]
    assert ev.MetricSuite.cache_suffix(SimpleNamespace(resize="torch", device=torch.device("cuda", 0),
                                                       precision="fp32")) == "-torch-cuda-fp32"  # type: ignore


def test_cli_evaluate_bad_dataset(prefect_harness, tmp_path) -> None:
    from typer.testing import CliRunner

    from facelift.cli.main import app

    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "datasets" / "nope"), "--head", str(tmp_path)])
    assert res.exit_code == 2 and "no dataset at" in res.output
