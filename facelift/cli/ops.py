"""``facelift rebuild`` (run the build-dataset deployment on a Prefect server) and ``facelift stack up|down``.

Registered on the main typer app in ``facelift/cli/main.py``. ``rebuild`` is the Prefect-client equivalent of
``prefect deployment run 'build-dataset/build' -p profile=... -p count=...``: the server validates the
parameters against the deployment's schema, so bad input is rejected before any run is created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Annotated, Any

import typer

from facelift.cli.common import fail
from facelift.config import ConfigError, parse_set_options
from facelift.ids import IdError, check_id

log = logging.getLogger("facelift")
BUILD_DEPLOYMENT = "build-dataset/build"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class DeploymentRunError(RuntimeError):
    """The deployment does not exist, or the server rejected the run (e.g. invalid parameters)."""


def build_parameters(profile: str | None = None, count: int | None = None, mode: str | None = None,
                     names_uri: str | None = None, root: str | None = None, dataset_id: str | None = None,
                     endpoint_url: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parameters for the build-dataset deployment; unset ones keep the deployment's defaults."""
    params = {"profile": profile, "count": count, "mode": mode, "names_uri": names_uri, "root": root,
              "dataset_id": dataset_id, "endpoint_url": endpoint_url, "overrides": overrides or None}
    return {k: v for k, v in params.items() if v is not None}


def run_deployment_now(deployment: str, parameters: dict[str, Any], tags: list[str] | None = None) -> Any:
    """Create a flow run of ``deployment`` (``flow-name/deployment-name``) now; returns the FlowRun."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    if "/" not in deployment:
        raise DeploymentRunError(f"deployment must be 'flow-name/deployment-name', got {deployment!r}")
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise DeploymentRunError(f"deployment {deployment!r} not found on {client.api_url}; deploy with "
                                     f"`prefect deploy --all --prefect-file deployments/prefect.yaml`") from None
        try:
            return client.create_flow_run_from_deployment(dep.id, parameters=parameters, tags=tags or [])
        except PrefectHTTPStatusError as exc:
            detail = exc.response.text
            with contextlib.suppress(ValueError):
                detail = exc.response.json().get("detail", detail)
            raise DeploymentRunError(f"{deployment} rejected the parameters {json.dumps(parameters)}: "
                                     f"{detail}") from None


def wait_for_run(flow_run_id: Any, timeout_s: float = 3600.0, poll_s: float = 1.0) -> Any:
    """Poll until the run reaches a final state; returns the FlowRun."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.type.value in FINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run.name} ({flow_run_id}) still {run.state_name} after "
                                   f"{timeout_s:.0f}s")
            time.sleep(poll_s)


def rebuild(
    profile: Annotated[str | None, typer.Option(help="config profile: tiny or flux")] = None,
    count: Annotated[int | None, typer.Option(help="pairs to plan")] = None,
    mode: Annotated[str | None, typer.Option(help="enriched or baseline")] = None,
    names: Annotated[str | None, typer.Option(help="IMDb name.basics.tsv[.gz] URI")] = None,
    root: Annotated[str | None, typer.Option(help="storage root (s3://bucket/prefix)")] = None,
    dataset_id: Annotated[str | None, typer.Option(help="explicit dataset id (default: from the parameters)")]
    = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint (default: the worker's environment)")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override a.b.c=VALUE")] = None,
    deployment: Annotated[str, typer.Option(help="flow-name/deployment-name")] = BUILD_DEPLOYMENT,
    wait: Annotated[bool, typer.Option(help="wait for the run to finish; exit 1 unless it completed")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 3600.0,
) -> None:
    """Rebuild a dataset on the Prefect server: same parameters resume it, changed ones make a new version."""
    try:
        overrides = parse_set_options(set_ or [])
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None
    if dataset_id is not None:
        try:
            check_id(dataset_id, "dataset id")
        except IdError as exc:
            raise typer.BadParameter(str(exc), param_hint="--dataset-id") from None
    params = build_parameters(profile, count, mode, names, root, dataset_id, endpoint_url, overrides)
    try:
        run = run_deployment_now(deployment, params, tags=["rebuild"])
    except DeploymentRunError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"flow run {run.name} ({run.id}) of {deployment} scheduled with {json.dumps(params)}")
    if wait:
        run = wait_for_run(run.id, timeout_s=timeout)
        typer.echo(f"flow run {run.name}: {run.state_name}"
                   + (f" ({run.state.message})" if run.state and run.state.message else ""))
        if run.state_name != "Completed":
            raise typer.Exit(code=1)


def stack(
    action: Annotated[str, typer.Argument(help="up | down | status | env")] = "status",
) -> None:
    """Local loopback stack: Prefect server + UI, SeaweedFS S3, Ray head, process worker (pid files in .stack/)."""
    from facelift.cli.localstack import main

    raise typer.Exit(code=main([action]))
