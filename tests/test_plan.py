from __future__ import annotations

import pandas as pd
import pytest

from facelift.config import PlanConfig, PromptConfig
from facelift.tasks.build.names import read_names
from facelift.tasks.build.plan import PlanError, make_plan, pair_seed


@pytest.fixture(scope="module")
def people() -> pd.DataFrame:
    return read_names()[0]


def test_same_inputs_same_plan_and_seed_changes_it(people):
    cfg = PlanConfig(count=40, seed=1, shard_size=16)
    a, b = make_plan(people, cfg), make_plan(people.sample(frac=1, random_state=3), cfg)
    assert a.equals(b)  # input order does not matter
    c = make_plan(people, PlanConfig(count=40, seed=2, shard_size=16))
    assert set(a["pair_id"]) != set(c["pair_id"])
    assert a["pair_id"].is_unique and a["seed"].between(0, 2**32 - 1).all()
    assert a["shard"].tolist() == [i // 16 for i in range(40)]
    assert a["prompt"].iloc[0] == f"A professional portrait of {a['name'].iloc[0]}"


def test_pair_ids_and_seeds_are_stable_across_sample_sizes(people):
    small = make_plan(people, PlanConfig(count=None, seed=0)).set_index("pair_id")
    # the pair of a given person keeps its id and seed whatever else is in the plan
    assert small.loc[small.index[0], "seed"] == pair_seed(0, small.index[0])


def test_count_larger_than_names_is_an_error(people):
    with pytest.raises(PlanError, match=f"only {len(people)} eligible"):
        make_plan(people, PlanConfig(count=len(people) + 1))


def test_baseline_mode_has_no_names():
    plan = make_plan(None, PlanConfig(count=10, prompt=PromptConfig(mode="baseline")))
    assert (plan["prompt"] == "A professional business portrait").all() and (plan["name"] == "").all()
    assert plan["pair_id"].is_unique and plan["seed"].nunique() == 10
    with pytest.raises(PlanError, match="needs a count"):
        make_plan(None, PlanConfig(count=None, prompt=PromptConfig(mode="baseline")))


def test_weights_restrict_and_bias_the_sample(people):
    heavy = set(people["nconst"].iloc[:20])
    weights = pd.DataFrame({"nconst": people["nconst"].iloc[:60],
                            "weight": [50.0 if n in heavy else 1.0 for n in people["nconst"].iloc[:60]]})
    plan = make_plan(people, PlanConfig(count=30, seed=0), weights)
    assert set(plan["nconst"]) <= set(weights["nconst"])  # unlisted names have weight 0
    assert len(heavy & set(plan["nconst"])) >= 15  # 20 heavy names, 40 light: heavy dominate
    with pytest.raises(PlanError, match="finite and >= 0"):
        make_plan(people, PlanConfig(count=3), weights.assign(weight=-1.0))


def test_cost_projection_scales_with_gpus():
    from facelift.tasks.build.steps import cost_projection

    cost = cost_projection({"encode_s": 1.0, "schnell_s": 3.0, "dev_s": 6.0, "png_s": 99.0}, pairs=10)
    assert cost["gpu_seconds_per_pair"]["total"] == 1.0  # PNG overlaps on the CPU: not GPU time
    hours = cost["projection"]["wall_hours_on_n_gpus"]
    assert cost["projection"]["gpu_hours"] == round(140_000 / 3600, 2) and hours["8"] == round(140_000 / 3600 / 8, 2)
