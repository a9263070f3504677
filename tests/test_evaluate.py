"""Evaluation: held-out split, the evaluate flow end to end (S3, debug heads, LoRA, random metric nets), timing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from facelift.dataset import Dataset, DatasetError
from facelift.models.heads import build_head
from facelift.models.tiny_metrics import ensure_random_fid_weights, ensure_tiny_clip
from facelift.storage import Store
from facelift.tasks import eval_report
from facelift.tasks import evaluate as ev
from facelift.tasks.train_data import is_validation
from facelift.testing import make_synthetic_dataset


@pytest.fixture(scope="module")
def s3_root(seaweed, tmp_path_factory) -> Store:
    return Store(f"s3://facelift/test-evaluate-{tmp_path_factory.mktemp('ev').name}", seaweed.endpoint)


@pytest.fixture(scope="module")
def dataset(s3_root: Store) -> Dataset:
    return make_synthetic_dataset(s3_root, "evalset", n_pairs=32, size=32, shard_size=8, seed=3)


@pytest.fixture(scope="module")
def heads(s3_root: Store, dataset: Dataset, tmp_path_factory) -> list[str]:
    """An ESA-CycleGAN debug head in an S3 run folder (with run.json) and a U-Net debug head folder."""
    torch.manual_seed(0)
    run = s3_root.child("runs/esa-run")
    build_head("esa_cyclegan", "debug").save(run.child("head").url(), s3_root.endpoint_url)
    run.write_bytes("run.json", json.dumps({"status": "completed", "config": {
        "dataset_uri": dataset.uri, "head": "esa_cyclegan", "val_fraction": 0.4}}).encode())
    local = tmp_path_factory.mktemp("unet") / "head"
    build_head("unet_cbam", "debug").save(str(local))
    return [run.url(), str(local)]


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


def test_heldout_split_matches_training(dataset: Dataset) -> None:
    held = ev.load_heldout(dataset, ev.EvalConfig(n_images=100), 0.4)
    val = {p for p in dataset.manifest()["pair_id"] if is_validation(p, 0.4)}
    assert set(held.input_ids) | set(held.ref_ids) <= val
    assert not set(held.input_ids) & set(held.ref_ids)
    assert len(held.input_ids) == len(held.ref_ids) == len(val) // 2 == held.n
    assert held.schnell_in.shape == (held.n, 3, 32, 32) and held.dev_ref.dtype == torch.uint8
    again = ev.load_heldout(dataset, ev.EvalConfig(n_images=2), 0.4)
    assert again.input_ids == held.input_ids[:2] and again.ref_keys != held.ref_keys


def test_too_few_heldout_pairs_is_clear(dataset: Dataset) -> None:
    with pytest.raises(DatasetError, match="held-out pairs at val_fraction=0.01"):
        ev.load_heldout(dataset, ev.EvalConfig(), 0.01)


def test_val_fraction_from_training_run(heads: list[str], dataset: Dataset, s3_root: Store) -> None:
    assert ev.resolve_val_fraction(None, heads, dataset.uri, s3_root.endpoint_url) == 0.4
    assert ev.resolve_val_fraction(None, heads[1:], dataset.uri) == 0.1  # bare folder: the training default
    assert ev.resolve_val_fraction(0.3, heads, dataset.uri, s3_root.endpoint_url) == 0.3


def test_evaluate_flow_end_to_end(prefect_harness, dataset, heads, lora_file, s3_root, cache_dir,
                                  monkeypatch) -> None:
    import facelift.flows.evaluate as flow_mod

    events = []
    monkeypatch.setattr(flow_mod, "emit_event", lambda **kw: events.append(kw))
    result = flow_mod.evaluate(
        dataset.uri, heads, lora=str(lora_file), n_images=6, endpoint_url=s3_root.endpoint_url,
        run_id="eval-test", inception_weights=str(ensure_random_fid_weights(cache_dir)),
        clip_model=str(ensure_tiny_clip(cache_dir)), lpips_random_backbone=True, n_boot=4, device="cpu",
        batch_size=4, profile="tiny", timing_resolutions=[32, 64], timing_images=2)

    table = pd.DataFrame(result["table"])
    assert list(table["row"][:2]) == ["schnell", "dev"]
    assert list(table["kind"]) == ["reference", "reference", "head", "head", "lora"]
    assert table["row"][2].startswith("esa_cyclegan") and table["row"][3].startswith("unet_cbam")
    assert (table["n"] == 6).all() and (table["n_reference"] == 6).all()
    np.testing.assert_allclose(table["fid_diff"], table["fid_schnell"] - table["fid_dev"], rtol=1e-9)
    for m in ("fid_schnell", "fid_dev", "fid_diff", "kid_schnell", "kid_dev", "clip_iqa", "lpips_dev"):
        assert (table[f"{m}_ci_low"] <= table[m]).all() and (table[m] <= table[f"{m}_ci_high"]).all(), m
    assert eval_report.intervals_violated(table) == []
    assert (table["fid_ci_method"] == "half-sampling ×4").all()
    assert (table["kid_schnell_subset_size"] == 3).all() and (table["kid_dev_subsets"] == 100).all()  # n/2
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
            "summary.json"} <= set(run.list(""))
    stored = pd.read_parquet(io.BytesIO(run.read_bytes("table.parquet")))
    assert list(stored["row"]) == list(table["row"])
    report = run.read_bytes("report.md").decode()
    assert "FID_diff" in report and "schnell + LoRA" in report and "saved" in report
    assert "half-sampling" in report and "KID subsets" in report and "| 100 × 3 |" in report
    from PIL import Image

    grid = Image.open(io.BytesIO(run.read_bytes("grid.png")))
    assert grid.size[0] == 5 * 128
    assert len(s3_root.list("cache/features")) == 1  # reference features cached once per extractor

    assert events == [{"event": "facelift.evaluation.completed",
                       "resource": {"prefect.resource.id": "facelift.run.eval-test"},
                       "payload": {"run_uri": s3_root.child("runs/eval-test").url(), "dataset_uri": dataset.uri}}]


def test_reference_features_reused(dataset, cache_dir, tmp_path, monkeypatch) -> None:
    from facelift.models.metrics import MetricConfig

    suite = ev.MetricSuite(MetricConfig(str(ensure_random_fid_weights(cache_dir)), str(ensure_tiny_clip(cache_dir)),
                                        lpips_random_backbone=True), "cpu", 4)
    held = ev.load_heldout(dataset, ev.EvalConfig(n_images=3), 0.4)
    cfg = ev.EvalConfig(n_images=3, n_boot=2, device="cpu")
    store = Store(str(tmp_path / "cache"))
    first = ev.score_rows(ev.reference_rows(held), held, suite, store, cfg)
    calls = []
    real = suite.features
    monkeypatch.setattr(suite, "features", lambda x: calls.append(len(x)) or real(x))
    second = ev.score_rows(ev.reference_rows(held), held, suite, store, cfg)
    assert calls == [3, 3]  # only the two rows: both reference sets came from the cache
    pd.testing.assert_frame_equal(first, second)


def test_cli_evaluate_bad_dataset(prefect_harness, tmp_path) -> None:
    from typer.testing import CliRunner

    from facelift.cli.main import app

    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "datasets" / "nope"), "--head", str(tmp_path)])
    assert res.exit_code == 2 and "no dataset at" in res.output
