"""Build stage: IMDb names -> plan -> Ray GPU workers render and commit shards -> manifest.

Reads a names file (``name.basics.tsv[.gz]``) or the baseline prompt; writes
``datasets/<id>/{dataset.json, plan.parquet, shards/NNNNN.parquet, manifest.parquet}``.
Open :mod:`.steps` first (prepare, missing shards, finalize); then :mod:`.schedule` (a Prefect task per
shard over the Ray actors of :mod:`.generate`, placed by :mod:`.placement`), :mod:`.commit`, :mod:`.names` and
:mod:`.plan`; :mod:`.sim` is the ``sim`` profile's stand-in renderer (a dry run without GPUs).
"""

from facelift.tasks.build.names import NamesError
from facelift.tasks.build.plan import PlanError
from facelift.tasks.build.schedule import ShardOutcome, run_shards
from facelift.tasks.build.steps import BuildError, failure_message, finalize, missing_shards, prepare, summary_rows

__all__ = ["BuildError", "NamesError", "PlanError", "ShardOutcome", "failure_message", "finalize", "missing_shards",
           "prepare", "run_shards", "summary_rows"]
