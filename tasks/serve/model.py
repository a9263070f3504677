"""``ModelServer``: schnell + head on one GPU (or a CPU for the tiny profile), batched dynamically, one bad
request failing only itself (:mod:`.batching`), warmed up at every configured batch size before it is ready.

With a safety checker (:mod:`.safety`), a flagged image fails its own request only (422).

Ray Serve routes to a replica only after its constructor returns, so the model load and the warm-up (one batch
at each size in ``warmup_sizes``: the head's ``torch.compile`` and the kernels of each batch shape) happen before
any request waits on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from ray import serve

from facelift.tasks.generate import GenerateOptions, Generator
from facelift.tasks.serve.batching import ItemError, run_isolated
from facelift.tasks.serve.encode import encode_image
from facelift.tasks.serve.safety import FLAGGED, SafetyChecker

log = logging.getLogger(__name__)
WARMUP_PROMPT = "A professional portrait photo of a person"


@dataclass(frozen=True)
class Item:
    """One image to render: what a request (or one of its ``num_outputs``) asks for."""

    prompt: str
    seed: int
    output_format: str = "png"
    output_quality: int = 90
    schnell: bool = False  # also return schnell's own image (``/compare``)


class ModelServer:
    """schnell + head, batched with ``@serve.batch``; :meth:`generate` never raises for a request's own fault."""

    def __init__(self, head: str, options: dict[str, Any], max_batch_size: int, batch_wait_s: float,
                 warmup_sizes: list[int] | None = None, safety_checker: str | None = None) -> None:
        # every model call (warm-up and batches) on one thread: CPU torch's OpenMP team is per calling thread, and a
        # warm-up on the constructor's thread left a second team spinning beside the one serving the batches
        # (-28 % images/s at 8 clients on 2 cores, bench/serve_load.py)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.generator = Generator(head, GenerateOptions(**options))
        self.safety = SafetyChecker(safety_checker, self.generator.engine.device) if safety_checker else None
        self.generate_batch.set_max_batch_size(max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.warmup_seconds = self.executor.submit(self.warm_up, warmup_sizes or []).result()

    def warm_up(self, sizes: list[int]) -> dict[int, float]:
        """One batch at each size (seconds per size); a failure here fails the replica's start, as it should."""
        seconds: dict[int, float] = {}
        for size in sizes:  # the whole path of a request: schnell, head, safety checker, encoding
            t0 = time.perf_counter()
            self._render([Item(WARMUP_PROMPT, seed) for seed in range(size)])
            seconds[size] = round(time.perf_counter() - t0, 3)
        if sizes:
            log.info("warm-up done: batch sizes %s in %s s", sizes, seconds)
        return seconds

    def _render(self, items: list[Item]) -> list[dict[str, Any]]:
        results = self.generator([i.prompt for i in items], [i.seed for i in items])
        flagged = self.safety(torch.stack([g.enhanced for g in results])) if self.safety else [False] * len(items)
        out: list[dict[str, Any]] = []
        for item, g, bad in zip(items, results, flagged, strict=True):
            if bad:  # neither image goes back (schnell's is the same picture, less refined)
                out.append({"status": 422, "error": FLAGGED})
                continue
            prov = {**g.provenance, "image": "schnell+head", "safety_checker": self.safety.name if self.safety
                    else "off"}
            out.append({"image": encode_image(g.enhanced, prov, item.output_format, item.output_quality),
                        "schnell": encode_image(g.schnell, {**g.provenance, "image": "schnell"},
                                                item.output_format, item.output_quality) if item.schnell else None,
                        "seed": g.seed, "provenance": prov, "seconds": g.seconds, "batch": len(items)})
        return out

    def _render_isolated(self, items: list[Item]) -> list[dict[str, Any]]:
        return [{"status": r.status, "error": r.error} if isinstance(r, ItemError) else r
                for r in run_isolated(self._render, items)]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate_batch(self, items: list[Item]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()  # the event loop keeps serving meanwhile
        return await loop.run_in_executor(self.executor, self._render_isolated, items)

    async def generate(self, item: Item) -> dict[str, Any]:
        """The image (``image``, ``seed``, ``provenance``, ...) or ``{"status", "error"}`` for this item alone."""
        return await self.generate_batch(item)
