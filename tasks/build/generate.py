"""Generation workers: Ray actors that load both FLUX pipelines once and render and commit whole shards.

A worker renders one shard batch by batch (PNG encoding of batch k overlaps generation of batch k+1),
builds the shard table, spools it to local disk and commits it as one object, retrying the upload
(:mod:`facelift.tasks.build.commit`). A worker killed while rendering loses only that shard's render; one killed
while committing loses nothing: Ray restarts the actor (reloading the pipelines), the caller retries the
shard, and the retry commits the spooled render.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from facelift.config import BuildConfig
from facelift.dataset import Dataset, shard_key, shard_schema
from facelift.lease import Fence
from facelift.storage import StorageError, Store
from facelift.tasks.build import sim
from facelift.tasks.build.commit import Spool, commit_with_retry, encode_shard

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    shard: int
    pairs: int
    bytes: int
    seconds: float
    encode_s: float
    schnell_s: float
    dev_s: float
    png_s: float
    commit_s: float
    worker: str  # the worker that rendered the shard (its provenance column), not always the committer
    rendered: int  # pairs rendered by this call: 0 when it committed a spooled render
    found_committed: bool = False  # an earlier attempt had committed it (its reply was lost with its actor)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_png(image: Any, compress_level: int) -> tuple[bytes, str, float]:
    t0 = time.perf_counter()
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest(), time.perf_counter() - t0


def worker_name(device: str) -> str:
    """host:pid:ray-node:device[:GPU name] — enough to tell which process and node made a shard."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else "local"
    name = f"{socket.gethostname()}:{os.getpid()}:{node}:{device}"
    if device.startswith("cuda"):
        import torch

        name += f":{torch.cuda.get_device_name(torch.device(device))}"
    return name


def _provenance(cfg: BuildConfig) -> dict[str, Any]:
    from facelift.models.flux import dev_steps_run

    g = cfg.generation
    return {
        "schnell_model": g.schnell.model, "schnell_revision": g.schnell.revision,
        "dev_model": g.dev.model, "dev_revision": g.dev.revision, "width": g.width, "height": g.height,
        "schnell_steps": g.schnell.steps, "schnell_guidance": g.schnell.guidance,
        "dev_steps": g.dev.steps, "dev_steps_run": dev_steps_run(g.dev.steps, g.dev.strength),
        "dev_guidance": g.dev.guidance, "dev_strength": g.dev.strength,
        "max_sequence_length": g.schnell.max_sequence_length,
    }


def row_batches(cfg: BuildConfig, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The shard's rows in generation batches."""
    b = cfg.generation.batch_size
    return [rows[i:i + b] for i in range(0, len(rows), b)]


def batch_inputs(batches: list[list[dict[str, Any]]]) -> list[tuple[list[str], list[int]]]:
    """(prompts, seeds) of each batch."""
    return [([r["prompt"] for r in b], [r["seed"] for r in b]) for b in batches]


def render_shard(pair: Any, cfg: BuildConfig, rows: list[dict[str, Any]], worker: str,
                 schnell: list[tuple[list[Any], dict[str, float]]] | None = None) -> pa.Table:
    """Generate every pair of one shard (only the dev half when a schnell actor rendered ``schnell``);
    returns the shard table (images inline, provenance columns)."""
    g = cfg.generation
    fixed = _provenance(cfg)
    records: list[dict[str, Any]] = []
    pending: list[tuple[list[dict], Any, dict[str, float]]] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="png") as pool:
        batches = row_batches(cfg, rows)
        rendered = pair.render_batches(batch_inputs(batches), schnell)
        for batch, (s_imgs, d_imgs, t) in zip(batches, rendered, strict=True):
            futures = [pool.submit(encode_png, img, g.png_compress_level) for img in [*s_imgs, *d_imgs]]
            pending.append((batch, futures, t))
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for batch, futures, t in pending:
            encoded = [f.result() for f in futures]
            n = len(batch)
            for i, row in enumerate(batch):
                (s_png, s_sha, s_t), (d_png, d_sha, d_t) = encoded[i], encoded[n + i]
                records.append({
                    **{k: row[k] for k in ("pair_id", "name", "nconst", "prompt", "seed", "shard", "weight")},
                    "schnell_image": {"bytes": s_png, "path": f"{row['pair_id']}_schnell.png"},
                    "dev_image": {"bytes": d_png, "path": f"{row['pair_id']}_dev.png"},
                    "schnell_sha256": s_sha, "dev_sha256": d_sha, **fixed,
                    "encode_s": t["encode_s"] / n, "schnell_s": t["schnell_s"] / n, "dev_s": t["dev_s"] / n,
                    "png_s": s_t + d_t, "worker": worker, "created_at": now,
                })
    return pa.Table.from_pylist(records, schema=shard_schema())


class ShardWorker:
    """Holds a loaded :class:`models.flux.FluxPair`; one instance per GPU (a Ray actor in production).

    Role ``pair`` renders and commits whole shards; with pooled placement a ``schnell`` actor renders a
    shard's schnell images and a ``dev`` actor turns them into the dev images and commits the shard."""

    def __init__(self, cfg_json: dict[str, Any], dataset_uri: str, role: str = "pair"):
        self.cfg = BuildConfig.model_validate(cfg_json)
        self.dataset = Dataset(Store.from_config(self.cfg.storage, root=dataset_uri))
        self.pair = sim.load_pair(self.cfg.generation, self.cfg.cache_dir, role)  # FLUX, or the sim stand-in
        self.role = role
        self.name = worker_name(self.pair.device)
        self.spool = Spool(self.cfg.cache_dir, dataset_uri)

    def info(self) -> dict[str, Any]:
        return {"worker": self.name, "role": self.role, "load_s": self.pair.load_s,
                "shared_text_encoders": self.pair.shared}

    def _chaos(self, shard: int, stage: str = "render") -> None:
        chaos = self.cfg.ray.chaos
        if stage == "render" and chaos.shard_delay_s:
            time.sleep(chaos.shard_delay_s)
        hang = stage == "render" and chaos.hang_on_shard == shard
        kill = chaos.kill_on_shard == shard and chaos.kill_during == stage
        if not (hang or kill) or not chaos.marker:
            return
        marker = Path(chaos.marker)
        if not marker.exists():
            marker.write_text(self.name)
            if hang:
                log.warning("chaos: worker %s hangs on shard %d", self.name, shard)
                while True:
                    time.sleep(3600)
            log.warning("chaos: killing worker %s during the %s of shard %d", self.name, stage, shard)
            os._exit(1)

    def render_schnell(self, shard: int, rows: list[dict[str, Any]]) -> list[tuple[list[Any], dict[str, float]]]:
        """Schnell pool: one shard's schnell images (PIL, lossless through Ray) and seconds per batch."""
        self._chaos(shard)
        return self.pair.schnell_batches(batch_inputs(row_batches(self.cfg, rows)))

    def _committed_rows(self, shard: int) -> int | None:
        try:
            return self.dataset.shard_rows(shard)
        except StorageError as exc:  # an outage: render anyway, the commit rides it out
            log.warning("shard %05d: cannot tell whether it is committed (%s): rendering it", shard, exc)
            return None

    def run(self, shard: int, rows: list[dict[str, Any]],
            schnell: list[tuple[list[Any], dict[str, float]]] | None = None, fence: Fence | None = None,
            ) -> dict[str, Any]:
        """Render (or take from the spool) and commit one shard; returns its :class:`ShardResult` as a dict.

        A spooled render of this shard (left by a commit that failed or a worker that died mid-commit) is
        committed as it is; only a shard with no spooled render is rendered. ``fence``: the build's lease; the
        shard is committed only while it still holds (:class:`~facelift.lease.LeaseLost` otherwise, the render
        kept in the spool)."""
        t0 = time.perf_counter()
        if self._committed_rows(shard) == len(rows):  # an attempt whose reply was lost had committed it
            log.info("shard %05d is already committed: nothing to render", shard)
            self.spool.drop(shard)
            worker = self.dataset.read_shard_columns(shard, ["worker"]).column("worker")[0].as_py()
            return ShardResult(shard, len(rows), self.dataset.store.size(shard_key(shard)), time.perf_counter() - t0,
                               0.0, 0.0, 0.0, 0.0, 0.0, worker, 0, found_committed=True).as_dict()
        spooled = self.spool.load(shard, [r["pair_id"] for r in rows])
        if spooled is None:
            self._chaos(shard)
            table = render_shard(self.pair, self.cfg, rows, self.name, schnell)
            data, rendered = encode_shard(table), table.num_rows
            self.spool.save(shard, data)
        else:
            (data, table), rendered = spooled, 0
            log.info("shard %05d: committing the render spooled at %s (not rendering again)", shard,
                     self.spool.path(shard))
        self._chaos(shard, "commit")
        t_commit = time.perf_counter()
        size = commit_with_retry(self.dataset, shard, data, self.cfg.storage, kept_at=self.spool.path(shard),
                                 fence=fence)
        self.spool.drop(shard)
        done = time.perf_counter()
        col = lambda name: float(sum(table.column(name).to_pylist()))  # noqa: E731
        return ShardResult(shard, table.num_rows, size, done - t0, col("encode_s"), col("schnell_s"),
                           col("dev_s"), col("png_s"), done - t_commit, table.column("worker")[0].as_py(),
                           rendered).as_dict()


def submit_shard(worker: Any, shard: int, rows: list[dict[str, Any]], schnell_worker: Any = None,
                 fence: Fence | None = None) -> Any:
    """Start one shard on an actor (after its schnell half on ``schnell_worker``, when pooled); returns the
    ObjectRef of its :class:`ShardResult` dict. Called in dispatch order, so an actor runs its shards in the order
    the dispatcher gave them (its clock for the next one starts when the previous one ends)."""
    schnell = schnell_worker.render_schnell.remote(shard, rows) if schnell_worker is not None else None
    return worker.run.remote(shard, rows, schnell, fence)  # the schnell result is passed by reference


def pool_sizes(cfg: BuildConfig) -> dict[str, int]:
    """Actors per role: ``{"pair": n}``, or for ``placement=pools`` a schnell pool and a dev pool sized by
    the stages' cost (transformer steps; a VAE pass costs about a third of a step)."""
    from facelift.models.flux import dev_steps_run

    n, g = cfg.ray.num_workers, cfg.generation
    if g.placement != "pools":
        return {"pair": n}
    if n < 2:
        raise ValueError("generation.placement=pools needs ray.num_workers >= 2 (a schnell and a dev actor)")
    s_cost = g.schnell.steps + 0.3
    d_cost = dev_steps_run(g.dev.steps, g.dev.strength) + 0.6
    n_schnell = cfg.ray.schnell_workers or round(n * s_cost / (s_cost + d_cost))
    n_schnell = min(max(n_schnell, 1), n - 1)
    return {"schnell": n_schnell, "dev": n - n_schnell}


def start_worker(cfg: BuildConfig, dataset_uri: str, role: str = "pair", slots: int = 1) -> Any:
    """Start one generation actor (Ray must be initialised); it loads the pipelines in its constructor.
    ``slots`` > 1 (sim only): a threaded actor running that many shards at once."""
    import ray

    actor_cls = ray.remote(ShardWorker).options(
        num_gpus=cfg.ray.num_gpus_per_worker, num_cpus=cfg.ray.num_cpus_per_worker,
        max_restarts=cfg.ray.max_restarts, max_task_retries=0, resources=cfg.ray.resources or None,
        **({"max_concurrency": slots + 1} if slots > 1 else {}),  # +1: info() answers while every slot is busy
    )
    return actor_cls.remote(cfg.model_dump(mode="json"), dataset_uri, role)


def _start_pool(cfg: BuildConfig, dataset_uri: str, role: str, n: int) -> list[Any]:
    """``n`` workers of one role: one actor each, or (sim) :class:`sim.Slot` s on threaded actors."""
    slots = cfg.generation.sim_slots_per_actor if cfg.generation.simulated else 1
    if slots == 1:
        return [start_worker(cfg, dataset_uri, role) for _ in range(n)]
    hosts = [start_worker(cfg, dataset_uri, role, min(slots, n - i)) for i in range(0, n, slots)]
    return [sim.Slot(hosts[i // slots]) for i in range(n)]


def _actors(pools: dict[str, list[Any]]) -> list[Any]:
    """Every actor of the pools, once (several simulated slots share one)."""
    return list({id(a): a for pool in pools.values() for a in map(sim.actor_of, pool)}.values())


def stop_workers(pools: dict[str, list[Any]]) -> None:
    """Kill every actor of the pools."""
    import ray

    for actor in _actors(pools):
        ray.kill(actor)


def start_workers(cfg: BuildConfig, dataset_uri: str) -> dict[str, list[Any]]:
    """Start the actors of every role (:func:`pool_sizes`) and wait until all have loaded their pipelines."""
    import ray

    pools = {role: _start_pool(cfg, dataset_uri, role, n) for role, n in pool_sizes(cfg).items()}
    for info in ray.get([a.info.remote() for a in _actors(pools)]):
        log.info("worker ready: %s %s (load %.1fs, shared text encoders: %s)", info["role"], info["worker"],
                 info["load_s"], info["shared_text_encoders"])
    return pools
