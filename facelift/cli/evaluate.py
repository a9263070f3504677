"""``facelift evaluate`` and ``facelift enhance`` (registered on the main typer app in ``facelift/cli/main.py``)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal

import typer

from facelift.cli.common import fail, setup_logging

log = logging.getLogger("facelift")


def _errors() -> tuple[type[BaseException], ...]:
    from facelift.config import ConfigError
    from facelift.dataset import DatasetError
    from facelift.models.heads import HeadError
    from facelift.storage import StorageError

    return (ConfigError, DatasetError, StorageError, HeadError, FileNotFoundError, ValueError, RuntimeError)


def evaluate(
    dataset_uri: Annotated[str, typer.Argument(help="dataset URI (.../datasets/<id>)")],
    head: Annotated[list[str] | None, typer.Option("--head", help="head folder or run URI (repeatable)")] = None,
    lora: Annotated[str | None, typer.Option(help="schnell + this LoRA as a comparator row (hub id, folder "
                                                  "or .safetensors)")] = None,
    n_images: Annotated[int | None, typer.Option(help="pairs per set (each half of the test split; default: "
                                                      "min(half, 10000))")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// URIs")] = None,
    run_id: Annotated[str | None, typer.Option(help="run id (default: eval-<time>-<random>)")] = None,
    inception_weights: Annotated[str | None, typer.Option(help="FID Inception weights file (pytorch-fid / "
                                                               "torch-fidelity format)")] = None,
    clip_model: Annotated[str | None, typer.Option(help="CLIP checkpoint for CLIP-IQA (hub id or "
                                                        "folder)")] = None,
    resize: Annotated[Literal["clean", "torch"], typer.Option(help="to the Inception's 299²: clean (clean-fid: PIL "
                                                                  "bicubic, antialiased) or torch (pytorch-fid: "
                                                                  "bilinear, no antialias)")] = "clean",
    batch_size: Annotated[int, typer.Option(help="pairs per batch (images are streamed, never all in "
                                                 "memory)")] = 16,
    timing_resolution: Annotated[list[int] | None, typer.Option("--timing-resolution",
                                                                help="time T2I + head at this size "
                                                                     "(repeatable)")] = None,
    profile: Annotated[str, typer.Option(help="FLUX profile for timing and the LoRA row: tiny or flux")] = "tiny",
    n_boot: Annotated[int, typer.Option(help="resampling rounds (halves + quarters) for the FID intervals, "
                                             ">= 2")] = 20,
    kid_subsets: Annotated[int, typer.Option(help="KID: random subsets (>= 10)")] = 100,
    kid_subset_size: Annotated[int, typer.Option(help="KID: subset size cap (subsets are min(this, N/2), "
                                                      ">= 4)")] = 1000,
    baseline: Annotated[str, typer.Option(help="row every other row is compared with (paired differences): "
                                               "schnell, dev, a head's name or URI, or 'schnell + LoRA'")] = "schnell",
    primary: Annotated[str, typer.Option(help="the declared primary comparison, shown first: d_kid_dev, "
                                              "d_cmmd_dev, d_fid_dev, d_fid_diff, d_clip_iqa or d_lpips_dev")
                       ] = "d_kid_dev",
    alpha: Annotated[float, typer.Option(help="family-wise error rate of the verdicts over every row x every "
                                              "comparison (Bonferroni)")] = 0.05,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    verbose: bool = False,
) -> None:
    """Score schnell, dev, heads (and a LoRA) on the test split: Table 4 + KID + LPIPS, timing.

    Heads whose training run used other splits than the dataset's (or records none) are refused.
    """
    from facelift.flows.evaluate import evaluate as evaluate_flow
    from facelift.models.metrics import DEFAULT_CLIP_IQA_MODEL
    from facelift.storage import absolute_uri
    from facelift.tasks.evaluate import EvalConfig, table_markdown

    setup_logging(verbose)
    try:  # every option checked before the flow starts (the flow checks them again, for deployments)
        EvalConfig(n_images=n_images, resize=resize, batch_size=batch_size, n_boot=n_boot, kid_subsets=kid_subsets,
                   kid_subset_size=kid_subset_size, baseline=baseline, device=device, primary=primary, alpha=alpha)
        dataset_uri = absolute_uri(dataset_uri)
        head = [absolute_uri(h) for h in head or []]
        result = evaluate_flow(dataset_uri, head, lora=lora, n_images=n_images, endpoint_url=endpoint_url,
                               run_id=run_id, inception_weights=inception_weights,
                               clip_model=clip_model or DEFAULT_CLIP_IQA_MODEL, resize=resize, batch_size=batch_size,
                               n_boot=n_boot, device=device, profile=profile, timing_resolutions=timing_resolution,
                               kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, baseline=baseline,
                               primary=primary, alpha=alpha)
    except _errors() as exc:
        raise fail(str(exc)) from None
    import pandas as pd

    typer.echo(table_markdown(pd.DataFrame(result["table"])))
    typer.echo("\n".join(["", "files:", *(f"  {uri}" for uri in result["files"].values())]))


def enhance(
    src: Annotated[str, typer.Argument(help="image folder, glob ('imgs/*.png') or object-store prefix")],
    dst: Annotated[str, typer.Argument(help="output folder or object-store prefix")],
    head: Annotated[str, typer.Option(help="trained head: a head folder or a run URI (<root>/runs/<id>)")],
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 16,
    policy: Annotated[str, typer.Option(help="sizes not divisible by the head's multiple: pad (exact size), "
                                             "resize or tile")] = "pad",
    size: Annotated[int | None, typer.Option(help="with --policy resize: run the head at size x size")] = None,
    out_format: Annotated[str | None, typer.Option("--format", help="output format: png, jpg or webp "
                                                                    "(default: the input's; a file in another "
                                                                    "format gets the suffix appended: "
                                                                    "a.jpg -> a.jpg.png)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile",
                                                 help="torch.compile (default: on GPU)")] = None,
    workers: Annotated[int, typer.Option(help="decode/encode threads")] = 4,
    max_pixels: Annotated[int, typer.Option(help="skip (with a reason) images over this many pixels")] = 8192 * 8192,
    tile_pixels: Annotated[int, typer.Option(help="run images with more pixels than this tiled")] = 2048 * 2048,
    hold_pixels: Annotated[int, typer.Option(help="memory budget: pixels waiting in size buckets, all sizes "
                                                  "together")] = 32 * 2**20,
    overwrite: Annotated[bool, typer.Option(help="redo outputs that already exist (default: skip this head's, "
                                                 "refuse another head's)")] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// paths")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    verbose: bool = False,
) -> None:
    """Apply a trained head to any images: same names under DST; a rerun skips the outputs this head made.

    Outputs keep the input's provenance and add this head's (name, run id, weights sha256). Outputs of another
    head in DST are refused unless --overwrite. Per-file failures (unreadable file, out of memory even tiled,
    failed write, a name escaping DST) are reported and the run goes on (exit 1 if any); files over
    --max-pixels are skipped with a reason (exit 0).
    """
    from facelift.tasks.enhance import run_enhance

    setup_logging(verbose)
    fmt = None if out_format is None else "." + out_format.lower().lstrip(".")
    try:
        report = run_enhance(src, dst, head, endpoint_url=endpoint_url, device=device, batch_size=batch_size,
                             policy=policy, size=size, compile=compile, out_format=fmt, workers=workers,
                             max_pixels=max_pixels, tile_pixels=tile_pixels, hold_pixels=hold_pixels,
                             overwrite=overwrite)
    except _errors() as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(f"enhanced {report.processed} images into {dst} in {report.seconds:.1f}s "
                   f"({report.images_per_s:.1f} img/s); failed {len(report.failed)}, skipped "
                   f"{len(report.skipped)}, already done {report.existing}")
        for path, err in report.failed:
            typer.echo(f"  failed {path}: {err}", err=True)
        for path, why in report.skipped:
            typer.echo(f"  skipped {path}: {why}", err=True)
        for note in report.notes:
            typer.echo(f"  note: {note}", err=True)
    if report.failed:
        raise typer.Exit(code=1)


def demo_step(ctx: dict) -> dict:
    """Demo: evaluate the demo's trained debug heads on the test split (random-weight metric networks), then
    enhance a folder. The demo dataset is built with a larger test split (``build_step``) so that both halves
    hold a few pairs."""
    from pathlib import Path

    import pandas as pd

    from facelift.dataset import Dataset, decode_image
    from facelift.flows.evaluate import evaluate as evaluate_flow
    from facelift.models.tiny_metrics import ensure_random_fid_weights, ensure_tiny_clip
    from facelift.tasks.enhance import run_enhance
    from facelift.tasks.evaluate import fid_below_zero, intervals_violated, table_markdown

    heads = list((ctx.get("head_runs") or {}).values())
    if not heads:
        typer.echo("evaluate demo skipped: no trained heads in the demo context (head_runs)")
        return {}
    ds = Dataset.open(ctx["dataset_uri"])
    result = evaluate_flow(ds.uri, heads, inception_weights=str(ensure_random_fid_weights()),
                           clip_model=str(ensure_tiny_clip()), lpips_random_backbone=True, n_boot=10, device="cpu",
                           batch_size=8, profile="tiny", timing_resolutions=[64, 128])
    from facelift.cli.common import rel, section

    section("evaluation (random-weight Inception and CLIP on tiny images: mechanics, not quality)")
    table = pd.DataFrame(result["table"])
    files = result["files"]
    report_md = rel(ctx, str(next((u for u in files.values() if str(u).endswith("report.md")), result["run_uri"])))
    typer.echo(table_markdown(table).split("\n\nPaired comparisons")[0])  # the paired table: in report.md
    bad, negative = intervals_violated(table), fid_below_zero(table)
    typer.echo(("every point estimate lies inside its 95% interval" if not bad else
                f"estimates outside their intervals: {', '.join(bad)}") + "; "
               + ("no FID or FID interval below 0" if not negative else f"FIDs below 0: {', '.join(negative)}")
               + f"; paired comparisons with schnell and the timing table (tiny FLUX on this CPU): {report_md}")

    folder = Path(ctx["root"]) / "enhance-demo"
    (folder / "in").mkdir(parents=True, exist_ok=True)
    table = ds.read_shard(ds.committed_shards()[0], columns=["pair_id", "schnell_image"])
    for rec in table.to_pylist()[:4]:
        decode_image(rec["schnell_image"]).save(folder / "in" / f"{rec['pair_id']}.png")
    (folder / "in" / "corrupt.png").write_bytes(b"not an image")
    report = run_enhance(str(folder / "in"), str(folder / "out"), heads[-1], device="cpu", progress=False)
    out = rel(ctx, str(folder / "out"))
    typer.echo(f"enhance: {report.processed} images -> {out}, skipped "
               f"{[Path(p).name for p, _ in report.failed]} (a corrupt file, on purpose)")
    pictures = ", ".join(rel(ctx, uri) for key, uri in files.items() if str(uri).endswith(".png"))
    return {"evaluation_uri": result["run_uri"], "enhance_out": str(folder / "out"),
            "summary": [("evaluate", report_md, pictures),
                        ("enhance", out, f"{rel(ctx, str(folder / 'in'))} for the inputs")]}
