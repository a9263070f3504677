"""Heads learn on the path users run (issue 30): ``facelift build`` (tiny profile, 96 pairs), every pair's
pictures replaced by a known mapping (``texture`` in tests/learning_data.py: dev = soft blobs, hard-edged discs
and fine texture; schnell = dev blurred, warm-cast and noised), then ``facelift train`` with the CLI's defaults
apart from ``--flavor debug --max-steps 300 --batch-size 4 --resolution 64``, given the dataset as a relative
path, then ``facelift enhance`` on 24 fresh pictures, scored against their dev pictures. Every head at 64², data
seeds as ``CELLS`` says; the bounds of the learning grid (``learning_data.limits``). Commands run as subprocesses
(tests/product_path.py) against a running Prefect server: their defaults, Prefect flow and Ray start are the
users'.

The grid in tests/test_learning.py passed while this path failed for the CycleGAN (issue 30: the exported G
changed its input by 0.6 % of dev's change); docs/train_heads.md, "On the product path", has the cause.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import product_path as pp
import pytest
from learning_data import limits

from facelift.stack.local import PrefectServer
from facelift.tasks.train.report import stuck_generator

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# every head; both data seeds for the CycleGAN, the head that failed only on this path (issue 30); the learning
# grid (tests/test_learning.py) crosses heads with seeds, sizes and mappings on the loop underneath
CELLS = [("unet_cbam", 1), ("cyclegan", 0), ("cyclegan", 1), ("esa_cyclegan", 0)]
SIZE, STEPS, COUNT, DATASET = 64, 300, 96, "product"


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One Prefect server per test process, as a user's shell points at one (``PREFECT_API_URL``): the commands'
    flow runs go there instead of each starting Prefect's ephemeral server (up to 2 minutes on a loaded host)."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, prefect_api: PrefectServer) -> Path:
    """One ``facelift build`` per test process; each cell copies it."""
    root = tmp_path_factory.mktemp("product-build") / "data"
    pp.build(root, COUNT, DATASET, pp.cli_env(cache_dir, prefect_api))
    return root


@pytest.mark.parametrize("head, seed", CELLS)
def test_head_learns_through_build_train_enhance(head: str, seed: int, built: Path, tmp_path: Path,
                                                 cache_dir: Path, prefect_api: PrefectServer) -> None:
    env = pp.cli_env(cache_dir, prefect_api)
    shutil.copytree(built, tmp_path / "data")
    assert pp.replace_pictures(str(tmp_path / "data" / "datasets" / DATASET), "texture", seed) == COUNT
    # a relative path, as a user types it: resolved at the door (Ray Train's workers run in another directory)
    run = pp.train(f"data/datasets/{DATASET}", head, tmp_path, env, STEPS, SIZE, f"product-{seed}")
    got = pp.enhance_and_score(run["run_uri"], "texture", SIZE, tmp_path / "enhance", env)
    epochs = run["metrics"]["epochs"]
    log.info("%s seed %d: L1 %.3fx identity, colour %.3fx identity, change %.1f%% of dev's (exported step %s); "
             "last epoch %s", head, seed, got["l1"], got["cast"], 100 * run["identity"]["ratio"],
             run["selected_step"], epochs[-1])
    max_l1, max_colour = limits(head, "cast")
    assert got["l1"] <= max_l1, got
    if max_colour is not None:
        assert got["cast"] <= max_colour, got
    assert run["identity"]["near_identity"] is False, run["identity"]
    # the run's report carries what shows a stuck generator: the change ratio and D's accuracies per epoch
    assert all("val_change_ratio" in e for e in epochs), epochs[-1]
    if head != "unet_cbam":
        assert {"val_D_dev_acc_fake", "val_D_schnell_acc_fake"} <= set(epochs[-1])
    assert stuck_generator(run["metrics"]) is None
