"""``facelift train`` and ``facelift sweep`` (registered on the main typer app in ``facelift/cli/main.py``)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from facelift.cli.common import fail, setup_logging
from facelift.ids import check_id

log = logging.getLogger("facelift")


def _errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from facelift.dataset import DatasetError
    from facelift.models.heads import HeadError
    from facelift.storage import StorageError
    from facelift.tasks.curate import CurationError

    return (DatasetError, StorageError, HeadError, ValidationError, FileNotFoundError, ValueError, CurationError)


def _overrides(items: list[str] | None) -> dict:
    from facelift.config import parse_set_options

    return parse_set_options(items or [])


def _dataset_at_the_door(uri: str, endpoint_url: str | None) -> str:
    """The dataset's absolute URI (Ray Train workers run in another directory), checked to exist and to be
    trainable before Prefect and Ray start."""
    from facelift.dataset import Dataset
    from facelift.storage import absolute_uri

    uri = absolute_uri(uri)
    Dataset.open(uri, endpoint_url).require_real("training")
    return uri


def _curation_at_the_door(uri: str, endpoint_url: str | None, curation: str | None) -> str | None:
    """``--curation`` as an id (``latest`` resolved), checked to exist before Prefect and Ray start."""
    from facelift.dataset import Dataset
    from facelift.tasks.curate import resolve_curation

    return resolve_curation(Dataset.open(uri, endpoint_url), curation)


Head = Annotated[str, typer.Option(help="unet_cbam, cyclegan or esa_cyclegan")]
Flavor = Annotated[str, typer.Option(help="full, or debug (tiny, CPU-fast)")]
Endpoint = Annotated[str | None, typer.Option(help="S3 endpoint for s3:// URIs")]
Selection = Annotated[str, typer.Option(help="which weights head/ holds: auto (the head's default: U-Net val, "
                                           "CycleGANs last), val (lowest validation loss), last (end of the "
                                           "schedule) or kid (lowest val KID; needs --inception-weights)")]
Inception = Annotated[str | None, typer.Option(help="FID Inception weights for --selection kid")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="head config field=value (repeatable), "
                                                                "e.g. --set lambda_cyc=2")]


def train(
    dataset_uri: Annotated[str, typer.Argument(help="dataset URI (.../datasets/<id>)")],
    head: Head = "esa_cyclegan",
    flavor: Flavor = "full",
    max_steps: Annotated[int, typer.Option(help="training steps (ignored with --epochs)")] = 1000,
    epochs: Annotated[int | None, typer.Option(help="train this many epochs")] = None,
    batch_size: Annotated[int, typer.Option(help="pairs per worker per step")] = 4,
    lr: Annotated[float | None, typer.Option(help="learning rate (default: the head's)")] = None,
    num_workers: Annotated[int, typer.Option(help="Ray Train workers (DDP)")] = 1,
    gpu: Annotated[bool, typer.Option("--gpu/--cpu", help="one GPU per worker")] = False,
    resolution: Annotated[int, typer.Option(help="train at this square size")] = 512,
    crop: Annotated[int | None, typer.Option(help="random crop size (default: no crop)")] = None,
    patience: Annotated[int | None, typer.Option(help="early-stopping patience in epochs")] = 10,
    early_stopping: Annotated[bool | None, typer.Option(
        "--early-stopping/--fixed-schedule", help="default: the head's (U-Net early stopping, CycleGANs the "
                                                  "fixed schedule with its linear lr decay)")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 500,
    compile: Annotated[bool, typer.Option(help="torch.compile the networks (the default mode, regional)")] = False,
    compile_mode: Annotated[str | None, typer.Option(help="none | regional | full (overrides --compile; "
                                                          "see docs/train_heads.md)")] = None,
    run_id: Annotated[str | None, typer.Option(help="run id; an existing one resumes")] = None,
    endpoint_url: Endpoint = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local)")] = None,
    selection: Selection = "auto",
    inception_weights: Inception = None,
    set_: SetOpt = None,
    curation: Annotated[str | None, typer.Option(help="train on a curation's kept pairs: its id, or latest "
                                                      "(facelift curate); default: every pair")] = None,
    verbose: bool = False,
) -> None:
    """Train (or resume) a head with Ray Train; prints the run URI (load it with models.heads.load_head)."""
    from facelift.flows.train_head import train_head
    from facelift.models.heads import head_class

    setup_logging(verbose)
    try:
        overrides = _overrides(set_)
        head_class(head).make_config(flavor, **overrides)  # head, flavor and --set: before Prefect and Ray
        if run_id:
            check_id(run_id, "run id")
        dataset_uri = _dataset_at_the_door(dataset_uri, endpoint_url)
        curation = _curation_at_the_door(dataset_uri, endpoint_url, curation)
        out = train_head(dataset_uri=dataset_uri, head=head, flavor=flavor, max_steps=max_steps, epochs=epochs,
                         batch_size=batch_size, lr=lr, num_workers=num_workers, use_gpu=gpu,
                         resolution=resolution, crop=crop, patience=patience, early_stopping=early_stopping,
                         checkpoint_every=checkpoint_every,
                         compile=compile_mode or compile, endpoint_url=endpoint_url, run_id=run_id,
                         ray_address=ray_address, selection=selection, inception_weights=inception_weights,
                         head_overrides=overrides, curation=curation)
    except _errors() as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(out, indent=2))
    typer.echo(out["run_uri"])


def sweep(
    dataset_uri: Annotated[str, typer.Argument(help="dataset URI (.../datasets/<id>)")],
    head: Head = "esa_cyclegan",
    flavor: Flavor = "full",
    lambda_cyc: Annotated[list[float] | None, typer.Option("--lambda-cyc", help="grid values (repeatable; "
                                                                             "default 10, 5, 2)")] = None,
    lr: Annotated[list[float] | None, typer.Option("--lr", help="grid values (repeatable; default 1e-4, "
                                                               "2e-4, 3e-4)")] = None,
    select: Annotated[str, typer.Option(help="pick the best by l1 (validation L1(G(x), dev), min), ssim "
                                             "(SSIM(x, F(G(x))), max) or kid (with --selection kid); none "
                                             "depends on lambda_cyc")] = "l1",
    max_steps: Annotated[int, typer.Option(help="steps per trial")] = 1000,
    batch_size: int = 4,
    resolution: int = 512,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    run_id: Annotated[str | None, typer.Option(help="sweep id")] = None,
    endpoint_url: Endpoint = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local)")] = None,
    selection: Selection = "auto",
    inception_weights: Inception = None,
    set_: SetOpt = None,
    verbose: bool = False,
) -> None:
    """Ray Tune grid over lambda_cyc x lr; prints L_total, SSIM and L1 per configuration (paper Tables 2-3)."""
    import pandas as pd

    from facelift.flows.sweep_heads import sweep_heads
    from facelift.models.heads import head_class
    from facelift.tasks.train import SWEEP_COLUMNS

    setup_logging(verbose)
    try:
        overrides = _overrides(set_)
        head_class(head).make_config(flavor, **overrides)
        dataset_uri = _dataset_at_the_door(dataset_uri, endpoint_url)
        out = sweep_heads(dataset_uri=dataset_uri, head=head, flavor=flavor, lambda_cycs=lambda_cyc, lrs=lr,
                          select=select, max_steps=max_steps, batch_size=batch_size, resolution=resolution,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, endpoint_url=endpoint_url,
                          run_id=run_id, ray_address=ray_address, head_overrides=overrides,
                          selection=selection, inception_weights=inception_weights)
    except _errors() as exc:
        raise fail(str(exc)) from None
    table = pd.DataFrame(out["rows"])[[c for c in SWEEP_COLUMNS if c in out["rows"][0]]]
    typer.echo(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    typer.echo(f"best ({out['best']['selected_by']}): lambda_cyc={out['best']['lambda_cyc']} "
               f"lr={out['best']['lr']:g} -> {out['best']['head_uri']}")
    typer.echo(out["sweep_uri"])


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def demo_step(ctx: dict) -> dict:
    """Demo: train each head's debug flavor for a few steps on the demo dataset (offline, CPU).

    LPIPS needs a backbone file; the demo writes a random-weight AlexNet in torchvision's format to the
    demo cache and points the U-Net at it (production uses the real file from the torch cache).
    """
    import os
    from pathlib import Path

    from facelift.flows.train_head import train_head
    from facelift.models.heads import HEADS
    from facelift.models.losses import save_random_lpips_backbone
    from facelift.tasks.train import ray_session

    cache = Path(os.environ.get("FACELIFT_CACHE", Path.home() / ".cache" / "facelift"))
    backbone = cache / "lpips" / "alexnet-random.pth"
    if not backbone.exists():
        save_random_lpips_backbone(backbone)
    from facelift.cli.common import rel, section

    runs, summary = {}, []
    section("train (each head's debug flavour, 4 steps at 32², Ray Train)")
    with ray_session():  # one local Ray for the three runs
        for name in HEADS:
            overrides = {"lpips_backbone": str(backbone)} if name == "unet_cbam" else {}
            out = train_head(dataset_uri=ctx["dataset_uri"], head=name, flavor="debug", max_steps=4,
                             batch_size=2, resolution=32, checkpoint_every=2, head_overrides=overrides,
                             curation=ctx.get("curation_id"))
            runs[name] = out["run_uri"]
            run = rel(ctx, out["run_uri"])
            typer.echo(f"{name}: {run}")
            summary.append((f"train {name}", f"{run}/head", f"{run}/loss_curve.png, {run}/samples.png"))
    return {"head_runs": runs, "summary": summary}
