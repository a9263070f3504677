"""What every benchmark here needs to time GPU work (bench/ is on sys.path when a benchmark runs as a script)."""

from __future__ import annotations

from typing import Any


def sync(device: Any) -> None:
    """Wait for queued GPU work when ``device`` (a torch.device or a string like ``cuda:0``) is a CUDA device."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
