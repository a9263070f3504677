"""Train stage: a head (U-Net+CBAM, CycleGAN, ESA-CycleGAN) on the dataset's train split, selected on val.

Reads ``datasets/<id>`` (manifest, shards, ``dataset.json`` splits); writes ``runs/<run_id>/`` (Ray checkpoints,
``head/``, ``metrics.json``, ``run.json``, report PNGs). Open :mod:`.loop` first (config, Ray Train, the
loop); then :mod:`.data` (input; decode threads in :mod:`facelift.tasks.feed`), :mod:`.select` (which weights
are exported), :mod:`.dist` (collectives), :mod:`.checkpoint`, :mod:`.report` and :mod:`.tune` (the sweep).
"""

from facelift.tasks.train.loop import TrainConfig, ray_session, train
from facelift.tasks.train.report import (
           SWEEP_COLUMNS,
           best_markdown,
           png_markdown,
           sweep_caption,
           sweep_rows,
           write_reports,
)
from facelift.tasks.train.tune import PAPER_LAMBDA_CYC, PAPER_LR, sweep

__all__ = ["PAPER_LAMBDA_CYC", "PAPER_LR", "SWEEP_COLUMNS", "TrainConfig", "best_markdown", "png_markdown",
           "ray_session", "sweep", "sweep_caption", "sweep_rows", "train", "write_reports"]
