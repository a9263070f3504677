"""Reports of a training run: metric tables, a loss-curve plot and a sample grid (input | output | target).

Pure functions over a run folder (``metrics.json``, ``head/``) and its dataset; PNGs are written beside
the run outputs and returned as bytes so a flow can also attach them as Prefect artifacts.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from typing import Any

import numpy as np
import torch

from facelift.models.heads import load_head
from facelift.storage import Store
from facelift.tasks.train.data import DataConfig, load_validation, open_training_dataset, to_float
from facelift.tasks.train.select import NEAR_IDENTITY_RATIO

log = logging.getLogger(__name__)


def read_metrics(run_uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    return json.loads(Store(run_uri, endpoint_url).read_bytes("metrics.json"))


def _epoch_order(key: str) -> tuple[int, str]:
    """Step first, then the head's movement (change ratio) and the discriminators' accuracies, then the rest."""
    if key in ("epoch", "step"):
        return (0, "" if key == "epoch" else "~")
    if key == "val_change_ratio":
        return (1, key)
    return (2 if "_acc_" in key else 3, key)


def epoch_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per validation, rounded for display: step, the change ratio (what the exported head changes, as a
    share of dev's change) and the discriminators' accuracies first."""
    return [{k: (round(row[k], 5) if isinstance(row[k], float) else row[k]) for k in sorted(row, key=_epoch_order)}
            for row in metrics.get("epochs", [])]


def stuck_generator(metrics: dict[str, Any], ratio: float = NEAR_IDENTITY_RATIO, accuracy: float = 0.8) -> str | None:
    """A warning when, at the last validation, a discriminator wins on generated images (accuracy > ``accuracy``)
    while the head moves its input by less than ``ratio`` of dev's change: D wins and G does not move."""
    epochs = metrics.get("epochs") or []
    if not epochs or epochs[-1].get("val_change_ratio") is None:
        return None
    last = epochs[-1]
    winning = {k[4:-9]: v for k, v in last.items() if k.startswith("val_") and k.endswith("_acc_fake") and v > accuracy}
    if last["val_change_ratio"] >= ratio or not winning:
        return None
    return (f"generator stuck at step {last['step']}: it changes its input by {last['val_change_ratio']:.1%} of "
            f"dev's change while " + ", ".join(f"{k} spots {v:.0%} of its outputs" for k, v in winning.items()))


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ["run_id", "head", "flavor", "dataset_uri", "step", "max_steps", "steps_per_epoch", "best_val",
            "best_step", "stopped_early", "resumed_from", "selection", "selected_step"]
    rows = [{"metric": k, "value": metrics.get(k)} for k in keys]
    check = metrics.get("identity") or {}
    if check.get("ratio") is not None:
        rows += [{"metric": "NEAR-IDENTITY head" if check["near_identity"] else "identity check",
                  "value": f"mean |head(x) - x| = {check['ratio']:.1%} of mean |dev - x| (flag below "
                           f"{check['threshold']:.0%})"}]
    if (stuck := stuck_generator(metrics)) is not None:
        rows.append({"metric": "STUCK generator", "value": stuck})
    rows += [{"metric": f"pairs ({k})", "value": v} for k, v in metrics.get("split", {}).items()]
    if metrics.get("steps"):
        rows.append({"metric": "pairs/s (last logged)", "value": round(metrics["steps"][-1]["pairs_per_s"], 3)})
    return rows


def loss_curve_png(metrics: dict[str, Any]) -> bytes:
    """Training losses per logged step and validation losses per epoch, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, epochs = metrics.get("steps", []), metrics.get("epochs", [])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    skip = {"step", "pairs_per_s", "lr"}
    for key in sorted({k for row in steps for k in row} - skip):
        axes[0].plot([r["step"] for r in steps if key in r], [r[key] for r in steps if key in r], label=key)
    axes[0].set(title="training", xlabel="step", yscale="log")
    for key in sorted({k for row in epochs for k in row if k.startswith("val_")}):
        axes[1].plot([r["step"] for r in epochs if key in r], [r[key] for r in epochs if key in r],
                     marker="o", label=key)
    axes[1].set(title="validation", xlabel="step")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"{metrics.get('head')} ({metrics.get('flavor')}) - {metrics.get('run_id')}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def sample_grid_png(run_uri: str, dataset_uri: str, endpoint_url: str | None = None, n: int = 4,
                    resolution: int = 512) -> bytes:
    """Rows of validation pairs: schnell input | head output | dev target."""
    from PIL import Image

    head = load_head(run_uri, endpoint_url)
    ds, shards = open_training_dataset(dataset_uri, endpoint_url)
    size = resolution - resolution % head.size_multiple
    val = load_validation(ds, shards, DataConfig(resolution=resolution, crop=size, splits=ds.splits(),
                                                 max_val_pairs=n))
    val = {k: to_float(v) for k, v in val.items()}
    if val["schnell"].shape[0] == 0:
        raise ValueError(f"no validation pairs in {dataset_uri} for a sample grid")
    with torch.no_grad():
        out = head.translate(val["schnell"])
    rows = torch.cat([torch.cat([x, z, y], dim=-1) for x, z, y in zip(val["schnell"], out, val["dev"],
                                                                       strict=True)], dim=-2)
    array = ((rows.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def write_reports(run_uri: str, dataset_uri: str, endpoint_url: str | None = None,
                  resolution: int = 512) -> dict[str, Any]:
    """Write ``loss_curve.png`` and ``samples.png`` into the run folder; return rows and image bytes."""
    store = Store(run_uri, endpoint_url)
    metrics = read_metrics(run_uri, endpoint_url)
    curve = loss_curve_png(metrics)
    store.write_bytes("loss_curve.png", curve)
    try:
        grid = sample_grid_png(run_uri, dataset_uri, endpoint_url, resolution=resolution)
        store.write_bytes("samples.png", grid)
    except ValueError as exc:
        log.warning("no sample grid: %s", exc)
        grid = None
    return {"summary": summary_rows(metrics), "epochs": epoch_rows(metrics), "loss_curve": curve,
            "samples": grid, "loss_curve_uri": store.url("loss_curve.png"),
            "samples_uri": store.url("samples.png") if grid else None}


def png_markdown(title: str, png: bytes | None, uri: str | None) -> str:
    """Markdown with the PNG inline (data URI) and where it is stored."""
    if png is None:
        return f"### {title}\n\n(not available)\n"
    data = base64.b64encode(png).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\nStored at `{uri}`\n"


SWEEP_COLUMNS = ["lambda_cyc", "lr", "l_total", "ssim", "l1", "kid", "best_step", "steps", "exported", "near_identity",
                 "selected", "error"]


def sweep_rows(table: Any) -> list[dict[str, Any]]:
    """The sweep table's rows (``SWEEP_COLUMNS`` first, NaN as None); ``selected`` names the criterion on the
    chosen row."""
    columns = [c for c in SWEEP_COLUMNS if c in table.columns] + [c for c in table.columns if c not in SWEEP_COLUMNS]
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in table[columns].to_dict("records")]


def sweep_caption(head: str, flavor: str, selected_by: str, exported_by: str | None = None) -> str:
    """What the sweep table's columns are, which weights each trial exported and how the best row was chosen."""
    from facelift.tasks.train.select import SELECTIONS
    from facelift.tasks.train.tune import SELECT

    exported = f" Each trial's head: its {SELECTIONS[exported_by]}." if exported_by in SELECTIONS else ""

    return (f"{head} ({flavor}), per configuration, at each trial's exported head: l_total = the paper's "
            f"GAN(G, D_dev) + GAN(F, D_schnell) + lambda_cyc * cycle (it grows with lambda_cyc, so it is not "
            f"compared across rows), ssim = fp32 SSIM(x, F(G(x))) (U-Net: SSIM(z, dev)), l1 = L1(G(x), dev) on "
            f"the validation pairs, kid = KID(G(x), dev) when trained with selection=kid; near_identity: the "
            f"head changes its input by under a tenth of what dev does.{exported} "
            f"Best configuration selected by {SELECT[selected_by][2]}.")


def best_markdown(best: dict[str, Any]) -> str:
    def num(key: str) -> str:
        value = best.get(key)
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    return (f"### Best configuration ({best.get('selected', best['selected_by'])})\n\n"
            f"lambda_cyc = {best['lambda_cyc']}, lr = {best['lr']:g}: L1 = {num('l1')}, SSIM = {num('ssim')}, "
            f"L_total = {num('l_total')}\n\nHead: `{best['head_uri']}`\n")
