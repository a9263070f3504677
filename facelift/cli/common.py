"""Helpers shared by the CLI modules: one logging setup and one error exit."""

from __future__ import annotations

import logging
import os

import typer

from facelift.errors import first_line

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _QuietLibraries(logging.Filter):
    """Without ``--verbose`` the console shows everyone's warnings and facelift's own INFO lines (unless quiet)."""

    def __init__(self, facelift_level: int) -> None:
        super().__init__()
        self.facelift_level = facelift_level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name.split(".")[0] == "facelift" and record.levelno >= self.facelift_level


class _NoTraceback(logging.Formatter):
    """Formats like ``inner`` but without tracebacks (the console without ``--verbose``; the Prefect API handler
    still sends them to the UI)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info = bare.exc_text = bare.stack_info = None
        return self.inner.format(bare)


# Chatter that is not Python logging, silenced unless --verbose (set before the libraries load)
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",            # TensorFlow/absl C++ start-up lines (cuda stubs, oneDNN)
    "DEEPFACE_LOG_LEVEL": "30",             # DeepFace's own logger prints "Directory ... created" at INFO
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",    # diffusers/transformers/hub tqdm bars (loading, saving shards)
    "RAY_LOGGER_LEVEL": "warning",          # "Started a local Ray instance." and other Ray INFO lines
}


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Console logging for a command: facelift INFO (none if ``quiet``), libraries and HTTP only at WARNING.

    ``verbose`` shows everything at DEBUG. Prefect's own handlers are configured first and only filtered
    here, so flow-run logs still reach the Prefect API (the UI) at INFO whatever the console shows.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the ephemeral API server of a flow called without a server: 20 s is too short on a loaded 2-core host
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    import prefect.logging.configuration as prefect_logging

    prefect_logging.setup_logging()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=FORMAT)
    level = logging.DEBUG if verbose else logging.INFO
    root.setLevel(level)
    logging.getLogger("facelift").setLevel(level)
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, _QuietLibraries)]:
            handler.removeFilter(f)
        if isinstance(handler.formatter, _NoTraceback):
            handler.setFormatter(handler.formatter.inner)
        if not verbose:
            handler.addFilter(_QuietLibraries(logging.WARNING if quiet else logging.INFO))
            handler.setFormatter(_NoTraceback(handler.formatter))


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (long messages cut at 500 characters)."""
    first = first_line(exc)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` in red on stderr; ``raise fail(...)`` exits with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


# -- demo output helpers (each command's demo step prints its stage with these) --
def rel(ctx: dict, uri: str) -> str:
    """``uri`` relative to the demo root (shorter lines); other URIs unchanged."""
    root = str(ctx["root"]).rstrip("/") + "/"
    return uri[len(root):] if uri.startswith(root) else uri


def section(title: str) -> None:
    typer.echo(f"\n== {title} ==")


def demo_deepface(models: tuple[str, ...] | None = None) -> None:
    """Offline demo: DeepFace's ``models`` (default: every audit model) from ``DEEPFACE_HOME``, else random-weight
    files made once under the facelift cache (``DEEPFACE_HOME`` is pointed there)."""
    import os
    from pathlib import Path

    from facelift.models.deepface_weights import AUDIT_MODELS, build_random_weights, missing_weights

    if missing_weights(models or AUDIT_MODELS):
        cache = Path(os.environ.get("FACELIFT_CACHE") or Path.home() / ".cache" / "facelift")
        os.environ["DEEPFACE_HOME"] = str(cache / "deepface")
        build_random_weights(os.environ["DEEPFACE_HOME"])
