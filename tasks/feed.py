"""Keeping the GPU fed: parallel PNG decode ahead of the stream, batches built off the training thread.

Shared by the train and evaluate stages (a stage-neutral module, so neither stage imports the other for it).

Two pieces, both threads (the decoders release the GIL, and a thread shares the stream's state, so a resumed
run continues exactly where the consumer stopped, not where the prefetcher had got to):

- :class:`DecodeAhead` decodes the next ``depth`` rows of a shard on ``workers`` threads while the stream
  yields the current one, in order (the training data order does not depend on the number of workers).
- :class:`BackgroundBatches` runs a batch iterator (crop, flip, stack, pin) on a thread, ``prefetch`` batches
  ahead of the step; its ``state_dict`` is the stream position *after the last batch handed out*.

Decoder: ``torchvision.io.decode_png`` (libpng into a tensor, no PIL image in between), with PIL for other
formats and as the fallback; ``bench/train_input.py`` measures both.
"""

from __future__ import annotations

import io
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from facelift.dataset import decode_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode_rgb(data: bytes) -> torch.Tensor:
    """uint8 CHW RGB tensor from PNG (torchvision) or any PIL-readable bytes."""
    if data[:8] == PNG_MAGIC:
        from torchvision.io import ImageReadMode, decode_png

        try:
            return decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # an unusual PNG libpng refuses: PIL below, which raises a clear error if it is corrupt
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def resize_uint8(img: torch.Tensor, resolution: int) -> torch.Tensor:
    """Square bicubic resize of a uint8 CHW tensor (antialiased when shrinking), back to uint8."""
    if img.shape[-2:] == (resolution, resolution):
        return img
    from torch.nn.functional import interpolate

    out = interpolate(img[None].float(), size=(resolution, resolution), mode="bicubic", antialias=True,
                      align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


class DecodeAhead:
    """Order-preserving decode of an indexed sequence, ``depth`` items ahead, on ``workers`` threads.

    ``get(i)`` returns ``fn(items[i])``; it submits the next items up to ``i + depth`` first, so by the time
    the consumer asks for them they are decoded. With ``workers == 0`` it decodes inline (no thread).
    """

    def __init__(self, fn: Callable[[Any], Any], workers: int, depth: int) -> None:
        self.fn, self.depth = fn, max(1, depth)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="decode") if workers > 0 else None
        self._items: list[Any] = []
        self._pending: dict[int, Future] = {}
        self._order: deque[int] = deque()

    def reset(self, items: list[Any], wanted: Iterable[int]) -> None:
        """A new sequence (one shard's rows); ``wanted``: the indices the consumer will ask for, in order."""
        for fut in self._pending.values():
            fut.cancel()
        self._items, self._pending = items, {}
        self._order = deque(wanted)

    def get(self, index: int) -> Any:
        if self.pool is None:
            return self.fn(self._items[index])
        while self._order and len(self._pending) < self.depth:
            j = self._order.popleft()
            self._pending[j] = self.pool.submit(self.fn, self._items[j])
        fut = self._pending.pop(index, None)
        if fut is None:  # asked out of the announced order: decode it now
            return self.fn(self._items[index])
        if index in self._order:
            self._order.remove(index)
        return fut.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


_END = object()


class BackgroundBatches:
    """Iterate ``batches()`` on a background thread, ``prefetch`` batches ahead, pinned if asked.

    ``batches`` yields ``(batch, state)`` where ``state`` is the source's position right after that batch;
    :meth:`state_dict` returns the state of the last batch this object handed out. Any item works as a batch
    (the evaluation prefetches its ``Batch`` objects with it); only ``pin_memory`` needs a dict of tensors.
    """

    def __init__(self, batches: Iterator[tuple[Any, dict | None]], prefetch: int,
                 pin_memory: bool = False, initial_state: dict | None = None) -> None:
        self._source, self._pin = batches, pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._state = initial_state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batches", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[Any, dict | None]) -> bool:
        """Queue ``item`` unless the consumer has closed (never blocks past ``close()``)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch, state in self._source:
                if self._pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                if not self._put((batch, state)):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised on the consumer's thread
            self._put((exc, None))
            return
        self._put((_END, None))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        item, state = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        self._state = state
        return item

    def state_dict(self) -> dict | None:
        return self._state

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def to_uint8(cell: dict, resolution: int) -> torch.Tensor:
    """uint8 CHW at ``resolution``: libpng straight into a tensor when no resize is needed (the common case:
    training at the dataset's size), else PIL bicubic as before (the same pixels either way)."""
    data = cell.get("bytes") if isinstance(cell, dict) else None
    if data:
        try:
            img = decode_rgb(data)
        except Exception:  # noqa: BLE001 - corrupt bytes: decode_image names the problem
            img = None
        if img is not None and img.shape[-2:] == (resolution, resolution):
            return img
    img = decode_image(cell)
    if img.size != (resolution, resolution):
        from PIL import Image

        img = img.resize((resolution, resolution), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
