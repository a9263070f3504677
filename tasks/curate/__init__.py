"""Curation: score every pair, dedup across the dataset, decide keep/drop with reasons (docs/curate.md)."""

from facelift.tasks.curate.config import REASONS, CurateConfig, Thresholds, curation_id, scores_key
from facelift.tasks.curate.decide import decide
from facelift.tasks.curate.run import CurationError, decide_curation, is_tiny, kept_pairs, resolve_curation
from facelift.tasks.curate.score import Scorer, model_identity, score_shard

__all__ = ["REASONS", "CurateConfig", "CurationError", "Scorer", "Thresholds", "curation_id", "decide",
           "decide_curation", "is_tiny", "kept_pairs", "model_identity", "resolve_curation", "score_shard",
           "scores_key"]
