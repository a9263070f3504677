"""The ``facelift`` command line: build, info, demo (plus commands registered by other modules below)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from facelift.cli.common import fail, one_line, setup_logging
from facelift.config import ConfigError, parse_set_options
from facelift.ids import IdError, check_id

app = typer.Typer(help="facelift: paired FLUX schnell/dev portrait datasets and distilled heads.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("facelift")

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override any config key: a.b.c=VALUE")]


@app.command()
def build(
    names: Annotated[str | None, typer.Option(help="IMDb name.basics.tsv[.gz] (default: bundled sample)")] = None,
    count: Annotated[int | None, typer.Option(help="pairs to generate (default: profile's)")] = None,
    mode: Annotated[str, typer.Option(help="enriched (one prompt per name) or baseline")] = "enriched",
    profile: Annotated[str, typer.Option(help="tiny (CPU, offline), flux (GPUs, real weights) or sim "
                                                         "(dry run: stand-in renderer)")] = "tiny",
    out: Annotated[str | None, typer.Option(help="storage root: ./data, /path or s3://bucket/prefix")] = None,
    dataset_id: Annotated[str | None, typer.Option(help="dataset id (default: derived from parameters)")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// roots")] = None,
    weights: Annotated[str | None, typer.Option(help="per-name sampling weights (facelift rebalance)")] = None,
    workers: Annotated[int | None, typer.Option(help="generation actors (one per GPU)")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local Ray)")] = None,
    config: Annotated[Path | None, typer.Option(help="config file (TOML, YAML or JSON)")] = None,
    set_: SetOpt = None,
    verbose: bool = False,
) -> None:
    """Build or resume a paired dataset; the same parameters resume the same dataset."""
    from facelift.dataset import DatasetError
    from facelift.flows.build_dataset import build_dataset
    from facelift.models.flux import FluxWeightsError
    from facelift.storage import StorageError
    from facelift.tasks.build import BuildError, NamesError, PlanError

    setup_logging(verbose)
    try:
        if dataset_id is not None:  # before Prefect and Ray start: one line, no flow run
            check_id(dataset_id, "dataset id")
        overrides = parse_set_options(set_ or [])
        if workers is not None:
            overrides["ray.num_workers"] = workers
        if ray_address is not None:
            overrides["ray.address"] = ray_address
        result = build_dataset(profile=profile, names_uri=names, count=count, mode=mode, root=out,
                               dataset_id=dataset_id, endpoint_url=endpoint_url, weights_uri=weights,
                               config_file=str(config) if config else None, overrides=overrides)
    except (ConfigError, IdError, DatasetError, StorageError, NamesError, PlanError, FluxWeightsError, BuildError,
            FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(result, indent=2))


@app.command()
def info(
    uri: Annotated[str, typer.Argument(help="a dataset URI (.../datasets/<id>) or a storage root")],
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// URIs")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print dataset.json")] = False,
) -> None:
    """Summarise a dataset, or list the datasets under a storage root."""
    from facelift.cli.info import describe, list_datasets
    from facelift.dataset import Dataset, DatasetError
    from facelift.storage import StorageError, Store

    try:
        store = Store(uri, endpoint_url)
        if not store.exists("dataset.json"):
            typer.echo(list_datasets(store))
            return
        ds = Dataset.open(uri, endpoint_url)
        typer.echo(json.dumps(ds.info(), indent=2) if as_json else describe(ds))
    except (DatasetError, StorageError) as exc:
        raise fail(str(exc)) from None


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="storage root for the demo")] = "./data",
    count: Annotated[int, typer.Option(help="pairs in the demo dataset")] = 24,
    verbose: Annotated[bool, typer.Option(help="show every log line (facelift INFO, libraries, HTTP)")] = False,
) -> None:
    """Run the offline demo end to end on the bundled names (tiny random-weight models, CPU)."""
    from facelift.cli.demo import run_demo

    setup_logging(verbose, quiet=not verbose)
    run_demo(out, count)


# --- commands registered by other modules (keep one line each) -------------------------------------
from facelift.cli import audit as cli_audit  # noqa: E402

app.command("audit")(cli_audit.audit)
app.command("rebalance")(cli_audit.rebalance)
from facelift.cli import evaluate as cli_eval  # noqa: E402

app.command("evaluate")(cli_eval.evaluate)
app.command("enhance")(cli_eval.enhance)
from facelift.cli import generate as cli_generate  # noqa: E402

app.command("generate")(cli_generate.generate)
from facelift.cli import serve as cli_serve  # noqa: E402

app.command("serve")(cli_serve.serve)
from facelift.cli import train as cli_train  # noqa: E402

app.command("train")(cli_train.train)
app.command("sweep")(cli_train.sweep)
from facelift.cli import curate as cli_curate  # noqa: E402

app.command("curate")(cli_curate.curate)
from facelift.cli import ops as cli_ops  # noqa: E402

app.command("rebuild")(cli_ops.rebuild)
app.command("stack")(cli_ops.stack)


def main() -> None:
    """Console entry point: a failed command ends in one line, exit 1 (``--verbose``: with the traceback).

    Commands turn the errors they expect into ``error: ...`` lines themselves (exit 2); this catches the rest.
    """
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the last line of defence of every command
        if "--verbose" in sys.argv[1:]:
            raise
        typer.secho(f"error: {one_line(exc)} (run again with --verbose for the traceback)", fg=typer.colors.RED,
                    err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
