"""``facelift serve`` (registered on the main typer app in ``facelift/cli/main.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from facelift.cli.common import fail, setup_logging
from facelift.tasks.serve.auth import ApiKeyError, read_api_key

API_KEY_FILE = "serve-api-key"
TINY = "tiny"
TINY_NOTICE = ("note: profile tiny: tiny random-weight test models, not FLUX (noise-like pictures); "
               "--profile flux serves FLUX.1-schnell")


def default_api_key_path() -> Path:
    """``serve-api-key`` in the local stack's secrets folder (``$STACK_DIR/secrets``, else
    ``<repo>/.stack/secrets``)."""
    from facelift.stack.local import REPO

    return Path(os.environ.get("STACK_DIR") or REPO / ".stack").resolve() / "secrets" / API_KEY_FILE


def ensure_api_key(path: Path) -> Path:
    """``path``, holding a key: created atomically with a fresh one (mode 0600; a missing folder 0700) if absent,
    made private again if others can read it. Its value is never printed."""
    import secrets
    import stat

    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        read_api_key(path)  # refuses an empty or unreadable file
        return path
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return path


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
    api_key_file: Annotated[Path | None, typer.Option(help="file holding the bearer API key (created 0600 with a "
                                                           "fresh key if absent); default: serve-api-key beside "
                                                           "the local stack's secrets (.stack/secrets/)")] = None,
    no_api_key: Annotated[bool, typer.Option("--no-api-key", help="serve without an API key (anyone who "
                                                                   "reaches the port can generate)")] = False,
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
        key_path = None if no_api_key else ensure_api_key(api_key_file or default_api_key_path())
        cfg = ServeConfig(head=head, port=port, host=host, profile=profile, size=size, device=device,
                          max_batch_size=max_batch_size, batch_wait_s=batch_wait_s,
                          max_queued_requests=max_queued_requests, timeout_s=timeout_s, min_replicas=min_replicas,
                          max_replicas=max_replicas, endpoint_url=endpoint_url,
                          num_gpus=num_gpus, api_key_file=str(key_path) if key_path else None)
    except HeadError as exc:
        raise fail(str(exc)) from None
    except ValidationError as exc:
        raise fail(validation_problems(exc)) from None
    except (OSError, ApiKeyError) as exc:
        raise fail(f"API key file: {exc}") from None
    if profile == TINY:
        typer.echo(TINY_NOTICE, err=True)
    typer.echo(f"API key: {key_path} (send 'Authorization: Bearer <the file's contents>')" if key_path else
               "API key: none (--no-api-key): anyone who reaches the port can generate", err=True)
    import ray

    for name, value in LOCAL_RAY_ENV.items():  # before Ray starts: its actors inherit this environment
        os.environ.setdefault(name, value)
    try:
        ray.init(address=ray_address, include_dashboard=False, ignore_reinit_error=True)
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
