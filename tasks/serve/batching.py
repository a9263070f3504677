"""Per-request isolation inside a dynamic batch: one bad request, or one out-of-memory batch, fails only itself.

Ray Serve's ``@serve.batch`` sets an exception raised by the batch function on every request of the batch. So
the batch function never raises: :func:`run_isolated` runs the whole batch once and, if that fails,

- on a CUDA out-of-memory error splits the batch in two halves and runs each once more (a half that runs out
  of memory again answers 503 "retry": the retry is done once, not recursively);
- on any other error runs each request alone, once, so only the requests that fail by themselves fail.

A failed request is an :class:`ItemError` (an HTTP status and a message); the ingress answers it as JSON.
Retries run after the ``except`` block has ended, with only the error's text kept: the failed attempt's
traceback (and with it the batch's tensors) is gone before the next attempt allocates.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ItemError:
    """One request's failure: the HTTP status to answer and a one-line message."""

    status: int
    error: str


@dataclass(frozen=True)
class _Failure:
    kind: str  # the exception's class name
    message: str
    oom: bool

    def item_error(self) -> ItemError:
        if self.oom:
            return ItemError(503, "out of GPU memory for this request; retry")
        status = 422 if self.kind == "ValueError" else 500
        return ItemError(status, f"generation failed ({self.kind}: {self.message})")


def is_oom(exc: BaseException) -> bool:
    """Out of memory on any device (CUDA, the CPU allocator, MPS): enhance's one definition."""
    from facelift.tasks.enhance.engine import is_out_of_memory

    return is_out_of_memory(exc)


def _attempt(fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R] | _Failure:
    """``fn(items)``, or the failure as text only (the exception and its frames are released on return)."""
    try:
        out = fn(items)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the affected requests' answer
        lines = str(exc).strip().splitlines()
        return _Failure(type(exc).__name__, (lines[0] if lines else "")[:300], is_oom(exc))
    if len(out) != len(items):
        return _Failure("RuntimeError", f"{len(out)} results for {len(items)} requests", False)
    return out


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _one_by_one(fn: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R | ItemError]:
    out: list[R | ItemError] = []
    for item in items:
        res = _attempt(fn, [item])
        out.extend([res.item_error()] if isinstance(res, _Failure) else res)
    return out


def run_isolated(fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R | ItemError]:
    """``fn`` over ``items`` with per-request isolation (module docstring); never raises for a request."""
    first = _attempt(fn, items)
    if not isinstance(first, _Failure):
        return list(first)
    if len(items) == 1:
        log.warning("request failed (%s: %s)", first.kind, first.message)
        return [first.item_error()]
    log.warning("batch of %d failed (%s: %s); %s", len(items), first.kind, first.message,
                "splitting it in two" if first.oom else "running its requests one by one")
    if not first.oom:
        return _one_by_one(fn, items)
    _free_memory()
    half = (len(items) + 1) // 2
    out: list[R | ItemError] = []
    for part in (items[:half], items[half:]):
        res = _attempt(fn, part)
        if not isinstance(res, _Failure):
            out.extend(res)
        elif res.oom:
            _free_memory()
            out.extend([res.item_error()] * len(part))
        else:
            out.extend(_one_by_one(fn, part))
    return out
