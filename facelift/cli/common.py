"""Helpers shared by the CLI modules: one logging setup and one error exit."""

from __future__ import annotations

import logging
import os

import typer


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` in red on stderr; ``raise fail(...)`` exits with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)
