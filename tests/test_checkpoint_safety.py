"""A training checkpoint comes from the object store: ``train_state.pt`` is loaded with ``weights_only=True``,
so a crafted pickle is refused instead of run, and an honest checkpoint still resumes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from test_train_loop import SIZE, folder_checkpoint, loop_config

from facelift.dataset import Dataset
from facelift.models.heads import HeadError
from facelift.storage import Store
from facelift.tasks.train.checkpoint import STATE_FILE
from facelift.tasks.train.loop import LoopEnv, run_loop
from facelift.testing import make_synthetic_dataset


class Payload:
    """Unpickling this runs a shell command (what an attacker with write access to the bucket would plant)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return make_synthetic_dataset(Store(str(tmp_path_factory.mktemp("ckpt-data"))), "ckpt", n_pairs=16, size=SIZE,
                                  shard_size=8, seed=5)


def _saved_checkpoint(dataset: Dataset, tmp_path: Path) -> tuple[Path, object]:
    cfg = loop_config(dataset, "unet_cbam", tmp_path / "run", max_steps=2, checkpoint_every=2)
    saved = tmp_path / "saved"

    def report(metrics: dict, folder: str | None) -> None:
        if folder and not saved.exists():
            shutil.copytree(folder, saved)

    torch.set_num_threads(1)
    run_loop(cfg, LoopEnv(report=report))
    return saved, cfg


def test_crafted_train_state_is_refused_and_an_honest_one_resumes(dataset: Dataset, tmp_path: Path):
    saved, cfg = _saved_checkpoint(dataset, tmp_path)
    honest = run_loop(cfg.model_copy(update={"max_steps": 4}),
                      LoopEnv(checkpoint=folder_checkpoint(saved), report=lambda m, f: None))
    assert honest["step"] == 4 and honest["history"]["resumed_from"] == [2]

    marker = tmp_path / "pwned"
    state = torch.load(saved / STATE_FILE, weights_only=True)
    torch.save({**state, "history": Payload(marker)}, saved / STATE_FILE)  # still a valid torch file
    with pytest.raises(HeadError, match=r"refusing .*train_state\.pt.*weights_only"):
        run_loop(cfg.model_copy(update={"max_steps": 4}),
                 LoopEnv(checkpoint=folder_checkpoint(saved), report=lambda m, f: None))
    assert not marker.exists()
    # the old loader would have run it: the payload is real
    torch.load(saved / STATE_FILE, weights_only=False)
    assert marker.exists()


def test_a_trainer_whose_run_was_taken_over_writes_no_checkpoint(dataset: Dataset, tmp_path: Path):
    """Another trainer took the run's lease (generation 2): the old one stops at its first checkpoint, before
    writing it, and exports nothing."""
    from facelift.lease import Lease, LeaseLost

    cfg = loop_config(dataset, "unet_cbam", tmp_path / "run", max_steps=4, checkpoint_every=1)
    run_store = Store(cfg.run_uri)
    old = Lease(run_store, "run r", ttl_s=0.5, settle_s=0).acquire()
    old._stop.set()  # the old trainer's heartbeat stalls (a partition): its lease lapses and is taken over
    old._thread.join()
    new = Lease(run_store, "run r", ttl_s=30, wait_s=5, poll_s=0.1, settle_s=0).acquire()
    written: list[str] = []
    try:
        with pytest.raises(LeaseLost, match=f"now held by {new.holder}"):
            run_loop(cfg, LoopEnv(report=lambda m, folder: written.append(folder), fence=old.fence))
        assert written == [] and not run_store.exists("head/config.json") and not run_store.exists("metrics.json")
        run_loop(cfg, LoopEnv(report=lambda m, folder: written.append(folder), fence=new.fence))
        assert len(written) == 4 and run_store.exists("metrics.json")  # the holder's trainer writes
    finally:
        new.release()
