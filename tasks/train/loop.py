"""Train a head with Ray Train (``TorchTrainer``, one process per worker, gloo on CPU / NCCL on GPU).

Outputs under ``<root>/runs/<run_id>/``: Ray checkpoints ``checkpoint_*/`` (head weights + optimizer state +
step + the resolved ``train_config.json`` beside the head's ``config.json``), ``head/`` (the exported head,
the best validated weights so far), ``metrics.json`` (per-step and per-epoch history) and ``run.json``.
Running the same ``run_id`` again resumes from the latest checkpoint (Ray Train restores it from storage).

Gradients are averaged across workers with one coalesced all-reduce per optimizer (what DDP does): the
GAN heads take several forwards and two optimizers per step, which ``DistributedDataParallel``'s one-forward
wrapper does not fit. The collectives (``tasks/train/dist.py``) send only tensors on the loop's device (NCCL).
Checkpoints hold every worker's data position, so a resumed run continues the data order exactly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from facelift.dataset import Dataset
from facelift.ids import check_id
from facelift.lease import Fence, Lease
from facelift.models.heads import Head, HeadError, build_head, compile_mode, load_head, train_step
from facelift.storage import Store, absolute_uri
from facelift.tasks.curate.run import kept_pairs
from facelift.tasks.train.checkpoint import (
    checkpoint_folder,
    restore_checkpoint,
    save_checkpoint,
    worker_data_state,
)
from facelift.tasks.train.data import (
    DataConfig,
    PairStream,
    load_validation,
    open_training_dataset,
    split_counts,
    to_model,
)
from facelift.tasks.train.dist import all_reduce_sums, average_buffers, broadcast_state, gather_bytes, sync_grads
from facelift.tasks.train.select import KIDSelector, epoch_line, identity_check, identity_message

log = logging.getLogger(__name__)
FENCE_KEY = "_fence"  # the run lease's fence travels to the Ray Train workers beside the config


class TrainConfig(BaseModel):
    """Everything one training run needs; saved beside every checkpoint as ``train_config.json``."""

    model_config = ConfigDict(extra="forbid")
    dataset_uri: str
    head: str
    flavor: str = "full"
    head_overrides: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None
    run_uri: str | None = Field(None, description="explicit run folder; default <dataset root>/runs/<run_id>")
    endpoint_url: str | None = None
    max_steps: int = Field(1000, ge=1)
    epochs: int | None = Field(None, ge=1, description="if set, train this many epochs (overrides max_steps)")
    steps_per_epoch: int | None = Field(None, ge=1, description="None: train pairs / (batch * workers)")
    batch_size: int = Field(4, ge=1)
    lr: float | None = Field(None, gt=0, description="None: the head's default")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    resolution: int = Field(512, ge=8, description="square training size (the dataset is 512)")
    crop: int | None = None
    flip: bool = True
    max_val_pairs: int = Field(64, ge=1, description="validation pairs (from the dataset's val split) per check")
    shuffle_buffer: int = Field(256, ge=1)
    decode_workers: int = Field(2, ge=0, description="PNG decode threads per training worker (0: inline)")
    prefetch_batches: int = Field(4, ge=1, description="batches built ahead of the step on a background thread")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints (also at epoch ends)")
    keep_checkpoints: int = Field(2, ge=1)
    early_stopping: bool | None = Field(
        None, description="stop after `patience` epochs without validation improvement; None: the head's default "
                          "(U-Net: yes, the paper's setting; CycleGANs: no, they train the fixed schedule with its "
                          "linear LR decay, as the reference does)")
    patience: int | None = Field(10, ge=1, description="epochs without val improvement before stopping")
    min_delta: float = 0.0
    selection: Literal["auto", "val", "last", "kid"] = Field(
        "auto", description="which weights head/ holds (tasks/train/select.py): val = lowest validation loss of "
                            "the head's monitor, last = the end of the fixed schedule, kid = lowest KID of the "
                            "head's val outputs against val dev (needs inception_weights); auto = the head's "
                            "default (U-Net: val, the paper's early stopping; CycleGANs: last, as the reference)")
    inception_weights: str | None = Field(None, description="FID Inception weights for selection=kid "
                                                            "(default: evaluation's search path)")
    log_every: int = Field(10, ge=1)
    curation: str | None = Field(None, description="curation id (tasks/curate): train and val read only its kept "
                                                   "pairs; None: every pair")
    compile: Literal["none", "regional", "full"] = Field(
        "none", description="torch.compile the networks: regional = each generator's stem, residual block "
                            "(one shared graph) and tail, and each discriminator (fast to compile); full = each "
                            "network whole; true = regional (models.heads.DEFAULT_COMPILE)")
    bf16: bool = True
    seed: int = 0
    fail_at_step: int | None = Field(None, description="fault injection: worker 0 dies before this step "
                                                       "unless the run was restored (tests only)")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, v: Any) -> Any:
        return compile_mode(v) if isinstance(v, bool) or v is None else v

    @field_validator("dataset_uri", "run_uri")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else absolute_uri(v)  # the Ray Train workers run in another directory

    @field_validator("run_id")
    @classmethod
    def _valid_run_id(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "run id")

    @field_validator("curation")
    @classmethod
    def _valid_curation(cls, v: str | None) -> str | None:
        if v == "latest":
            raise ValueError("curation 'latest' is resolved to an id before training (tasks.curate.resolve_curation)")
        return None if v is None else check_id(v, "curation id")

    def data_config(self, ds: Dataset) -> DataConfig:
        """The data settings, with the dataset's fixed splits (train for steps, val for model selection) and the
        curation's kept pairs."""
        keep = kept_pairs(ds, self.curation) if self.curation else None
        return DataConfig(self.resolution, self.crop, self.flip, ds.splits(), self.max_val_pairs,
                          self.shuffle_buffer, self.seed, self.decode_workers, self.prefetch_batches, keep)


@dataclass
class LoopEnv:
    """Where the loop runs: Ray Train worker, Tune trial, or a plain process (rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint: Any = None  # the ray.train Checkpoint to resume from
    report: Any = None  # report(metrics: dict, checkpoint_dir: str | None)
    fence: Fence | None = None  # the run's lease: rank 0 writes a checkpoint, the head or metrics only under it

    def fenced(self) -> None:
        """Raise :class:`~facelift.lease.LeaseLost` if another trainer took this run over (checked by rank 0)."""
        if self.fence is not None and self.rank == 0:
            self.fence.check()


def new_run_id(head: str) -> str:
    return f"{head}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def resolve_run(cfg: TrainConfig) -> TrainConfig:
    """Fill ``run_id`` and ``run_uri`` (``<dataset root>/runs/<run_id>``)."""
    if cfg.run_id:
        run_id = cfg.run_id
    elif cfg.run_uri:  # the folder's name: it names checkpoints, completion records and artifact keys
        run_id = check_id(cfg.run_uri.rstrip("/").rsplit("/", 1)[-1], "run id (the last part of run_uri)")
    else:
        run_id = new_run_id(cfg.head)
    run_uri = cfg.run_uri or Dataset(Store(cfg.dataset_uri, cfg.endpoint_url)).root_store().child(
        f"runs/{run_id}").url()
    return cfg.model_copy(update={"run_id": run_id, "run_uri": run_uri})


def ray_storage(store: Store) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray's RunConfig: a local path, or pyarrow S3."""
    if store.is_local:
        return store.root, None
    if store.protocol != "s3":
        raise ValueError(f"Ray Train storage supports local paths and s3://, not {store.uri}")
    import pyarrow.fs as pafs

    endpoint = store.storage_options().get("client_kwargs", {}).get("endpoint_url")
    kwargs: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc or endpoint, scheme=parsed.scheme or "https")
    return store.root, pafs.S3FileSystem(**kwargs)


@torch.no_grad()
def validate(head: Head, val: dict[str, torch.Tensor], env: LoopEnv, batch_size: int) -> dict:
    """Mean validation losses and metrics over all workers' validation pairs, in fp32 whatever the training
    precision (autocast is switched off here: SSIM in bf16 reads 0.96 where fp32 reads 0.93).

    Runs eager even when the networks are compiled: no-grad, eval-mode and a smaller last batch would
    each compile another graph, for a few validation batches per epoch.
    """
    head.eval()
    sums: dict[str, float] = {"n": 0.0}
    n = val["schnell"].shape[0]
    for i in range(0, n, batch_size):
        batch = to_model({k: v[i:i + batch_size] for k, v in val.items()}, env.device)
        with torch.compiler.set_stance("force_eager"), torch.autocast(env.device.type, enabled=False):
            losses = head.step(batch)
            metrics = head.metrics(batch)
        k = batch["schnell"].shape[0]
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value) * k
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value.float().sum())
        sums["dev_change"] = sums.get("dev_change", 0.0) + float((batch["dev"] - batch["schnell"]).abs().mean((1, 2, 3))
                                                                 .float().sum())
        sums["n"] += k
    head.train()
    sums = all_reduce_sums(sums, env.world, env.device)
    total = sums.pop("n")
    if not total:
        return {}
    out = {f"val_{k}": v / total for k, v in sums.items()}
    if "val_change" in out and out["val_dev_change"] > 0:  # what the exported head does, as a share of dev's change
        out["val_change_ratio"] = out["val_change"] / out["val_dev_change"]
    return out


def run_loop(cfg: TrainConfig, env: LoopEnv) -> dict[str, Any]:
    """The training loop, identical in every worker; returns the final history (rank 0 writes outputs)."""
    torch.manual_seed(cfg.seed + env.rank)
    ds, shards = open_training_dataset(cfg.dataset_uri, cfg.endpoint_url)
    data_cfg = cfg.data_config(ds)
    counts = split_counts(ds, shards, data_cfg.splits, data_cfg.keep)
    steps_per_epoch = cfg.steps_per_epoch or max(1, counts["train"] // (cfg.batch_size * env.world))
    max_steps = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.max_steps
    head = build_head(cfg.head, cfg.flavor, **cfg.head_overrides)
    if data_cfg.size % head.size_multiple:
        raise ValueError(f"training size {data_cfg.size} is not a multiple of {head.size_multiple} "
                         f"({cfg.head} {cfg.flavor})")
    cuda = env.device.type == "cuda"
    mem = torch.channels_last if cuda else torch.contiguous_format
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed training shapes: pick the fastest conv algorithms once
    head.to(env.device, memory_format=mem).train()
    optimizers = head.configure_optimizers(max_steps, cfg.lr)
    selection = head.selection if cfg.selection == "auto" else cfg.selection
    state: dict[str, Any] = {"step": 0, "epoch": 0, "best": math.inf, "best_step": None, "bad_epochs": 0,
                             "selected": math.inf, "selected_step": None,
                             "history": {"steps": [], "epochs": [], "resumed_from": []}}
    data_state = None
    if env.checkpoint is not None:
        with checkpoint_folder(env.checkpoint) as folder:
            restored = restore_checkpoint(folder, head, optimizers, cfg.run_uri)
        state.update({k: restored.get(k, state[k]) for k in state})
        state["history"]["resumed_from"].append(state["step"])
        data_state = worker_data_state(restored.get("data"), env.rank, env.world)
        log.info("resumed %s at step %d", cfg.run_id, state["step"])
    broadcast_state(head, env.world)  # per-rank seeds: rank 0's initial (or restored) weights everywhere
    head.compile_modules(cfg.compile)  # "none": nothing
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and cfg.bf16 else \
        contextlib.nullcontext
    pairs = PairStream(ds, shards, data_cfg, cfg.batch_size, head.paired, env.rank, env.world, data_state)
    stream = pairs.background(pin_memory=cuda) if data_cfg.decode_workers else iter(pairs)
    val = load_validation(ds, shards, data_cfg, env.rank, env.world)
    sync = sync_grads(env.world)
    run_store = Store(cfg.run_uri, cfg.endpoint_url)
    restored_run = env.checkpoint is not None
    early_stopping = head.early_stopping if cfg.early_stopping is None else cfg.early_stopping
    kid = KIDSelector(cfg.inception_weights, env.device, env.world, seed=cfg.seed) if selection == "kid" else None
    t0, done_pairs, stop = time.perf_counter(), 0, False
    while state["step"] < max_steps and not stop:
        step = state["step"] + 1
        if cfg.fail_at_step == step and not restored_run and env.rank == 0:
            log.error("fault injection: worker 0 exits before step %d", step)
            time.sleep(3)  # let the controller register the last checkpoint, as a real crash later would
            os._exit(17)
        batch = to_model(next(stream), env.device, mem)
        losses = train_step(head, optimizers, batch, autocast, sync)
        state["step"], done_pairs = step, done_pairs + cfg.batch_size * env.world
        if step % cfg.log_every == 0 or step == max_steps:
            rate = done_pairs / max(time.perf_counter() - t0, 1e-9)
            row = {"step": step, **{k: float(v) for k, v in losses.items()}, "pairs_per_s": rate,
                   "lr": optimizers[0].optimizer.param_groups[0]["lr"]}
            state["history"]["steps"].append(row)
            log.info("step %d %s", step, {k: round(v, 4) for k, v in row.items() if k != "step"})
        metrics: dict[str, Any] = {}
        epoch_end = step % steps_per_epoch == 0
        validating = epoch_end or step == max_steps
        if validating or step % cfg.checkpoint_every == 0:
            average_buffers(head, env.world)  # BatchNorm statistics: one model for validation and checkpoints
        if validating:
            state["epoch"] = step // steps_per_epoch
            metrics = validate(head, val, env, cfg.batch_size)
            if kid is not None:
                metrics["val_kid"] = kid(head, val)
            current = metrics.get(f"val_{head.monitor}")
            improved = current is not None and current < state["best"] - cfg.min_delta
            if improved:
                state.update(best=current, best_step=step, bad_epochs=0)
            elif current is not None and epoch_end:
                state["bad_epochs"] += 1
            state["history"]["epochs"].append({"epoch": state["epoch"], "step": step, **metrics})
            if env.rank == 0:
                log.info(epoch_line(state["epoch"], step, metrics))
            if early_stopping and cfg.patience and state["bad_epochs"] >= cfg.patience:
                log.info("early stopping at step %d: no improvement for %d epochs", step, cfg.patience)
                stop = True
            chosen = {"val": current, "kid": metrics.get("val_kid")}.get(selection)
            if (chosen is not None and chosen < state["selected"] - cfg.min_delta) if selection != "last" else \
                    (step == max_steps or stop):
                state.update(selected=chosen if chosen is not None else current, selected_step=step)
                if env.rank == 0:
                    env.fenced()
                    head.save(run_store.child("head").url(), cfg.endpoint_url)
        if validating or step % cfg.checkpoint_every == 0:
            report = {"step": step, "epoch": state["epoch"], **{k: float(v) for k, v in losses.items()},
                      **metrics, "best_val": state["best"], "stopped_early": stop}
            data = [json.loads(b) for b in gather_bytes(json.dumps(_position(stream, pairs)).encode(), env.world,
                                                        env.device)]  # every worker's data position
            with tempfile.TemporaryDirectory() as folder:
                if env.rank == 0:
                    env.fenced()  # a checkpoint of a run taken over would be resumed by the new trainer
                    save_checkpoint(folder, head, optimizers, state, cfg.model_dump(mode="json"), data)
                env.report(report, folder if env.rank == 0 else None)
    if hasattr(stream, "close"):
        stream.close()
    pairs.close()
    if env.rank == 0:
        env.fenced()
        if state["selected_step"] is None:  # no validation pairs: export the last weights
            head.save(run_store.child("head").url(), cfg.endpoint_url)
        check = identity_check(load_head(run_store.child("head").url(), cfg.endpoint_url).to(env.device),
                               load_validation(ds, shards, data_cfg, 0, 1), env.device, cfg.batch_size)
        (log.warning if check.get("near_identity") else log.info)(identity_message(check, cfg.head))
        summary = {"run_id": cfg.run_id, "run_uri": cfg.run_uri, "head": cfg.head, "flavor": cfg.flavor,
                   "dataset_uri": cfg.dataset_uri, "step": state["step"], "max_steps": max_steps,
                   "steps_per_epoch": steps_per_epoch, "split": counts, "best_val": state["best"],
                   "best_step": state["best_step"], "stopped_early": stop, "selection": selection,
                   "selected_step": state["selected_step"] or state["step"], "identity": check,
                   **state["history"]}
        env.fenced()
        run_store.write_bytes("metrics.json", json.dumps(summary, indent=2, default=float).encode())
    return state


def _position(stream: Any, pairs: PairStream) -> dict:
    """The data position after the last batch the loop took (the background thread may be further on)."""
    return stream.state_dict() if hasattr(stream, "state_dict") else pairs.state_dict()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs in each worker)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()

    def report(metrics: dict[str, Any], folder: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(metrics, checkpoint=ckpt)

    fence = config.pop(FENCE_KEY, None)
    env = LoopEnv(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
                  ray.train.get_checkpoint(), report, Fence(**fence) if fence else None)
    run_loop(TrainConfig(**config), env)


@contextlib.contextmanager
def ray_session(address: str | None = None):
    """Use the running Ray, else connect to ``address`` / start a local one (and shut it down after)."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def check_config(cfg: TrainConfig) -> None:
    """Fail fast, before Ray starts: unknown head/flavor/field, missing or empty dataset, no train split."""
    head = build_head(cfg.head, cfg.flavor, **cfg.head_overrides)
    ds, shards = open_training_dataset(cfg.dataset_uri, cfg.endpoint_url)
    counts = split_counts(ds, shards, ds.splits(), cfg.data_config(ds).keep)
    if (head.selection if cfg.selection == "auto" else cfg.selection) == "kid":
        from facelift.models.metrics import resolve_fid_weights

        resolve_fid_weights(cfg.inception_weights)  # MetricWeightsError (FileNotFoundError): one clear line
        if min(counts.get("val", 0), cfg.max_val_pairs) < 4:
            raise ValueError(f"selection=kid needs >= 4 validation pairs, the dataset's val split has "
                             f"{counts.get('val', 0)} (max_val_pairs {cfg.max_val_pairs})")
    if cfg.run_uri:  # resuming: the run must be of the same head
        try:
            previous = json.loads(Store(cfg.run_uri, cfg.endpoint_url).read_bytes("run.json"))["config"]
        except (FileNotFoundError, KeyError, ValueError):
            return
        if (previous.get("head"), previous.get("flavor")) != (cfg.head, cfg.flavor):
            raise HeadError(f"run {cfg.run_uri} holds checkpoints of head {previous.get('head')!r} "
                            f"({previous.get('flavor')}), not {cfg.head!r} ({cfg.flavor}): use another run_id")


@dataclass
class TrainResult:
    run_id: str
    run_uri: str
    head_uri: str
    metrics: dict[str, Any]


def train(cfg: TrainConfig, max_failures: int = 0, ray_address: str | None = None) -> TrainResult:
    """Run (or resume) one training run on Ray; returns where the exported head is.

    The config is checked before Ray starts; then the running Ray is used, else one at ``ray_address`` (or a
    local one, shut down afterwards: :func:`ray_session`)."""
    cfg = resolve_run(cfg)
    check_config(cfg)
    # one writer per run: a second trainer of this run id exits naming the holder (it would resume from the
    # first one's checkpoints while they are being written)
    with Lease(Store(cfg.run_uri, cfg.endpoint_url), f"run {cfg.run_id}", wait_s=0) as lease, \
            ray_session(ray_address):
        return _fit(cfg, max_failures, lease)


def _fit(cfg: TrainConfig, max_failures: int, lease: Lease) -> TrainResult:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_store = Store(cfg.run_uri, cfg.endpoint_url)
    runs_root, run_name = cfg.run_uri.rstrip("/").rsplit("/", 1)
    storage_path, storage_fs = ray_storage(Store(runs_root, cfg.endpoint_url))
    splits = Dataset.open(cfg.dataset_uri, cfg.endpoint_url).splits().model_dump()  # evaluation checks these
    run_store.write_bytes("run.json", json.dumps({"status": "running", "config": cfg.model_dump(mode="json"),
                                                  "splits": splits}, indent=2).encode())
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={**cfg.model_dump(mode="json"), FENCE_KEY: asdict(lease.fence)},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    log.info("training %s (%s) -> %s", cfg.head, cfg.flavor, cfg.run_uri)
    try:
        trainer.fit()
    except Exception:
        if lease.lost:  # taken over: run.json is the new trainer's now
            raise
        run_store.write_bytes("run.json", json.dumps({"status": "failed", "config": cfg.model_dump(mode="json"),
                                                      "splits": splits}, indent=2).encode())
        raise
    metrics = json.loads(run_store.read_bytes("metrics.json"))
    check = metrics.get("identity") or {}
    (log.warning if check.get("near_identity") else log.info)(identity_message(check, cfg.head))
    lease.check()
    lease.fence.check()
    run_store.write_bytes("run.json", json.dumps({"status": "completed", "config": cfg.model_dump(mode="json"),
                                                  "splits": splits, "head_uri": run_store.child("head").url(),
                                                  "best_val": metrics["best_val"], "step": metrics["step"],
                                                  "selection": metrics["selection"],
                                                  "selected_step": metrics["selected_step"],
                                                  "identity": metrics["identity"]},
                                                 indent=2, default=float).encode())
    return TrainResult(cfg.run_id, run_store.url(), run_store.child("head").url(), metrics)
