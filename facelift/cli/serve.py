"""``facelift serve`` (registered on the main typer app in ``facelift/cli/main.py``)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from facelift.cli.common import fail, setup_logging


def serve(
    head: Annotated[str, typer.Option(help="trained head: a head folder or a run URI (<root>/runs/<id>)")],
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    host: Annotated[str, typer.Option(help="HTTP host (0.0.0.0 to listen on every interface)")] = "127.0.0.1",
    profile: Annotated[str, typer.Option(help="FLUX profile: tiny (offline, CPU) or flux (real schnell)")] = "tiny",
    size: Annotated[int | None, typer.Option(help="image size (default: the profile's)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    max_batch_size: Annotated[int, typer.Option(help="dynamic batching: most requests per model call")] = 8,
    batch_wait_s: Annotated[float, typer.Option(help="dynamic batching: wait this long to fill a batch")] = 0.05,
    max_queued_requests: Annotated[int, typer.Option(help="queue bound; past it: 503 + Retry-After")] = 64,
    timeout_s: Annotated[float, typer.Option(help="per-request timeout (504 past it)")] = 120.0,
    min_replicas: Annotated[int, typer.Option(help="model replicas kept warm")] = 1,
    max_replicas: Annotated[int, typer.Option(help="autoscaling ceiling (one replica per GPU)")] = 1,
    num_gpus: Annotated[float | None, typer.Option(help="GPUs per model replica (default: 1 with --profile "
                                                        "flux, else 0)")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local Ray)")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint for s3:// heads")] = None,
    verbose: bool = False,
) -> None:
    """Serve schnell + head over HTTP on Ray Serve: POST /generate, a web page at /, /healthz and /readyz."""
    from pydantic import ValidationError

    from facelift.config import validation_problems
    from facelift.models.heads import HeadError, read_head_config
    from facelift.storage import absolute_uri
    from facelift.tasks.serve import ServeConfig, serve_app
    from facelift.tasks.serve.run import LOCAL_RAY_ENV

    setup_logging(verbose)
    try:
        head = absolute_uri(head)  # the Serve replica runs in another process and directory
        read_head_config(head, endpoint_url)  # one clear line for a bad head, before Ray starts
        cfg = ServeConfig(head=head, port=port, host=host, profile=profile, size=size, device=device,
                          max_batch_size=max_batch_size, batch_wait_s=batch_wait_s,
                          max_queued_requests=max_queued_requests, timeout_s=timeout_s, min_replicas=min_replicas,
                          max_replicas=max_replicas, endpoint_url=endpoint_url,
                          num_gpus=num_gpus)
    except HeadError as exc:
        raise fail(str(exc)) from None
    except ValidationError as exc:
        raise fail(validation_problems(exc)) from None
    import ray

    for name, value in LOCAL_RAY_ENV.items():  # before Ray starts: its actors inherit this environment
        os.environ.setdefault(name, value)
    ray.init(address=ray_address, include_dashboard=False, ignore_reinit_error=True)
    try:
        serve_app(cfg, blocking=False)
    except Exception as exc:  # noqa: BLE001 - deployment failures (e.g. missing weights) as one line
        raise fail(f"the serve application failed to start: {str(exc).strip().splitlines()[-1][:500]}") from None
    typer.echo(f"serving on http://{host}:{port}/ (POST /generate, GET /readyz); Ctrl-C stops", err=True)
    import contextlib
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    from facelift.tasks.serve import shutdown

    shutdown()
