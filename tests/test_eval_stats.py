"""The evaluation table's statistics (interval method, N, KID subsets, intervals that hold their estimates and
stay >= 0 for FID, paired comparisons with the baseline and their verdicts) and the timing table's repeats
(median and spread), without models: fake features, a fake clock, fake pipelines. Coverage: test_coverage.py."""

from __future__ import annotations

import io
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from facelift.storage import Store
from facelift.tasks.evaluate import flux as eval_flux
from facelift.tasks.evaluate.family import VERDICTS, verdict
from facelift.tasks.evaluate.joint import fid_with_ci, mean_t
from facelift.tasks.evaluate.report import (
    comparison_columns,
    fid_below_zero,
    intervals_violated,
    table_markdown,
    write_outputs,
)
from facelift.tasks.evaluate.table import metric_columns

ROWS = ("schnell", "dev", "head", "better head")


def _table(n: int, d: int, seed: int = 0, baseline: int = 0) -> pd.DataFrame:
    """Four rows made from the same n inputs: schnell (x), dev (a shift of x), a head halfway, a better head."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    dev = lambda v: 1.3 * v + 0.5 + 0.2 * rng.normal(size=v.shape)  # noqa: E731
    noise = 0.2 * rng.normal(size=(2, n, d))
    feats = [x, dev(x), 1.1 * x + 0.2 + noise[0], 1.25 * x + 0.45 + noise[1]]
    iqa = [rng.random(n) * 0.2 + 0.1 * k for k in range(4)]
    lp = [np.abs(f - feats[1]).mean(1) for f in feats]
    unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731  CLIP-like embeddings
    cols = metric_columns(feats, {"schnell": y, "dev": dev(y)}, iqa, lp, baseline, rounds=10, kid_subsets=20,
                          seed=seed, clip=[unit(f) for f in feats], clip_ref=unit(dev(y)))
    return pd.DataFrame.from_records([{"row": r, "kind": "head", "source": r, "n": n, "n_reference": n, **c,
                                       "baseline": ROWS[baseline], "seconds_per_image": 0.01}
                                      for r, c in zip(ROWS, cols, strict=True)])


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return _table(64, 8)  # N >= 2·d: the bias-corrected FIDs are shown


def test_every_estimate_lies_inside_its_interval(table: pd.DataFrame) -> None:
    assert intervals_violated(table) == [] and fid_below_zero(table) == []
    for col in ("fid_schnell", "fid_dev", "fid_diff", "kid_schnell", "kid_dev", "clip_iqa"):
        assert (table[f"{col}_ci_low"] < table[col]).all() and (table[col] < table[f"{col}_ci_high"]).all(), col
    broken = table.assign(fid_dev_ci_high=table["fid_dev"] - 1)
    assert intervals_violated(broken) == [f"{r}: fid_dev" for r in ROWS]
    assert fid_below_zero(table.assign(fid_dev_bc_ci_low=-0.1)) == [f"{r}: fid_dev_bc_ci_low" for r in ROWS]


def test_no_fid_interval_below_zero_near_a_match() -> None:
    """Rows from the reference distribution, small N: the old symmetric half-sampling interval went below 0 in
    most of these trials (the demo printed FID_schnell 4.347 [−4.245, 12.939]); now none does."""
    lows = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        est = fid_with_ci(rng.normal(size=(16, 4)), {"schnell": rng.normal(size=(16, 4)),
                                                     "dev": rng.normal(size=(16, 4))}, n_boot=10, seed=seed)
        for key in ("schnell", "dev", "schnell_bc", "dev_bc"):
            assert 0 <= est[key].low <= est[key].value <= est[key].high, (seed, key, est[key])
        lows.append(est["diff"].low)
    assert min(lows) < 0  # a difference of FIDs keeps its sign


def test_paired_comparisons_share_the_resampling(table: pd.DataFrame) -> None:
    """Δ is exactly the difference of the rows' values (the same splits and subsets), the baseline row has none,
    and each Δ ends with a verdict."""
    head = table.iloc[2]
    assert head["d_fid_target"] == "population (bias-corrected)" and head["fid_bc_valid"]
    assert head["d_cmmd_dev"] == pytest.approx(head["cmmd_dev"] - table.iloc[0]["cmmd_dev"], abs=1e-12)
    assert head["d_fid_dev"] == pytest.approx(head["fid_dev_bc"] - table.iloc[0]["fid_dev_bc"], abs=1e-9)
    assert head["d_kid_dev"] == pytest.approx(head["kid_dev"] - table.iloc[0]["kid_dev"], abs=1e-12)
    assert head["d_clip_iqa"] == pytest.approx(head["clip_iqa"] - table.iloc[0]["clip_iqa"])
    assert table.iloc[0][["d_fid_dev", "d_kid_dev", "d_clip_iqa"]].isna().all()
    assert (table.iloc[0][[c for c in table.columns if c.endswith("_verdict")]] == "").all()
    # the dev-like heads are far closer to dev than schnell: decided even at the family's level (1 − 0.05/18)
    assert table.iloc[3]["d_kid_dev_verdict"] == "better" and table.iloc[3]["d_fid_diff_verdict"] == "better"
    assert table.iloc[3]["d_fid_dev_p"] < 0.05 / 18 or table.iloc[3]["d_fid_dev_verdict"] == "inconclusive"
    assert table.iloc[3]["d_lpips_dev_verdict"] == "better" and table.iloc[1]["d_lpips_dev"] < 0
    assert set(table.iloc[1:][[c for c in table.columns if c.endswith("_verdict")]].to_numpy().ravel()) <= set(
        VERDICTS)
    assert comparison_columns(table)[:6] == ["baseline", "d_kid_dev", "d_kid_dev_ci_low", "d_kid_dev_ci_high",
                                             "d_kid_dev_p", "d_kid_dev_verdict"]
    # one family: 3 rows × 6 comparisons, each interval at 1 − 0.05/18
    assert (table["family_size"] == 18).all() and (table["primary"] == "d_kid_dev").all()


def test_verdicts() -> None:
    assert verdict(0.1, 0.3, higher_is_better=True) == "better"
    assert verdict(0.1, 0.3, higher_is_better=False) == "worse"
    assert verdict(-0.3, -0.1, higher_is_better=False) == "better"
    assert verdict(-0.1, 0.3, higher_is_better=True) == "inconclusive"
    assert verdict(float("nan"), float("nan"), higher_is_better=True) == ""


def test_table_leads_with_the_right_fid_and_compares_with_the_baseline(table: pd.DataFrame) -> None:
    md = table_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| row | N | FID_schnell | FID_dev ↓ | FID_diff ↑ | FID_schnell bias-corr. |")
    assert "| KID_schnell ×10³ | KID_dev ×10³ ↓ | CMMD_dev ×10³ ↓ | KID subsets |" in lines[0] and "±" not in md
    schnell = lines[2]
    assert schnell.startswith("| schnell | 64 |") and "joint halves+quarters ×10" in schnell
    assert "| 20 × 32 |" in schnell
    bc = f"| {table.loc[0, 'fid_diff_bc']:.3f} [{table.loc[0, 'fid_diff_bc_ci_low']:.3f}, "
    assert bc in schnell
    paired = md[md.index("Paired comparisons"):].splitlines()
    assert "baseline row `schnell`" in paired[0] and "population (bias-corrected)" in paired[0]
    assert paired[2] == ("| row | Δ KID_dev ×10³ ↓ | Δ CMMD_dev ×10³ ↓ | Δ FID_dev ↓ | Δ FID_diff ↑ | Δ CLIP-IQA ↑ "
                         "| Δ LPIPS→dev ↓ |")
    assert paired[-1].startswith("Family: every row × every Δ with a verdict, 18 comparisons, family-wise 95%")
    assert [p.split(" | ")[0] for p in paired[4:-2]] == ["| dev", "| head", "| better head"]  # not the baseline
    assert paired[-3].split(" | ")[1].endswith("better")  # the primary, Δ KID_dev
    # N < 2·d: KID first, FIDs starred, a note that FID rankings at this N are not population rankings
    small = _table(12, 8, seed=1)
    md = table_markdown(small)
    head = "| row | N | KID_schnell ×10³ | KID_dev ×10³ ↓ | CMMD_dev ×10³ ↓ | KID subsets | FID_schnell* |"
    assert md.splitlines()[0].startswith(head)
    assert "FID rankings at this N are not population rankings" in md and "bias-corr." not in md.splitlines()[0]
    assert "Δ FID: FID at this N, not a ranking" in md
    # no FID verdict below 2·d: the Δ FIDs come last, marked, with no verdict, outside the family
    assert (small["d_fid_dev_verdict"] == "").all() and small["fid_dev_bc"].isna().all()
    assert not small["fid_bc_valid"].any() and (small["family_size"] == 12).all()
    paired = md[md.index("Paired comparisons"):].splitlines()
    assert paired[2].endswith("| Δ FID_dev ↓ | Δ FID_diff ↑ |") and "(at N, not a ranking)" in paired[4]


def test_another_baseline_row() -> None:
    t = _table(64, 8, baseline=2)
    assert (t["baseline"] == "head").all() and t.loc[2, ["d_fid_dev", "d_kid_dev"]].isna().all()
    assert t.loc[0, "d_fid_dev_verdict"] == "worse" and t.loc[3, "d_fid_dev"] < 0
    assert "baseline row `head`" in table_markdown(t)


def test_too_few_images_flag_kid_and_give_no_interval() -> None:
    t = _table(3, 2)
    assert t["kid_dev"].isna().all() and t.loc[0, "kid_schnell_flag"].startswith("KID needs n >= 4")
    assert t["fid_dev_ci_low"].isna().all() and np.isfinite(t["fid_dev"]).all()
    row = table_markdown(t).splitlines()[2]
    assert "n/a (KID needs n >= 4" in row and "| none |" in row


def test_table_names_the_split_n_resize_and_clip_iqa_variant(table: pd.DataFrame) -> None:
    recorded = table.assign(split="test", split_rule="train 0.5 / val 0.16 / test 0.34 (salt 'split')", n_test=9,
                            fid_resize="clean", feature_network="fid-inception-abc",
                            clip_iqa_model="openai/clip-vit-base-patch16",
                            clip_iqa_variant="ViT-B/16, short side bicubic to 224 + centre crop 224²")
    lines = table_markdown(recorded).splitlines()
    caption = lines[2 + len(table) + 1]
    assert lines[2 + len(table)] == ""
    assert caption.startswith("Pairs: test split only (train 0.5 / val 0.16 / test 0.34 (salt 'split')), 9 test "
                              "pairs, N = 64 per set (input half) vs 64 reference pairs.")
    assert "FID: fid-inception-abc, resize clean." in caption
    assert "CLIP-IQA: openai/clip-vit-base-patch16 (ViT-B/16, short side bicubic to 224 + centre crop 224²)" in caption
    assert table_markdown(table).splitlines()[2 + len(table) + 1].startswith("Paired comparisons")  # no caption


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
    assert "FID resize clean" in report and "Paired comparisons with the baseline row `schnell`" in report
    assert "joint resampling" in report and "standard error" in report and "t interval" in report
    csv = pd.read_csv(io.BytesIO(run.read_bytes("evaluation/table.csv")))
    assert {"d_fid_dev", "d_fid_dev_ci_low", "d_fid_dev_verdict", "d_kid_dev_verdict", "baseline"} <= set(csv.columns)
    assert "| 64² | 3 | 2.0000 [1.5000–3.0000] |" in report and "| 70.0 [46.7–83.3]% |" in report


def test_mean_interval_is_a_t_interval() -> None:
    m = mean_t(np.linspace(0, 1, 101))
    assert m.low < 0.5 < m.high and m.value == pytest.approx(0.5) and m.method == "t interval"
    half = 1.984 * np.linspace(0, 1, 101).std(ddof=1) / np.sqrt(101)
    assert m.high - m.value == pytest.approx(half, rel=1e-3)


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
