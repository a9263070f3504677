"""The evaluation table's statistics (interval method, N, KID subsets, intervals that hold their estimates) and
the timing table's repeats (median and spread), without models: fake features, a fake clock, fake pipelines."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from facelift.storage import Store
from facelift.tasks.evaluate import flux as eval_flux
from facelift.tasks.evaluate.metrics import mean_with_ci
from facelift.tasks.evaluate.report import fid_columns, intervals_violated, kid_columns, table_markdown, write_outputs


def _record(name: str, feats: np.ndarray, refs: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"row": name, "kind": "head", "source": name, "n": len(feats), "n_reference": len(refs["schnell"]),
            **fid_columns(feats, refs, 20, seed),
            **kid_columns("kid_schnell", feats, refs["schnell"], 100, 1000, seed),
            **kid_columns("kid_dev", feats, refs["dev"], 100, 1000, seed),
            **mean_with_ci(rng.random(len(feats))).as_dict("clip_iqa"),
            **mean_with_ci(rng.random(len(feats))).as_dict("lpips_dev"), "seconds_per_image": 0.01}


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    refs = {"schnell": rng.normal(size=(40, 8)), "dev": rng.normal(0.5, 1, size=(40, 8))}
    rows = [_record("schnell", rng.normal(size=(40, 8)), refs, 1),
            _record("head", rng.normal(0.4, 1, size=(40, 8)), refs, 2),
            _record("tiny", rng.normal(size=(3, 8)), {k: v[:3] for k, v in refs.items()}, 3)]
    return pd.DataFrame.from_records(rows)


def test_every_estimate_lies_inside_its_interval(table: pd.DataFrame) -> None:
    assert intervals_violated(table) == []
    full = table.iloc[:2]
    for col in ("fid_schnell", "fid_dev", "fid_diff", "fid_diff_bc", "kid_schnell", "kid_dev", "clip_iqa"):
        assert (full[f"{col}_ci_low"] < full[col]).all() and (full[col] < full[f"{col}_ci_high"]).all(), col
    broken = table.assign(fid_dev_ci_high=table["fid_dev"] - 1)
    assert intervals_violated(broken) == ["schnell: fid_dev", "head: fid_dev"]


def test_table_names_method_n_and_kid_subsets(table: pd.DataFrame) -> None:
    assert (table.loc[:1, "kid_schnell_subset_size"] == 20).all() and (table.loc[:1, "kid_dev_subsets"] == 100).all()
    md = table_markdown(table)
    lines = md.splitlines()
    assert "FID CI" in lines[0] and "KID subsets" in lines[0] and "| N |" in lines[0]
    schnell, _, tiny = lines[2:]
    assert schnell.startswith("| schnell | 40 |") and "half-sampling ×20" in schnell and "| 100 × 20 |" in schnell
    bc = f"| {table.loc[0, 'fid_diff_bc']:.3f} [{table.loc[0, 'fid_diff_bc_ci_low']:.3f}, "
    assert bc in schnell  # 40 images of 8-d features: N >= 2·d, the bias-corrected FID_diff is shown
    wide = table_markdown(table.assign(feature_dim=64)).splitlines()[2]
    assert "n/a (N < 2·d)" in wide and bc not in wide  # 40 images of 64-d features: not shown
    # three images: FID has no interval, KID is a flagged row naming n and the minimum
    assert tiny.startswith("| tiny | 3 |") and "n/a (KID needs n >= 4" in tiny and "got n=3)" in tiny
    assert "| none |" in tiny
    assert table.loc[2, "kid_schnell_flag"].startswith("KID needs") and table.loc[0, "kid_schnell_flag"] == ""


def test_table_names_the_split_n_resize_and_clip_iqa_variant(table: pd.DataFrame) -> None:
    recorded = table.assign(split="test", split_rule="train 0.5 / val 0.16 / test 0.34 (salt 'split')", n_test=9,
                            fid_resize="clean", feature_network="fid-inception-abc",
                            clip_iqa_model="openai/clip-vit-base-patch16",
                            clip_iqa_variant="ViT-B/16, short side bicubic to 224 + centre crop 224²")
    lines = table_markdown(recorded).splitlines()
    assert len(lines) == 2 + len(table) + 2 and lines[-2] == ""
    caption = lines[-1]
    assert caption.startswith("Pairs: test split only (train 0.5 / val 0.16 / test 0.34 (salt 'split')), 9 test "
                              "pairs, N = 40 per set (input half) vs 40 reference pairs.")
    assert "FID: fid-inception-abc, resize clean." in caption
    assert "CLIP-IQA: openai/clip-vit-base-patch16 (ViT-B/16, short side bicubic to 224 + centre crop 224²)" in caption
    assert len(table_markdown(table).splitlines()) == 2 + len(table)  # a table without the record: no caption


def test_report_states_the_interval_methods(table: pd.DataFrame, tmp_path) -> None:
    timing = pd.DataFrame([{"resolution": 64, "dev_t2i_s": 2.0, "dev_t2i_s_min": 1.5, "dev_t2i_s_max": 3.0,
                            "schnell_t2i_s": 0.5, "schnell_t2i_s_min": 0.4, "schnell_t2i_s_max": 0.6,
                            "head_s": 0.1, "head_s_min": 0.1, "head_s_max": 0.2, "schnell_head_s": 0.6,
                            "schnell_head_s_min": 0.5, "schnell_head_s_max": 0.8, "saved_pct": 70.0,
                            "saved_pct_min": 46.7, "saved_pct_max": 83.3, "repeats": 3}])
    run = Store(str(tmp_path / "run"))
    write_outputs(run, table, timing, b"png", None, {"run_id": "r", "split": "test", "n_test": 9, "n_input": 4,
                                                     "split_rule": "train 0.5 / val 0.16 / test 0.34 (salt 'split')",
                                                     "n_reference": 4, "size": 64, "fid_resize": "clean"})
    report = run.read_bytes("evaluation/report.md").decode()
    assert "test split only (train 0.5 / val 0.16 / test 0.34 (salt 'split'); 9 test pairs): 4 input pairs" in report
    assert "FID resize clean" in report
    assert "half-sampling" in report and "targets FID at this N" in report and "√(m/(N−m) + 1/S)" in report
    assert "| 64² | 3 | 2.0000 [1.5000–3.0000] |" in report and "| 70.0 [46.7–83.3]% |" in report


# -- timing -------------------------------------------------------------------------------------------------
class FakeClock:
    """``perf_counter`` stand-in: time moves only when a fake pipeline "runs"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_per_image_median_and_spread(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(eval_flux, "_clock", clock)
    durations: Iterator[float] = iter([50.0, 4.0, 2.0, 12.0])  # the warm-up (50 s) is not counted

    def run() -> None:
        clock.now += next(durations)

    t = eval_flux.time_per_image(run, n=2)
    assert (t.repeats, t.median, t.low, t.high) == (3, 2.0, 1.0, 6.0)
    with pytest.raises(ValueError, match="repeats >= 1"):
        eval_flux.time_per_image(run, n=2, repeats=0)


def test_timing_table_repeats_three_times_by_default(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(eval_flux, "_clock", clock)
    seconds = {"dev": iter([9.0, 3.0, 4.0, 8.0]), "schnell": iter([9.0, 1.0, 1.0, 1.0, 1.0])}
    calls: list[str] = []

    def fake_generate(pipe: str, stage: Any, prompts: list[str], seeds: list[int], size: int, bs: int) -> str:
        calls.append(pipe)
        clock.now += next(seconds[pipe])
        return "images"

    head_s = iter([5.0, 0.2, 0.4, 0.2])

    def fake_translate(engine: Any, sample: Any, bs: int) -> None:
        calls.append("head")
        clock.now += next(head_s)

    monkeypatch.setattr(eval_flux, "load_t2i", lambda stage, *a: stage.name)
    monkeypatch.setattr(eval_flux, "generate", fake_generate)
    monkeypatch.setattr(eval_flux, "translate_batches", fake_translate)
    monkeypatch.setattr(eval_flux.InferenceEngine, "from_head", staticmethod(lambda head, **kw: None))
    stage = SimpleNamespace
    df = eval_flux.timing_table(stage(name="schnell", steps=4), stage(name="dev", steps=28), None, [64], "/nope",
                                n_images=1)
    assert calls == ["dev"] * 4 + ["schnell"] * 5 + ["head"] * 4  # warm-up + 3 timed each (+ the head's input)
    r = df.iloc[0]
    assert r["repeats"] == 3
    assert (r["dev_t2i_s"], r["dev_t2i_s_min"], r["dev_t2i_s_max"]) == pytest.approx((4.0, 3.0, 8.0))
    assert (r["head_s"], r["head_s_min"], r["head_s_max"]) == pytest.approx((0.2, 0.2, 0.4))
    assert r["schnell_head_s"] == pytest.approx(1.2) and r["saved_pct"] == pytest.approx(70.0)
    assert r["saved_pct_min"] <= r["saved_pct"] <= r["saved_pct_max"]
