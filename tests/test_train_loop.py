"""The training loop's GPU path, checked on CPU: collectives on the loop's device, the sweep's device, fp32
validation under bf16 autocast, exact resume, BatchNorm sync, stopping rules, sweep selection.

The loop runs in-process (``run_loop`` with a ``LoopEnv``) on a local dataset; no Ray, no S3.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from facelift.dataset import Dataset
from facelift.models.heads import HEADS, build_head
from facelift.storage import Store
from facelift.tasks.train import loop as train_module
from facelift.tasks.train.loop import LoopEnv, TrainConfig, resolve_run, run_loop, validate
from facelift.testing import free_port, make_synthetic_dataset

SIZE = 32
TEST_OVERRIDES = {"unet_cbam": {"lpips_pnet_rand": True}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: ~10x slower with OpenMP's threads (conftest)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = Store(str(tmp_path_factory.mktemp("loop-data")))
    return make_synthetic_dataset(root, "loop", n_pairs=24, size=SIZE, shard_size=8, seed=3)


def loop_config(ds: Dataset, head: str, run_uri: Path, **kw: Any) -> TrainConfig:
    values = dict(dataset_uri=ds.uri, head=head, flavor="debug", head_overrides=TEST_OVERRIDES.get(head, {}),
                  run_uri=str(run_uri), batch_size=2, resolution=SIZE, max_val_pairs=4,
                  shuffle_buffer=4, log_every=1, steps_per_epoch=2, checkpoint_every=2, max_steps=4)
    return resolve_run(TrainConfig(**{**values, **kw}))


def folder_checkpoint(folder: Path):
    """What Ray hands the loop to resume from: a Checkpoint of a local folder."""
    from ray.train import Checkpoint

    return Checkpoint.from_directory(str(folder))


# -- 1. every tensor handed to torch.distributed lives on the loop's device ----------------------------------
TENSOR_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                      "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single",
                      "send", "recv", "isend", "irecv", "all_reduce_coalesced")
# their device is implicit (NCCL needs torch.cuda.set_device first): the loop must not use them
OBJECT_COLLECTIVES = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list",
                      "batch_isend_irecv")
FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "rand", "randn",
             "randint")


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


class FakeCollectives:
    """``torch.distributed`` for ``world`` identical workers in one process (a sum is ``world`` times the local
    value), which rejects any tensor that is not on ``device``, as NCCL rejects CPU tensors."""

    def __init__(self, device: torch.device, world: int) -> None:
        self.device, self.world = device, world
        self.calls: list[str] = []

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        tensors = [t for v in (*args, *kwargs.values()) for t in _tensors(v)]
        assert tensors, f"{name} called without a tensor"
        for t in tensors:
            assert t.device == self.device, f"dist.{name} got a tensor on {t.device}; the loop runs on {self.device}"
        self.calls.append(name)
        if name == "all_reduce":
            op = kwargs.get("op", args[1] if len(args) > 1 else dist.ReduceOp.SUM)
            if op == dist.ReduceOp.SUM:
                args[0].mul_(self.world)
            elif op != dist.ReduceOp.AVG:
                raise NotImplementedError(f"fake all_reduce has no {op}")
        elif name == "all_gather":
            for out in args[0]:
                out.copy_(args[1])
        elif name == "all_gather_into_tensor":
            args[0].copy_(torch.cat([args[1]] * self.world))
        elif name != "broadcast":
            raise NotImplementedError(f"the fake collectives have no semantics for dist.{name}: add them")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in TENSOR_COLLECTIVES:
            monkeypatch.setattr(dist, name, lambda *a, _name=name, **kw: self._call(_name, *a, **kw))
        for name in OBJECT_COLLECTIVES:
            def reject(*a: Any, _name: str = name, **kw: Any) -> None:
                raise AssertionError(f"dist.{_name} hides which device it uses: send tensors on the loop's device")
            monkeypatch.setattr(dist, name, reject)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: self.world)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)


class DefaultDeviceElsewhere:
    """``torch`` as the loop's modules see it, except that a tensor made without ``device=`` lands on ``meta``:
    the default device then differs from the loop's device, as it does for a loop on a GPU."""

    def __getattr__(self, name: str) -> Any:
        attr = getattr(torch, name)
        if name not in FACTORIES:
            return attr

        def make(*args: Any, **kwargs: Any) -> torch.Tensor:
            if kwargs.get("device") is None:
                kwargs["device"] = "meta"
            return attr(*args, **kwargs)
        return make


def collective_modules() -> list[str]:
    """The task modules that talk to ``torch.distributed`` (found by their source, so new ones are checked)."""
    import facelift.tasks

    folder = Path(facelift.tasks.__path__[0])
    return [".".join(("facelift.tasks", *p.relative_to(folder).with_suffix("").parts))  # one package per stage
            for p in sorted(folder.rglob("*.py")) if "torch.distributed" in p.read_text()]


@pytest.mark.parametrize("head", ["unet_cbam", "cyclegan"])
def test_collectives_get_tensors_on_the_loops_device(dataset: Dataset, head: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    """Rank 0 of 2 with fake collectives: training, validation, checkpoints and a resume hand torch.distributed
    only tensors on the loop's device (a CPU tensor made without ``device=`` crashes NCCL at the first use)."""
    import importlib

    fake = FakeCollectives(torch.device("cpu"), world=2)
    fake.install(monkeypatch)
    modules = collective_modules()
    assert modules, "no task module uses torch.distributed?"
    for name in modules:
        monkeypatch.setattr(importlib.import_module(name), "torch", DefaultDeviceElsewhere())
    saved = tmp_path / "saved"

    def report(metrics: dict, folder: str | None) -> None:
        if folder and metrics["step"] == 2:
            shutil.copytree(folder, saved)

    cfg = loop_config(dataset, head, tmp_path / "run")
    env = LoopEnv(rank=0, world=2, device=torch.device("cpu"), report=report)
    assert run_loop(cfg.model_copy(update={"max_steps": 2}), env)["step"] == 2
    first = list(fake.calls)
    assert {"all_reduce", "broadcast"} <= set(first), first  # gradients and sums; the initial weights
    env.checkpoint = folder_checkpoint(saved)
    assert run_loop(cfg, env)["step"] == 4
    assert len(fake.calls) > len(first)


# -- 2. a sweep trial that holds a GPU trains on it ------------------------------------------------------------
def test_trial_device_follows_the_gpu_ray_assigned():
    from facelift.tasks.train.tune import trial_device

    assert trial_device([], cuda_available=True) == torch.device("cpu")
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs, so its first GPU is cuda:0 in the trial's process
    assert trial_device([3], cuda_available=True) == torch.device("cuda", 0)
    assert trial_device(["5", "6"], cuda_available=True) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        trial_device([0], cuda_available=False)


def test_sweep_trial_builds_its_loop_on_the_assigned_gpu(dataset: Dataset, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    import ray
    import ray.tune

    import facelift.tasks.train.tune as sweep_module

    seen: dict[str, Any] = {}
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [2])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(sweep_module, "run_loop", lambda cfg, env: seen.update(cfg=cfg, env=env))
    base = loop_config(dataset, "cyclegan", tmp_path / "sweep")
    sweep_module._trial({"base": base.model_dump(mode="json"), "sweep_uri": str(tmp_path / "sweep"),
                         "lambda_cyc": 2.0, "lr": 1e-4})
    assert seen["env"].device == torch.device("cuda", 0)
    assert seen["cfg"].head_overrides["lambda_cyc"] == 2.0 and seen["cfg"].lr == 1e-4


# -- 3. validation losses and metrics are fp32 whatever the training precision ---------------------------------
def _val_batch(n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    base = torch.rand(n, 3, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    schnell = (smooth * 2 - 1).clamp(-1, 1)
    return {"schnell": schnell, "dev": (0.8 * schnell + 0.1).clamp(-1, 1)}


@pytest.mark.parametrize("head", list(HEADS))
def test_validation_is_fp32_under_bf16_autocast(head: str):
    net = build_head(head, "debug", **TEST_OVERRIDES.get(head, {}))
    with torch.no_grad():  # move the U-Net off its identity start, so its output is not its input
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    val = _val_batch()
    ref = validate(net, val, LoopEnv(), 2)
    assert {"val_loss", "val_ssim"} <= set(ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = validate(net, val, LoopEnv(), 2)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_ssim_is_fp32_under_bf16_autocast():
    from facelift.models.losses import ssim

    val = _val_batch()
    ref = ssim(val["schnell"], val["dev"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim(val["schnell"], val["dev"])
    assert got.dtype == torch.float32 and torch.allclose(got, ref, rtol=1e-6, atol=1e-7)


# -- 5. resume continues the data order; BatchNorm buffers agree across workers --------------------------------
def _record_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    seen: list[tuple[float, float]] = []
    step = train_module.train_step

    def recording(head, optimizers, batch, *args, **kwargs):
        seen.append((round(float(batch["schnell"].double().sum()), 4), round(float(batch["dev"].double().sum()), 4)))
        return step(head, optimizers, batch, *args, **kwargs)
    monkeypatch.setattr(train_module, "train_step", recording)
    return seen


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("head", ["unet_cbam", "cyclegan"])
def test_resumed_run_sees_the_batches_of_an_uninterrupted_one(dataset: Dataset, head: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """Interrupted after the step-4 checkpoint and resumed: steps 5-12 see the batches an uninterrupted run
    sees (12 steps of 2 pairs cross the training pairs' shuffle passes), not the first batches again."""
    seen = _record_batches(monkeypatch)
    cfg = loop_config(dataset, head, tmp_path / "full", max_steps=12, steps_per_epoch=3, checkpoint_every=2)
    run_loop(cfg, LoopEnv(report=lambda m, f: None))
    full = list(seen)
    assert len(full) == 12 and len(set(full)) > 6
    seen.clear()
    saved = tmp_path / "saved"

    def report(metrics: dict, folder: str | None) -> None:
        if metrics["step"] == 4:
            shutil.copytree(folder, saved)
            raise Interrupted

    cfg = cfg.model_copy(update={"run_uri": str(tmp_path / "interrupted")})
    with pytest.raises(Interrupted):
        run_loop(cfg, LoopEnv(report=report))
    assert seen == full[:4]
    seen.clear()
    state = run_loop(cfg, LoopEnv(checkpoint=folder_checkpoint(saved), report=lambda m, f: None))
    assert state["step"] == 12 and state["history"]["resumed_from"] == [4]
    assert seen == full[4:]


def _bn_worker(rank: int, world: int, port: int, cfg_json: dict, out: str) -> None:
    """One gloo worker of a 2-process U-Net run; saves its BatchNorm buffers as validation saw them."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    validate_fn = train_module.validate
    seen: list[dict[str, torch.Tensor]] = []

    def spy(head, *args, **kwargs):
        seen.append({k: v.clone() for k, v in head.named_buffers()})
        return validate_fn(head, *args, **kwargs)
    train_module.validate = spy
    try:
        run_loop(TrainConfig(**cfg_json), LoopEnv(rank=rank, world=world, report=lambda m, f: None))
    finally:
        dist.destroy_process_group()
    torch.save(seen, os.path.join(out, f"rank{rank}.pt"))


def test_batchnorm_buffers_agree_across_two_gloo_workers(dataset: Dataset, tmp_path: Path):
    """Two real gloo workers train the U-Net on different shards: at every validation (and so in every
    checkpoint) their BatchNorm running statistics are the same (averaged), not each worker's own."""
    import torch.multiprocessing as mp

    cfg = loop_config(dataset, "unet_cbam", tmp_path / "run", max_steps=4, steps_per_epoch=2)
    mp.spawn(_bn_worker, args=(2, free_port(), cfg.model_dump(mode="json"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # validations at steps 2 and 4
    for at0, at1 in zip(*ranks, strict=True):
        stats = [k for k in at0 if k.endswith(("running_mean", "running_var"))]
        assert stats and all(torch.allclose(at0[k], at1[k], rtol=1e-5, atol=1e-7) for k in stats)
        assert any(float(at0[k].abs().sum()) > 0 for k in stats if k.endswith("running_mean"))


# -- 7. the CycleGANs train their fixed schedule; the U-Net stops early (the paper's settings) -----------------
@pytest.mark.parametrize(("head", "early_stopping", "steps"), [
    ("cyclegan", None, 6), ("esa_cyclegan", None, 6), ("unet_cbam", None, 2), ("cyclegan", True, 2),
    ("unet_cbam", False, 6)])
def test_stopping_rule_per_head(dataset: Dataset, head: str, early_stopping: bool | None, steps: int,
                                tmp_path: Path):
    """patience 1 and a min_delta nothing meets: early stopping ends the run after the second epoch; a fixed
    schedule runs every step (and so the whole linear LR decay)."""
    cfg = loop_config(dataset, head, tmp_path / "run", max_steps=6, steps_per_epoch=1, patience=1, min_delta=1e9,
                      early_stopping=early_stopping)
    reports: list[dict] = []
    state = run_loop(cfg, LoopEnv(report=lambda m, f: reports.append(m)))
    assert state["step"] == steps
    assert reports[-1]["stopped_early"] is (steps < 6)


# -- 6. the sweep reports the paper's L_total and selects by a lambda-independent criterion --------------------
def _trial_history(lambda_cyc: float, rows: list[tuple[int, float, float, float, float]]):
    """Tune's report rows of one trial: (step, cycle, identity, ssim, l1), GAN terms fixed at 0.3 + 0.2."""
    import pandas as pd

    records = []
    for step, cyc, idt, s, l1 in rows:
        total = 0.3 + 0.2 + lambda_cyc * cyc
        records.append({"step": step, "val_gan_G": 0.3, "val_gan_F": 0.2, "val_cycle": cyc, "val_identity": idt,
                        "val_total": total, "val_loss": total + 0.5 * lambda_cyc * idt, "val_ssim": s,
                        "val_l1": l1})
        records.append({"step": step + 1, "loss": 1.0})  # a checkpoint report between validations
    return pd.DataFrame(records)


def test_sweep_selects_by_a_lambda_independent_criterion():
    import pandas as pd

    from facelift.tasks.train.report import sweep_rows
    from facelift.tasks.train.tune import mark_best, summarize_trial

    histories = {10.0: _trial_history(10.0, [(2, 0.10, 0.10, 0.70, 0.30), (4, 0.08, 0.09, 0.90, 0.20)]),
                 2.0: _trial_history(2.0, [(2, 0.12, 0.11, 0.80, 0.25), (4, 0.13, 0.12, 0.75, 0.28)])}
    rows = [{"lambda_cyc": lam, "lr": 1e-4, **summarize_trial(h, "l1"), "trial": f"cyc{lam:g}"}
            for lam, h in histories.items()]
    table = pd.DataFrame(rows)
    # each row describes the trial's exported head (its best validation by the monitor, val_l1)
    assert table["best_step"].tolist() == [4, 2] and table["steps"].tolist() == [5, 5]
    assert table["l_total"].tolist() == pytest.approx([0.5 + 10 * 0.08, 0.5 + 2 * 0.12])  # no identity term
    assert table["ssim"].tolist() == [0.90, 0.80] and table["l1"].tolist() == [0.20, 0.25]
    # the validation loss grows with lambda_cyc: it would have picked lambda 2, the worse head by L1 and SSIM
    by_loss = [h.dropna(subset=["val_l1"])["val_loss"].min() for h in histories.values()]
    assert by_loss[1] < by_loss[0]
    for select in ("l1", "ssim"):
        best = mark_best(table, select)
        assert best["lambda_cyc"] == 10.0
        shown = sweep_rows(table)
        assert shown[0]["selected"].startswith("best by validation") and select.upper() in shown[0]["selected"].upper()
        assert shown[1]["selected"] == ""
    with pytest.raises(ValueError, match="lambda-independent"):
        mark_best(table, "loss")


# -- 8. which weights head/ holds: U-Net its best val loss, CycleGANs the last, or the lowest val KID -----------
def _saved_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "head" / "model.safetensors"))


@pytest.mark.parametrize(("head", "selection", "expected"), [
    ("cyclegan", "auto", "last"), ("esa_cyclegan", "auto", "last"), ("unet_cbam", "auto", "val"),
    ("cyclegan", "val", "val")])
def test_selection_per_head(dataset: Dataset, head: str, selection: str, expected: str, tmp_path: Path):
    """``auto`` is the head's own rule; ``last`` exports the final weights (the same as the last checkpoint's),
    ``val`` the step with the lowest val loss of the head's monitor; metrics.json records both and the check."""
    from facelift.tasks.train.checkpoint import restore_checkpoint

    cfg = loop_config(dataset, head, tmp_path / "run", max_steps=6, selection=selection, checkpoint_every=6)
    folders: list[Path] = []

    def report(metrics: dict, folder: str | None) -> None:
        if folder:
            dst = tmp_path / f"ckpt{metrics['step']}"
            shutil.copytree(folder, dst)
            folders.append(dst)

    run_loop(cfg, LoopEnv(report=report))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["selection"] == expected
    epochs = metrics["epochs"]
    monitor = f"val_{HEADS[head].monitor}"
    want = epochs[-1]["step"] if expected == "last" else min(epochs, key=lambda e: e[monitor])["step"]
    assert metrics["selected_step"] == want
    assert set(metrics["identity"]) >= {"change_l1", "dev_l1", "ratio", "near_identity"}
    chosen = build_head(head, "debug", **TEST_OVERRIDES.get(head, {}))
    restore_checkpoint(str(folders[[int(f.name[4:]) for f in folders].index(want)]), chosen, [], cfg.run_uri)
    saved = _saved_weights(tmp_path / "run")
    assert all(torch.equal(saved[k], v) for k, v in chosen.state_dict().items())


def test_kid_selection_exports_the_lowest_val_kid(dataset: Dataset, tmp_path: Path):
    """selection=kid: KID(G(val schnell), val dev) on the FID Inception features (random weights here) each
    validation, ``val_kid`` in the history, head/ from the lowest; a missing weights file fails before training."""
    from facelift.models.metrics import MetricWeightsError
    from facelift.models.tiny_metrics import ensure_random_fid_weights
    from facelift.tasks.train.loop import check_config

    weights = str(ensure_random_fid_weights(tmp_path / "cache"))
    with pytest.raises(ValueError, match="selection=kid needs >= 4 validation pairs"):  # this one has 3
        check_config(loop_config(dataset, "cyclegan", tmp_path / "r", selection="kid", inception_weights=weights))
    wide = make_synthetic_dataset(Store(str(tmp_path / "data")), "kid", n_pairs=16, size=SIZE, shard_size=8, seed=4,
                                  splits={"val": 0.5, "test": 0.0})
    cfg = loop_config(wide, "cyclegan", tmp_path / "run", max_steps=6, selection="kid", inception_weights=weights,
                      max_val_pairs=6)
    check_config(cfg)
    run_loop(cfg, LoopEnv(report=lambda m, f: None))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    kids = [e["val_kid"] for e in metrics["epochs"]]
    assert len(kids) == 3 and all(isinstance(k, float) for k in kids) and len(set(kids)) == 3
    assert metrics["selected_step"] == metrics["epochs"][kids.index(min(kids))]["step"]
    with pytest.raises(MetricWeightsError, match="FID Inception-v3 weights not found"):
        check_config(cfg.model_copy(update={"inception_weights": str(tmp_path / "nope.pth")}))
