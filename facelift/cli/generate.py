"""``facelift generate`` (registered on the main typer app in ``facelift/cli/main.py``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from facelift.cli.common import fail, setup_logging
from facelift.errors import first_line


def _errors() -> tuple[type[BaseException], ...]:
    from facelift.config import ConfigError
    from facelift.models.flux import FluxWeightsError
    from facelift.models.heads import HeadError
    from facelift.storage import StorageError

    return (ConfigError, FluxWeightsError, HeadError, StorageError, FileNotFoundError, ValueError, RuntimeError)


TINY_NOTICE = ("note: --profile tiny is the tiny test profile (random-weight models: mechanics, not portraits); "
               "use --profile flux for FLUX.1-schnell")


def generate(
    head: Annotated[str, typer.Option(help="trained head: a head folder or a run URI (<root>/runs/<id>)")],
    prompt: Annotated[list[str] | None, typer.Argument(help="one or more prompts (or --prompts FILE)")] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help="text file, one prompt per line")] = None,
    seed: Annotated[int, typer.Option(help="seed of the first prompt; the i-th uses seed + i")] = 0,
    out: Annotated[str, typer.Option(help="output folder or object-store prefix")] = "generated",
    profile: Annotated[str, typer.Option(help="FLUX profile: tiny (the offline test profile: random weights) or "
                                              "flux (real schnell)")] = "tiny",
    size: Annotated[int | None, typer.Option(help="image size (default: the profile's, 512 for flux)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="prompts per batch (default: the profile's)")] = None,
    device: Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu or cuda")] = "auto",
    also_schnell: Annotated[bool, typer.Option(help="also write schnell's image alone (<name>-schnell.png)")] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// paths")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    verbose: bool = False,
) -> None:
    """Generate portraits from prompts: FLUX.1-schnell text-to-image, then the head, batched, streamed to --out.

    Files are named <prompt slug>-s<seed>.png and never overwrite another file; manifest.jsonl in --out records
    each prompt (done or failed, keyed by prompt, seed and the head's weights hash), so a rerun renders only what
    is missing. Each PNG carries its provenance (facelift JSON, A1111 parameters, XMP with IPTC
    DigitalSourceType).
    """
    from facelift.tasks.generate import GenerateOptions, read_prompts, run_generate

    setup_logging(verbose)
    if not head:
        raise fail("--head is required (a head folder or a run URI)")
    if bool(prompt) == bool(prompts):
        raise fail("give prompts as arguments or --prompts FILE (one of the two)")
    if profile == "tiny":
        typer.echo(TINY_NOTICE, err=True)
    try:
        texts = list(prompt) if prompt else read_prompts(prompts, endpoint_url)
        result = run_generate(texts, head, out, seed=seed, also_schnell=also_schnell, progress=not as_json,
                              options=GenerateOptions(profile=profile, size=size, batch_size=batch_size,
                                                      device=device, endpoint_url=endpoint_url))
    except _errors() as exc:
        raise fail(first_line(exc) or type(exc).__name__) from None
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "written"}, indent=2))
    else:
        typer.echo(f"generated {result['count']} images in {result['seconds']:.1f}s (schnell "
                   f"{result['schnell_s_per_image']:.3f} s/img + head {result['head_s_per_image']:.4f} s/img); "
                   f"already done {result['existing']}, failed {len(result['failed'])}; {result['manifest']}")
        for uri in result["images"][:20]:
            typer.echo(f"  {uri}")
        if len(result["images"]) > 20:
            typer.echo(f"  ... and {len(result['images']) - 20} more")
        for item in result["failed"]:
            typer.echo(f"  failed {item['prompt']!r} (seed {item['seed']}): {item['error']}", err=True)
    if result["failed"]:
        raise typer.Exit(code=1)


def demo_step(ctx: dict) -> dict:
    """Demo: portraits from prompts with the tiny schnell + the last trained debug head (PNG provenance)."""
    from pathlib import Path

    from facelift.cli.common import rel, section
    from facelift.tasks.generate import read_provenance, run_generate

    heads = list((ctx.get("head_runs") or {}).values())
    if not heads:
        typer.echo("generate demo skipped: no trained heads in the demo context (head_runs)")
        return {}
    out = Path(ctx["root"]) / "generate-demo"
    result = run_generate(["A professional portrait of Ada Lovelace", "A professional business portrait"], heads[-1],
                          str(out), seed=7, also_schnell=True)
    section("generate (tiny random-weight schnell + a debug head: mechanics, not portraits)")
    first = Path(result["written"][0]["uri"]) if result["written"] else next(out.glob("*-s7.png"))
    prov = read_provenance(first.read_bytes())
    typer.echo(f"generate: {result['count']} images -> {rel(ctx, str(out))} (schnell "
               f"{result['schnell_s_per_image']:.3f} s/img + head {result['head_s_per_image']:.4f} s/img); "
               f"provenance of {first.name}: prompt {prov['prompt']!r}, seed {prov['seed']}, "
               f"{prov['schnell_model']} + head run {prov['head_run_id']}")
    return {"generate_out": str(out), "summary": [("generate", rel(ctx, str(out)),
                                                   "SLUG-sSEED.png vs SLUG-sSEED-schnell.png; PNG metadata")]}
