"""Collectives of the training loop: gradients, validation sums, weights, BatchNorm statistics, data state.

Every tensor handed to ``torch.distributed`` lives on the loop's ``device``: NCCL (``use_gpu``) has no CPU
backend, so a CPU tensor raises there, while gloo on CPU accepts anything (the CPU tests cannot see the
difference; ``tests/test_train_loop.py`` checks it with fake collectives and a default device elsewhere).
Only tensor collectives are used: the ``*_object`` ones pick their device implicitly.
All functions are no-ops for a world of 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def sync_grads(world: int) -> Callable[[list[nn.Parameter]], None] | None:
    """Average gradients across workers: one flat all-reduce per optimizer (None grads count as 0)."""
    if world == 1:
        return None

    def sync(params: list[nn.Parameter]) -> None:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # same memory format as the parameter
        _average_in_place([p.grad for p in params], world)
    return sync


def _average_in_place(tensors: list[torch.Tensor], world: int) -> None:
    """Mean over the workers of each tensor, in place, with one flat float32 all-reduce; each tensor keeps
    its dtype and layout (channels_last grads stay channels_last)."""
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view(t.shape))
        offset += n


def all_reduce_sums(sums: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """Sum each named value over the workers (float64, on ``device``)."""
    if world == 1:
        return sums
    import torch.distributed as dist

    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def broadcast_state(module: nn.Module, world: int) -> None:
    """Rank 0's parameters and buffers to every worker (they live on the loop's device after ``.to``)."""
    if world == 1:
        return
    import torch.distributed as dist

    for tensor in module.state_dict().values():
        dist.broadcast(tensor, 0)


def average_buffers(module: nn.Module, world: int) -> None:
    """Average the floating-point buffers (BatchNorm running mean/var) over the workers, in place.

    Each worker updates them from its own batches, so without this the workers' models drift apart and
    validation and checkpoints (rank 0's) see one worker's statistics. Integer buffers
    (``num_batches_tracked``) advance in step everywhere and are left alone.
    """
    if world == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if buffers:
        _average_in_place(buffers, world)


def gather_bytes(data: bytes, world: int, device: torch.device) -> list[bytes]:
    """Every worker's ``data``, in rank order (uint8 tensors on ``device``, padded to the longest)."""
    if world == 1:
        return [data]
    import torch.distributed as dist

    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(n) for n in lengths]
    mine = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    if data:
        mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    out = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(out, mine)
    return [bytes(t[:n].cpu().numpy().tobytes()) for t, n in zip(out, sizes, strict=True)]
