"""A training checkpoint folder: the head (``config.json`` + ``model.safetensors``), ``train_state.pt``
(optimizers, schedulers, step, epoch, early-stopping state, history, every worker's data position) and
``train_config.json`` (the resolved training config)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from facelift.errors import first_line
from facelift.models.heads import CONFIG_FILE, WEIGHTS_FILE, Head, HeadError, OptimizerSpec

if TYPE_CHECKING:
    from ray.train import Checkpoint

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
TRAIN_CONFIG_FILE = "train_config.json"


def save_checkpoint(folder: str, head: Head, optimizers: list[OptimizerSpec], state: dict[str, Any],
                    config: dict[str, Any], data: list[dict]) -> None:
    """``data``: every worker's ``PairStream.state_dict()``, in rank order; ``config``: the JSON config."""
    head.save(folder)
    torch.save({**state, "data": data, "optimizers": {s.name: s.optimizer.state_dict() for s in optimizers},
                "schedulers": {s.name: s.scheduler.state_dict() for s in optimizers if s.scheduler}},
               os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, TRAIN_CONFIG_FILE), "w") as fh:
        json.dump(config, fh, indent=2)


def restore_checkpoint(folder: str, head: Head, optimizers: list[OptimizerSpec], run_uri: str | None) -> dict:
    """Load the head and optimizer states from ``folder``; returns the saved training state."""
    with open(os.path.join(folder, CONFIG_FILE)) as fh:
        info = json.load(fh)
    if info.get("head") != head.name:
        raise HeadError(f"run {run_uri} holds a checkpoint of head {info.get('head')!r}, not {head.name!r}: "
                        f"use another run_id")
    with open(os.path.join(folder, WEIGHTS_FILE), "rb") as fh:
        head.load_state_bytes(fh.read(), where=f"in checkpoint {folder}")
    state = load_state(os.path.join(folder, STATE_FILE))
    for spec in optimizers:
        spec.optimizer.load_state_dict(state["optimizers"][spec.name])
        if spec.scheduler is not None:
            spec.scheduler.load_state_dict(state["schedulers"][spec.name])
    return state


def load_state(path: str) -> dict[str, Any]:
    """``train_state.pt`` with ``weights_only=True``: tensors and plain data only. The file comes from the object
    store, so a pickle that would run code (or build any other object) is refused, never executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HeadError(f"refusing {path}: it holds objects other than tensors and plain data, which loading would "
                        f"execute (weights_only): {first_line(exc, 200)}") from None


def worker_data_state(saved: list[dict] | None, rank: int, world: int) -> dict | None:
    """This worker's data position from a checkpoint; None (the data order restarts) if it has none."""
    if saved is None:
        log.warning("the checkpoint has no data position (an older run): the data order restarts")
        return None
    if len(saved) != world:
        log.warning("the checkpoint was written by %d workers, this run has %d: the data order restarts",
                    len(saved), world)
        return None
    return saved[rank]


@contextlib.contextmanager
def checkpoint_folder(checkpoint: Checkpoint) -> Iterator[str]:
    """``checkpoint`` as a local folder that only this process reads.

    Ray's ``Checkpoint.as_directory`` downloads a remote checkpoint into one temporary folder per checkpoint,
    shared by the node's processes; a worker that opens it after another's download has finished downloads it
    again over the files the other is still reading (a truncated ``train_state.pt`` on resume). Each worker
    downloads to a folder of its own instead, removed when the block ends; a local checkpoint is read in place.
    """
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield checkpoint.path
        return
    folder = tempfile.mkdtemp(prefix="facelift-checkpoint-")
    try:
        yield checkpoint.to_directory(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
