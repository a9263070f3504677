"""Evaluate stage: schnell, dev, trained heads and an optional schnell+LoRA, scored on the test split.

Reads ``datasets/<id>`` (test split only) and heads under ``runs/``; writes ``runs/<run_id>/eval/`` (Table 4 as
``table.csv`` / ``report.md``, timing, a grid). Open :mod:`.score` first (rows, metric suite); then
:mod:`.data` (test split, batches), :mod:`.table` (every row's metrics and the paired comparisons with the
baseline row), :mod:`.joint` (the shared resampling and intervals), :mod:`.metrics` (FID, KID), :mod:`.report`
and :mod:`.flux` (the LoRA row and the timing table); :mod:`.simulate` holds scenarios with a known answer
(coverage tests, ``bench/eval_paired.py``).
"""

from facelift.tasks.evaluate.data import TestSplit, check_head_splits, select_test_split
from facelift.tasks.evaluate.flux import LoraSource, timing_plot, timing_table
from facelift.tasks.evaluate.report import (
    EVAL_DIR,
    comparison_columns,
    comparison_markdown,
    fid_below_zero,
    image_grid,
    intervals_violated,
    table_markdown,
    timing_markdown,
    write_outputs,
)
from facelift.tasks.evaluate.score import (
    EvalConfig,
    HeadSource,
    MetricSuite,
    RowSource,
    reference_sources,
    score_rows,
    timing_head,
)

__all__ = ["EVAL_DIR", "EvalConfig", "HeadSource", "LoraSource", "MetricSuite", "RowSource", "TestSplit",
           "check_head_splits", "comparison_columns", "comparison_markdown", "fid_below_zero", "image_grid",
           "intervals_violated", "reference_sources", "score_rows", "select_test_split", "table_markdown",
           "timing_head", "timing_markdown", "timing_plot", "timing_table", "write_outputs"]
