"""The plan: one row per pair (pair_id, name, nconst, prompt, seed, shard, weight). Pure and deterministic.

The same names, configuration and seed always give the same plan: sampling uses a seeded numpy
generator over names sorted by nconst, and each pair's seed is derived from (plan seed, pair_id), so a
pair's images do not depend on which batch or worker renders it.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from facelift.config import PlanConfig

log = logging.getLogger(__name__)


class PlanError(ValueError):
    """The plan cannot be made from these inputs."""


def pair_seed(plan_seed: int, pair_id: str) -> int:
    digest = hashlib.sha256(f"{plan_seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")  # < 2**32: valid for every torch generator


def _pair_id(mode: str, key: str) -> str:
    return f"{mode[0]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def sample_names(people: pd.DataFrame, count: int | None, seed: int,
                 weights: pd.DataFrame | None = None) -> pd.DataFrame:
    """Choose ``count`` people deterministically; with ``weights`` (nconst, weight) only names with
    weight > 0 are eligible and selection is proportional to weight (Efraimidis-Spirakis keys)."""
    people = people.sort_values("nconst", kind="stable").reset_index(drop=True)
    if weights is not None:
        w = weights.drop_duplicates("nconst").set_index("nconst")["weight"].astype(float)
        if (w < 0).any() or not np.isfinite(w).all():
            raise PlanError("sampling weights must be finite and >= 0")
        people = people.assign(weight=people["nconst"].map(w).fillna(0.0))
        people = people[people["weight"] > 0].reset_index(drop=True)
    else:
        people = people.assign(weight=1.0)
    available = len(people)
    count = available if count is None else count
    if count > available:
        raise PlanError(f"asked for {count} pairs but only {available} eligible names are available")
    rng = np.random.default_rng(seed)
    if weights is None:
        idx = np.sort(rng.choice(available, size=count, replace=False))
    else:
        keys = rng.random(available) ** (1.0 / people["weight"].to_numpy())
        idx = np.sort(np.argsort(-keys, kind="stable")[:count])
    return people.iloc[idx].reset_index(drop=True)


def make_plan(
    people: pd.DataFrame | None, cfg: PlanConfig, weights: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Build the plan for enriched (one prompt per name) or baseline (one fixed prompt) mode."""
    mode = cfg.prompt.mode
    if mode == "baseline":
        if cfg.count is None:
            raise PlanError("baseline mode needs a count (it has no names to enumerate)")
        ids = [_pair_id(mode, f"{cfg.seed}:{i}") for i in range(cfg.count)]
        plan = pd.DataFrame({"pair_id": ids, "name": "", "nconst": "",
                             "prompt": cfg.prompt.baseline_prompt, "weight": 1.0})
    else:
        if people is None or people.empty:
            raise PlanError("enriched mode needs names")
        chosen = sample_names(people, cfg.count, cfg.seed, weights)
        plan = pd.DataFrame({
            "pair_id": [_pair_id(mode, n) for n in chosen["nconst"]],
            "name": chosen["name"], "nconst": chosen["nconst"],
            "prompt": [cfg.prompt.template.format(name=n) for n in chosen["name"]],
            "weight": chosen["weight"].astype(float),
        })
    if plan["pair_id"].duplicated().any():
        raise PlanError("duplicate pair ids in plan (duplicate nconst in the names?)")
    plan["seed"] = [pair_seed(cfg.seed, p) for p in plan["pair_id"]]
    plan["shard"] = (np.arange(len(plan)) // cfg.shard_size).astype("int32")
    plan["seed"] = plan["seed"].astype("int64")
    log.info("plan: %d pairs in %d shards (%s mode)", len(plan), plan["shard"].nunique(), mode)
    return plan[["pair_id", "name", "nconst", "prompt", "seed", "shard", "weight"]]
