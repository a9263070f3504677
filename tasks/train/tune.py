"""Ray Tune sweep over lambda_cyc x lr (the paper's Tables 2-3 grid), one single-process trial per point.

Each trial runs the same loop as ``tasks.train.loop`` (``run_loop``) and writes its outputs (``head/``,
``metrics.json``) under ``<root>/runs/<sweep_id>/trials/<trial>/``; Tune's own state goes to
``<root>/runs/<sweep_id>/tune/``. The table is written to ``sweep.json`` and ``sweep.csv`` beside them: per
configuration, the validation values of the trial's exported head (its best by the head's ``monitor``): the
paper's L_total = GAN(G, D_dev) + GAN(F, D_schnell) + lambda_cyc * cycle, fp32 SSIM(x, F(G(x))) (the U-Net:
SSIM(z, y)) and L1(G(x), y) on the paired validation pairs. The best configuration is picked by ``select``,
a criterion that does not depend on lambda_cyc (L_total does, so it only describes a trial); the ``selected``
column names it on the chosen row.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from facelift.dataset import Dataset
from facelift.errors import first_line
from facelift.models.heads import head_class
from facelift.storage import Store
from facelift.tasks.train.loop import (
    LoopEnv,
    TrainConfig,
    check_config,
    new_run_id,
    ray_storage,
    resolve_run,
    run_loop,
)

log = logging.getLogger(__name__)
PAPER_LAMBDA_CYC = (10.0, 5.0, 2.0)
PAPER_LR = (1e-4, 2e-4, 3e-4)
# select -> (table column, better, what it is); none of them depends on lambda_cyc
SELECT: dict[str, tuple[str, str, str]] = {
    "l1": ("l1", "min", "validation L1(G(x), dev), lowest"),
    "ssim": ("ssim", "max", "validation SSIM(x, F(G(x))) (U-Net: SSIM(z, dev)), highest"),
    "kid": ("kid", "min", "validation KID(G(x), dev) on the FID Inception features, lowest"),
}


def trial_device(gpu_ids: list, cuda_available: bool) -> torch.device:
    """The device of a Tune trial: its GPU when Ray assigned one (``ray.get_gpu_ids()``), else the CPU.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the trial's GPUs, so the first of them is ``cuda:0`` in the trial.
    """
    if not gpu_ids:
        return torch.device("cpu")
    if not cuda_available:
        raise RuntimeError(f"Ray assigned GPU(s) {gpu_ids} to this trial but CUDA is not available to torch "
                           f"(CPU-only torch, or a broken driver): the GPU would sit idle")
    return torch.device("cuda", 0)


def trial_name(lambda_cyc: float | None, lr: float) -> str:
    return (f"cyc{lambda_cyc:g}-" if lambda_cyc is not None else "") + f"lr{lr:g}"


def _trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one grid point, reported through ``ray.tune.report``."""
    import ray
    import ray.tune

    base = TrainConfig(**config["base"])
    overrides = dict(base.head_overrides)
    if config.get("lambda_cyc") is not None:
        overrides["lambda_cyc"] = config["lambda_cyc"]
    name = trial_name(config.get("lambda_cyc"), config["lr"])
    cfg = base.model_copy(update={"lr": config["lr"], "head_overrides": overrides,
                                  "run_id": f"{base.run_id}-{name}",
                                  "run_uri": f"{config['sweep_uri']}/trials/{name}"})

    def report(metrics: dict[str, Any], folder: str | None) -> None:
        ckpt = ray.tune.Checkpoint.from_directory(folder) if folder else None
        ray.tune.report(metrics, checkpoint=ckpt)

    device = trial_device(ray.get_gpu_ids(), torch.cuda.is_available())
    run_loop(cfg, LoopEnv(device=device, checkpoint=ray.tune.get_checkpoint(), report=report))


@dataclass
class SweepResult:
    sweep_id: str
    sweep_uri: str
    table: pd.DataFrame
    best: dict[str, Any]


def summarize_trial(history: pd.DataFrame | None, monitor: str = "loss", selection: str = "val") -> dict[str, float]:
    """A trial's row: the validation values of its exported head (NaN when never validated), the validation
    chosen by the run's ``selection`` (tasks/train/select.py): ``val`` the lowest ``val_<monitor>``, ``kid`` the
    lowest ``val_kid``, ``last`` the last one. ``l_total``: ``val_total`` (the paper's L_total) where the head
    reports it, else its ``val_loss``."""
    empty = {"l_total": math.nan, "ssim": math.nan, "l1": math.nan, "kid": math.nan, "best_step": math.nan,
             "steps": math.nan}
    key = {"val": f"val_{monitor}", "kid": "val_kid", "last": f"val_{monitor}"}[selection]
    if history is None or history.empty or key not in history:
        return empty
    rows = history.dropna(subset=[key])
    if rows.empty:
        return empty
    best = rows.loc[rows["step"].idxmax()] if selection == "last" else rows.loc[rows[key].idxmin()]
    total = best.get("val_total", math.nan)
    return {"l_total": float(best["val_loss"] if pd.isna(total) else total),
            "ssim": float(best.get("val_ssim", math.nan)), "l1": float(best.get("val_l1", math.nan)),
            "kid": float(best.get("val_kid", math.nan)), "best_step": float(best["step"]),
            "steps": float(history["step"].max())}


def trial_identity(sweep_uri: str, trial: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """The trial's identity check (``metrics.json``), {} when the trial wrote none."""
    try:
        return json.loads(Store(f"{sweep_uri}/trials/{trial}", endpoint_url).read_bytes("metrics.json")).get(
            "identity") or {}
    except (FileNotFoundError, ValueError):
        return {}


def check_select(select: str) -> None:
    if select not in SELECT:
        raise ValueError(f"select must be one of {', '.join(SELECT)} (lambda-independent), got {select!r}")


def mark_best(table: pd.DataFrame, select: str) -> pd.Series:
    """The best configuration's row by ``select`` (see ``SELECT``), among rows that have a value; the table's
    ``selected`` column names the criterion on that row (and is empty on the others)."""
    check_select(select)
    column, better, what = SELECT[select]
    ok = table.dropna(subset=[column])
    if ok.empty:
        raise ValueError(f"no configuration has a {column} value to select by")
    label = ok[column].idxmin() if better == "min" else ok[column].idxmax()
    table["selected"] = ""
    table.loc[label, "selected"] = f"best by {what}"
    return table.loc[label]


def sweep(base: TrainConfig, lambda_cycs: tuple[float, ...] = PAPER_LAMBDA_CYC,
          lrs: tuple[float, ...] = PAPER_LR, select: str = "l1", cpus_per_trial: float = 1.0,
          gpus_per_trial: float = 0.0, sweep_id: str | None = None) -> SweepResult:
    """Grid-search lambda_cyc x lr with Ray Tune; ``select``: ``l1`` (min), ``ssim`` (max) or ``kid`` (min, needs
    ``base.selection == "kid"``), see ``SELECT``. Each trial exports its head by ``base.selection``."""
    import ray.tune as tune

    check_select(select)  # before any trial runs
    Dataset.open(base.dataset_uri, base.endpoint_url).require_real("a sweep")
    selection = head_class(base.head).selection if base.selection == "auto" else base.selection
    if select == "kid" and selection != "kid":
        raise ValueError("select=kid compares the trials' validation KID: train them with selection=kid "
                         "(and inception_weights)")
    if not lrs:
        raise ValueError("the sweep needs at least one learning rate")
    cls = head_class(base.head)
    has_lambda = "lambda_cyc" in {f for f in cls.config_cls.__dataclass_fields__}
    if not has_lambda and lambda_cycs:
        log.warning("head %s has no lambda_cyc: sweeping the learning rate only", base.head)
    grid_lambda = list(lambda_cycs) if has_lambda and lambda_cycs else [None]
    sweep_id = sweep_id or base.run_id or new_run_id(f"sweep-{base.head}")
    base = resolve_run(base.model_copy(update={"run_id": sweep_id, "run_uri": base.run_uri}))
    check_config(base)
    sweep_store = Store(base.run_uri, base.endpoint_url)
    storage_path, storage_fs = ray_storage(sweep_store)
    resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(_trial, resources),
        param_space={"base": base.model_dump(mode="json"), "sweep_uri": sweep_store.url(),
                     "lambda_cyc": tune.grid_search(grid_lambda), "lr": tune.grid_search(list(lrs))},
        run_config=tune.RunConfig(name="tune", storage_path=storage_path, storage_filesystem=storage_fs),
    )
    log.info("sweep %s: %d configurations of %s", sweep_id, len(grid_lambda) * len(lrs), base.head)
    grid = tuner.fit()
    rows = []
    for result in grid:
        cfg = result.config or {}
        row = {"lambda_cyc": cfg.get("lambda_cyc"), "lr": cfg.get("lr"),
               **summarize_trial(result.metrics_dataframe, cls.monitor, selection),
               "error": None if result.error is None else first_line(result.error, 200) or type(result.error).__name__}
        row["trial"] = trial_name(row["lambda_cyc"], row["lr"])
        row["exported"] = selection
        row["near_identity"] = trial_identity(sweep_store.url(), row["trial"], base.endpoint_url).get("near_identity")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["lambda_cyc", "lr"], ascending=[False, True], na_position="last")
    if table[SELECT[select][0]].isna().all():
        raise RuntimeError(f"every trial of sweep {sweep_id} failed: {table['error'].tolist()}")
    best = mark_best(table, select)
    best_dict = {**best.to_dict(), "head_uri": f"{sweep_store.url()}/trials/{best['trial']}/head",
                 "selected_by": select, "exported_by": selection}
    sweep_store.write_bytes("sweep.csv", table.to_csv(index=False).encode())
    sweep_store.write_bytes("sweep.json", json.dumps(
        {"sweep_id": sweep_id, "head": base.head, "flavor": base.flavor, "dataset_uri": base.dataset_uri,
         "rows": table.to_dict("records"), "best": best_dict}, indent=2, default=str).encode())
    return SweepResult(sweep_id, sweep_store.url(), table.reset_index(drop=True), best_dict)
