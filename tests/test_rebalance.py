"""Raking (tasks.audit.rebalance.rake): absent target classes, category and attribute order, the weight cap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facelift.tasks.audit.analyze import RACES
from facelift.tasks.audit.rebalance import effective_target, expected_distribution, parse_target, rake


def _names(race_counts: dict[str, int], gender_by_race: dict[str, float] | None = None, seed: int = 0
           ) -> pd.DataFrame:
    """A pilot's per-name attributes: ``race_counts`` names per race, a share of men per race (default 0.5)."""
    rng = np.random.default_rng(seed)
    races = [r for r, k in race_counts.items() for _ in range(k)]
    men = gender_by_race or {}
    gender = [("man" if rng.random() < men.get(r, 0.5) else "woman") for r in races]
    n = len(races)
    return pd.DataFrame({"nconst": [f"nm{i:05d}" for i in range(n)], "name": [f"N{i}" for i in range(n)],
                         "race": races, "gender": gender, "age": ["31-50"] * n})


PILOT = {"white": 70, "black": 20, "asian": 10}


def test_absent_classes_are_respread_over_the_reachable_ones() -> None:
    """Target uniform over six races, pilot 70/20/10 white/black/asian: 1/3 each (the issue's example)."""
    names = _names(PILOT)
    target = parse_target({"race": {r: 1 / 6 for r in RACES}})
    got = expected_distribution(names, rake(names, target), ["race"])["race"]
    for race in PILOT:
        assert got[race] == pytest.approx(1 / 3, abs=1e-6), got
    assert sum(got[r] for r in RACES if r not in PILOT) == 0.0


def test_effective_target_renormalises_over_reachable_classes() -> None:
    names = _names(PILOT)
    target = {"race": {"white": 0.1, "black": 0.2, "asian": 0.3, "indian": 0.4}}
    eff = effective_target(names, target)
    assert eff["race"] == pytest.approx({"white": 1 / 6, "black": 2 / 6, "asian": 3 / 6, "indian": 0.0})
    got = expected_distribution(names, rake(names, target), ["race"])["race"]
    for race, share in eff["race"].items():
        assert got[race] == pytest.approx(share, abs=1e-6)


def test_rake_does_not_depend_on_category_attribute_or_row_order() -> None:
    names = _names(PILOT, {"white": 0.8, "black": 0.4, "asian": 0.5}, seed=1)
    races = {r: 1 / 6 for r in RACES}
    target = {"race": races, "gender": {"man": 0.5, "woman": 0.5}}
    permuted = {"gender": {"woman": 0.5, "man": 0.5}, "race": dict(reversed(list(races.items())))}
    w = rake(names, target, max_ratio=1e6)
    np.testing.assert_allclose(rake(names, permuted, max_ratio=1e6), w, rtol=1e-6)
    order = np.random.default_rng(2).permutation(len(names))
    shuffled = names.iloc[order].reset_index(drop=True)
    np.testing.assert_allclose(rake(shuffled, target, max_ratio=1e6), w[order], rtol=1e-6)
    got = expected_distribution(names, w, ["race", "gender"])
    for race in PILOT:
        assert got["race"][race] == pytest.approx(1 / 3, abs=1e-5)
    assert got["gender"]["man"] == pytest.approx(0.5, abs=1e-5)


def test_rake_caps_weights_and_keeps_unknown_names_out() -> None:
    names = _names({"white": 95, "black": 5})
    names.loc[0, "race"] = None
    target = parse_target({"race": {"white": 0.5, "black": 0.5}})
    w = rake(names, target, max_ratio=5.0)
    assert w[0] == 0.0  # an unknown attribute cannot be steered
    assert w.max() <= 5.0 * w[w > 0].mean() + 1e-9
    got = expected_distribution(names, w, ["race"])["race"]
    assert 0.05 < got["black"] < 0.5  # moved toward the target as far as the cap allows
