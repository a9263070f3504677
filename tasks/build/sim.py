"""The ``sim`` profile's stand-in renderer: a dry run of a real build without GPUs.

Everything else in a sim build is real (plan, Ray actors, a Prefect task per shard, spool, commit, manifest,
events); only :class:`SimPair` replaces :class:`facelift.models.flux.FluxPair`. It sleeps
``generation.sim_seconds_per_pair`` per pair and returns placeholder images of ``generation.height x width``
(seeded noise, so PNGs weigh about what real ones do). Datasets it makes are marked ``"simulated": true`` in
``dataset.json``; training, audit and evaluation refuse them.

A Ray actor is a process; where the harness needs hundreds of workers on a few CPUs, one threaded actor hosts
``generation.sim_slots_per_actor`` simulated workers, each a :class:`Slot` the scheduler treats as a worker.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from PIL import Image

from facelift.config import GenerationConfig


def placeholder(seed: int, width: int, height: int, half: int) -> Image.Image:
    """A deterministic noise image for one half (0 schnell, 1 dev) of a pair."""
    rng = np.random.default_rng([seed, half])
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


class SimPair:
    """Duck-types :class:`~facelift.models.flux.FluxPair` (``render_batches``, ``schnell_batches``)."""

    device = "sim"
    load_s = 0.0
    shared = False

    def __init__(self, cfg: GenerationConfig, role: str = "pair"):
        self.cfg, self.role = cfg, role

    def _half(self, seeds: list[int], half: int, share: float) -> tuple[list[Image.Image], float]:
        seconds = self.cfg.sim_seconds_per_pair * share * len(seeds)
        if seconds:
            time.sleep(seconds)
        return [placeholder(s, self.cfg.width, self.cfg.height, half) for s in seeds], seconds

    def schnell_batches(self, batches: list[tuple[list[str], list[int]]]) -> list[tuple[list[Any], dict]]:
        out = []
        for _, seeds in batches:
            imgs, s = self._half(seeds, 0, 0.5)
            out.append((imgs, {"encode_s": 0.0, "schnell_s": s}))
        return out

    def render_batches(self, batches: list[tuple[list[str], list[int]]],
                       schnell: list[tuple[list[Any], dict[str, float]]] | None = None,
                       ) -> list[tuple[list[Any], list[Any], dict[str, float]]]:
        s_part = schnell if schnell is not None else self.schnell_batches(batches)
        out = []
        for (_, seeds), (s_imgs, t) in zip(batches, s_part, strict=True):
            d_imgs, d = self._half(seeds, 1, 0.5)
            out.append((s_imgs, d_imgs, {"encode_s": t["encode_s"], "schnell_s": t["schnell_s"], "dev_s": d}))
        return out


def load_pair(cfg: GenerationConfig, cache_dir: str, role: str = "pair") -> Any:
    """The renderer a worker holds: the stand-in for ``sim://`` models, else the real FLUX pair."""
    if cfg.simulated:
        return SimPair(cfg, role)
    from facelift.models.flux import FluxPair

    return FluxPair.load(cfg, cache_dir, role)


class Slot:
    """One simulated worker on a threaded actor that hosts several: the scheduler sees one worker per slot,
    the calls go to the shared actor (it runs up to ``sim_slots_per_actor`` shards at once)."""

    def __init__(self, actor: Any):
        self.actor = actor

    @property
    def info(self) -> Any:
        return self.actor.info

    @property
    def run(self) -> Any:
        return self.actor.run

    @property
    def render_schnell(self) -> Any:
        return self.actor.render_schnell


def actor_of(worker: Any) -> Any:
    """The Ray actor behind a worker (a :class:`Slot`'s host, or the actor itself)."""
    return worker.actor if isinstance(worker, Slot) else worker
