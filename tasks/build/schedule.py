"""Shard scheduling for the build: a Prefect task per shard attempt over the Ray generation actors.

Each worker holds ``ray.shards_per_worker`` shards (the next one waits at the actor, so a GPU never idles for a
round trip). A shard's clock starts when it reaches the head of its worker's line; one that runs past the shard
timeout (:func:`shard_timeout`) marks its worker hung: the actor is killed and replaced, and the shard moves to
another worker. A shard whose actor died, or is restarting, moves too; the actor is taken out of the pool until a
probe answers (a restarted actor comes back, a dead one is replaced, one stuck restarting on a lost node stays
out), so a lost node costs its shards in flight, not the build. The build fails only once no worker has been up
for ``ray.no_worker_timeout_s``, and at once when the build's lease is lost (every actor is killed first).
"""

from __future__ import annotations

import queue
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from facelift.config import BuildConfig, RayConfig
from facelift.lease import LeaseLost
from facelift.storage import StorageError
from facelift.tasks.build import generate, sim
from facelift.tasks.build import steps as build
from facelift.tasks.build.commit import PermanentCommitError
from facelift.tasks.build.placement import LeastBusy, ShardRows

MAX_REPLACEMENTS_PER_WORKER = 2  # a worker slot replaced more often than this (a bad node) stays out of the pool


@task(cache_policy=NO_CACHE, retries=0, persist_result=False, task_run_name="shard-{shard:05d}")
def generate_shard(shard: int, call: tuple[Any, ...]) -> dict[str, Any]:
    """One shard's render and commit on a Ray worker, started by the dispatcher (``call``: its ObjectRef, in a
    tuple so that Prefect passes it through as it is); a hung actor is the dispatcher's to kill, which ends this
    wait with an actor error."""
    import ray

    return ray.get(call[0])


def shard_timeout(cfg: RayConfig, slowest_s: float | None, commit_budget_s: float = 0.0) -> float:
    """Seconds a shard may run at the head of its worker's line: the configured value, else the margin times the
    slowest shard so far (at least the floor), else the first-shard allowance (warm-up, compile); plus the
    commit's retry budget (a worker riding out a store outage is not hung)."""
    if cfg.shard_timeout_s:
        return cfg.shard_timeout_s
    if slowest_s is None:
        return cfg.first_shard_timeout_s + commit_budget_s
    return max(cfg.shard_timeout_min_s, cfg.shard_timeout_margin * slowest_s) + commit_budget_s


def _ray_up(cfg: BuildConfig) -> bool:
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=cfg.ray.address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    return True


@dataclass
class ShardOutcome:
    """What one build run did with its shards: counts of committed ones (constant memory per shard: no per-shard
    results are kept), the reason of each failed one, and the run's timing for the busy fraction."""

    committed: int = 0
    rendered: int = 0  # pairs rendered by this run's shard calls (a spooled render committed later counts 0)
    spooled: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    moved: int = 0  # shard attempts moved to another worker (timed out, actor died or restarting, error)
    replaced: int = 0  # actors replaced (hung or dead)
    worker_seconds: float = 0.0  # sum of the committed shards' call times on their workers
    wall_seconds: float = 0.0  # from the first submit to the last result
    workers: int = 0

    def add(self, res: dict[str, Any]) -> None:
        self.committed += 1
        self.rendered += res["rendered"]
        self.worker_seconds += res["seconds"]
        if res["rendered"] == 0 and not res.get("found_committed"):
            self.spooled.append(res["shard"])

    @property
    def from_spool(self) -> list[int]:
        return sorted(self.spooled)

    @property
    def busy_fraction(self) -> float:
        """Share of the workers' time spent on shard calls while shards were running (1.0: never idle)."""
        return self.worker_seconds / (self.workers * self.wall_seconds) if self.wall_seconds else 0.0


@dataclass(eq=False)
class Attempt:
    shard: int
    w: int  # committer (pair or dev) index
    s: int | None  # schnell index (pooled placement)
    tries: int  # failed attempts before this one
    started: float | None = None  # when it reached the head of its worker's line (its clock)
    killed: bool = False  # its actor was killed by the dispatcher (timeout of this or another shard)
    doomed: bool = False  # queued at an actor that died: it never runs, so its clock never starts


def _actor_error(exc: BaseException | None) -> bool:
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


class Dispatcher:
    """The build's shard loop; see the module docstring."""

    def __init__(self, cfg: BuildConfig, prepared: build.Prepared, shards: list[int], progress: Any):
        self.cfg, self.prepared, self.progress, self.log = cfg, prepared, progress, get_run_logger()
        self.pools = generate.start_workers(cfg, prepared.dataset.uri)
        self.role = "dev" if "dev" in self.pools else "pair"
        depth = cfg.ray.shards_per_worker
        self.lanes = {self.role: LeastBusy(len(self.pools[self.role]), depth)}
        if "schnell" in self.pools:
            self.lanes["schnell"] = LeastBusy(len(self.pools["schnell"]), depth)
        self.lines: list[deque[Attempt]] = [deque() for _ in self.pools[self.role]]
        self.replacements: dict[tuple[str, int], int] = {}
        self.probes: dict[Any, tuple[str, int, Any]] = {}  # info() ref -> (role, index, actor)
        self.rows_of = ShardRows(prepared.plan)
        self.task = generate_shard.with_options(retries=0)
        self.fence = prepared.lease.fence if prepared.lease is not None else None
        self.todo: deque[tuple[int, int]] = deque((s, 0) for s in shards)  # (shard, failed tries)
        self.outcome = ShardOutcome(workers=len(self.pools[self.role]))
        self.inflight: dict[Any, Attempt] = {}
        self.finished: queue.SimpleQueue = queue.SimpleQueue()
        self.slowest: float | None = None
        self.total = len(shards)
        self.no_worker_since: float | None = None
        if prepared.lease is not None:
            prepared.lease.on_lost = lambda why: self.finished.put(None)  # wake the loop at once

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> ShardOutcome:
        t0 = time.perf_counter()
        while self.todo or self.inflight:
            if self.prepared.lease is not None and self.prepared.lease.lost:  # taken over, or unrenewable for ttl
                self.prepared.lease.check()
            self._submit()
            self._check_probes()
            if self._no_worker_left():
                break
            try:
                future = self.finished.get(timeout=self._wait_s())
            except queue.Empty:
                future = None
            if future is not None:
                self._finish(future)
            self._expire()
        self.outcome.wall_seconds = time.perf_counter() - t0
        return self.outcome

    def _submit(self) -> None:
        committers, schnells = self.lanes[self.role], self.lanes.get("schnell")
        while self.todo and (schnells is None or schnells.peek() is not None) and (w := committers.pick()) is not None:
            s = schnells.pick() if schnells is not None else None
            shard, tries = self.todo.popleft()
            attempt = Attempt(shard, w, s, tries)
            line = self.lines[w]
            if not line:
                attempt.started = time.monotonic()
            line.append(attempt)
            ref = generate.submit_shard(self.pools[self.role][w], shard, self.rows_of(shard),
                                        self.pools["schnell"][s] if s is not None else None, self.fence)
            future = self.task.submit(shard, (ref,))
            self.inflight[future] = attempt
            future.add_done_callback(self.finished.put)

    def _timeout(self) -> float:
        return shard_timeout(self.cfg.ray, self.slowest, self.cfg.storage.commit_retry_s)

    def _wait_s(self) -> float:
        """Until the next shard deadline or probe check (at most a second)."""
        limit = self._timeout()
        heads = [line[0].started for line in self.lines if line and line[0].started is not None]
        next_deadline = min(heads) + limit - time.monotonic() if heads else 1.0
        return min(1.0, max(0.05, next_deadline))

    def _advance(self, w: int, attempt: Attempt) -> None:
        line = self.lines[w]
        if attempt in line:
            line.remove(attempt)
        if line and line[0].started is None and not line[0].doomed:
            line[0].started = time.monotonic()

    def _finish(self, future: Any) -> None:
        attempt = self.inflight.pop(future)
        future.wait()
        exc = None if future.state.is_completed() else _exception(future.state)
        if attempt.killed or _actor_error(exc):  # the shards queued behind it at that actor will not run either
            for other in self.lines[attempt.w]:
                other.doomed = other.doomed or (other is not attempt and other.started is None)
        self._advance(attempt.w, attempt)
        self.lanes[self.role].release(attempt.w)
        if attempt.s is not None:
            self.lanes["schnell"].release(attempt.s)
        if future.state.is_completed():
            res = future.result()
            self.outcome.add(res)
            if attempt.started is not None:
                took = time.monotonic() - attempt.started
                self.slowest = took if self.slowest is None else max(self.slowest, took)
            self.log.info("shard %05d committed: %d pairs (%d rendered), %.1f MB, %.2fs, rendered on %s",
                          attempt.shard, res["pairs"], res["rendered"], res["bytes"] / 1e6, res["seconds"],
                          res["worker"])
            self.progress(self.outcome.committed, self.total)
            return
        if isinstance(exc, LeaseLost):  # a worker saw it first; Ray wraps the worker's exception
            raise LeaseLost(str(getattr(exc, "cause", None) or exc).splitlines()[0])
        reason = str(future.state.message or future.state.name)
        if isinstance(exc, PermanentCommitError):  # e.g. revoked credentials: more renders waste the GPUs
            self.outcome.failed[attempt.shard] = reason
            self.log.error("shard %05d: the store refused the commit for good: no further shard is started (%s)",
                           attempt.shard, reason)
            self.outcome.failed.update({s: "not started: the store refused an earlier commit for good"
                                        for s, _ in self.todo})
            self.todo.clear()
            return
        if attempt.killed or _actor_error(exc):
            self._suspect(self.role, attempt.w)
            if attempt.s is not None:
                self._suspect("schnell", attempt.s)
            if self._committed_anyway(attempt.shard):
                line = self.lines[attempt.w]
                if line and line[0].started is None:  # the actor had moved on to the next shard: it died on that
                    line[0].started = time.monotonic()  # one, which counts an attempt (a poison shard cannot
                return  # move from actor to actor for free)
        counted = attempt.tries + (attempt.started is not None)  # a shard still waiting at its actor never ran
        if counted > self.cfg.ray.shard_retries:
            self.outcome.failed[attempt.shard] = reason
            self.log.error("shard %05d failed after %d attempts: %s", attempt.shard, counted, reason)
            return
        self.outcome.moved += 1
        self.log.warning("shard %05d: %s; trying it again (attempt %d of %d)", attempt.shard, reason,
                         counted + 1, self.cfg.ray.shard_retries + 1)
        self.todo.appendleft((attempt.shard, counted))

    def _committed_anyway(self, shard: int) -> bool:
        """An actor that died right after committing a shard may lose the reply ("may or may not have been
        executed"): a shard whose object holds its planned rows counts as committed (it was missing when this
        run started, so this run rendered it, or committed it from a spool)."""
        rows = len(self.rows_of(shard))
        try:
            if self.prepared.dataset.shard_rows(shard) != rows:
                return False
        except StorageError:
            return False
        self.log.warning("shard %05d: its actor died, but the shard was committed before: not trying it again",
                         shard)
        self.outcome.add({"shard": shard, "rendered": rows, "seconds": 0.0, "found_committed": True})
        self.progress(self.outcome.committed, self.total)
        return True

    def _expire(self) -> None:
        """Kill the actors of shards past their deadline (a hung GPU): their shards move elsewhere."""
        limit = self._timeout()
        now = time.monotonic()
        for w, line in enumerate(self.lines):
            head = line[0] if line else None
            if head is None or head.started is None or head.killed or now - head.started <= limit:
                continue
            self.log.error("shard %05d has run for %.0fs on worker %d (timeout %.0fs): the worker is hung; "
                           "killing it and moving its shards", head.shard, now - head.started, w, limit)
            for a in line:
                a.killed, a.doomed = True, a is not head
            self._kill(self.role, w)
            if head.s is not None:
                self._kill("schnell", head.s)

    # -- workers ------------------------------------------------------------------------------------
    def _kill(self, role: str, i: int) -> None:
        import ray

        actor = sim.actor_of(self.pools[role][i])
        ray.kill(actor, no_restart=True)
        self._suspect(role, i)

    def _suspect(self, role: str, i: int) -> None:
        """Take worker ``i`` out of its pool and probe it: it comes back when it answers."""
        lane = self.lanes[role]
        actor = sim.actor_of(self.pools[role][i])
        for j, handle in enumerate(self.pools[role]):  # every simulated slot of that actor
            if sim.actor_of(handle) is actor and j not in lane.down:
                lane.take_down(j)
                self.probes[actor.info.remote()] = (role, j, actor)

    def _check_probes(self) -> None:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        if not self.probes:
            return
        ready, _ = ray.wait(list(self.probes), num_returns=len(self.probes), timeout=0)
        for ref in ready:
            role, i, actor = self.probes.pop(ref)
            if sim.actor_of(self.pools[role][i]) is not actor:
                continue  # already replaced
            try:
                ray.get(ref)
                self.lanes[role].bring_up(i)
                self.log.info("%s worker %d is back", role, i)
            except ActorUnavailableError:  # restarting: ask again (it answers once its pipelines are loaded)
                self.probes[actor.info.remote()] = (role, i, actor)
            except RayActorError:  # dead for good (restarts exhausted, or killed as hung)
                self._replace(role, i)

    def _replace(self, role: str, i: int) -> None:
        """Start a new actor for slot ``i`` (and the other slots of its simulated host); it joins once it answers."""
        key = (role, i)
        self.replacements[key] = self.replacements.get(key, 0) + 1
        if self.replacements[key] > MAX_REPLACEMENTS_PER_WORKER:
            self.log.error("%s worker %d was replaced %d times: leaving it out", role, i, MAX_REPLACEMENTS_PER_WORKER)
            return
        old = sim.actor_of(self.pools[role][i])
        slots = [j for j, h in enumerate(self.pools[role]) if sim.actor_of(h) is old]
        actor = generate.start_worker(self.cfg, self.prepared.dataset.uri, role, len(slots))
        self.outcome.replaced += 1
        self.log.warning("%s worker %d died for good; starting a replacement", role, i)
        for j in slots:
            self.pools[role][j] = sim.Slot(actor) if len(slots) > 1 else actor
            self.probes[actor.info.remote()] = (role, j, actor)

    def _no_worker_left(self) -> bool:
        """True (and every remaining shard failed) once no worker has been up for ``no_worker_timeout_s``."""
        if self.inflight or not self.todo or all(lane.up for lane in self.lanes.values()):
            self.no_worker_since = None
            return False
        now = time.monotonic()
        self.no_worker_since = self.no_worker_since or now
        if now - self.no_worker_since < self.cfg.ray.no_worker_timeout_s:
            return False
        reason = (f"no generation worker left: every {' or '.join(r for r, lane in self.lanes.items() if not lane.up)}"
                  f" worker is dead, or restarting with no room, for {now - self.no_worker_since:.0f}s")
        self.log.error(reason)
        self.outcome.failed.update({s: reason for s, _ in self.todo})
        self.todo.clear()
        return True

    def stop(self) -> None:
        generate.stop_workers(self.pools)


def _exception(state: Any) -> BaseException | None:
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable result is not a known error
        return None
    return result if isinstance(result, BaseException) else None


def run_shards(cfg: BuildConfig, prepared: build.Prepared, shards: list[int], progress: Any) -> ShardOutcome:
    """Render and commit ``shards`` on Ray workers; returns what was committed and which shards failed (and why).

    A pick is O(log W) (:class:`~facelift.tasks.build.placement.LeastBusy`); finished shards arrive on a queue
    (no scan of the shards in flight), so the flow's cost per shard does not grow with workers or shards."""
    import ray

    started_ray = _ray_up(cfg)
    dispatcher = None
    try:
        dispatcher = Dispatcher(cfg, prepared, shards, progress)
        return dispatcher.run()
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        if started_ray:
            ray.shutdown()
