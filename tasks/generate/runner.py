"""``facelift generate`` over a prompts file of any length: streamed to disk, resumable, one failure fails one prompt.

- **Bounded memory.** Prompts are rendered a batch at a time and each image is encoded and written as soon as
  its batch is done (at most ``2 x batch`` images wait for their write); nothing is kept for the end.
- **manifest.jsonl** in the output folder: one record per prompt, keyed by (prompt, seed, head's weights
  sha256): ``ok`` with its file(s), or ``failed`` with the error. A rerun skips every prompt whose ``ok``
  record's file still exists, and renders the rest (failed ones included). A run killed part-way keeps what
  it wrote.
- **Per-prompt failures.** A batch that raises is retried one prompt at a time (outside the ``except``
  block, so the failed batch is freed first); a prompt that fails alone is recorded and the run goes on.
  ``max_consecutive_failures`` failures in a row stop the run (a broken GPU must not fail 10,000 prompts).
- **Names**: ``<prompt slug>-s<seed>.png`` (and ``-schnell.png``); a name already in the folder (another
  prompt with the same slug, another head, another run) gets ``-2``, ``-3``, ...: nothing is overwritten.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from facelift.tasks.generate.pipeline import Generated, GenerateOptions, Generator, png_bytes

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
Job = tuple[int, str, int]  # (index in the prompts, prompt, seed)


def slug(prompt: str, limit: int = 60) -> str:
    """A file-name-safe ASCII slug of a prompt ("A cat!" -> "a-cat"), at most ``limit`` characters."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:limit].strip("-") or "prompt"


def _render(gen: Callable[[list[str], list[int]], list[Generated]], jobs: list[Job]
            ) -> Iterator[tuple[Job, Generated | str]]:
    """(job, result or error text): a failed batch is retried one prompt at a time, after the failure is freed."""
    error = None
    try:
        results = gen([p for _, p, _ in jobs], [s for _, _, s in jobs])
    except Exception as exc:  # noqa: BLE001 - one prompt's failure must not end the run
        error = f"{type(exc).__name__}: {exc}".strip()
    if error is None:
        yield from zip(jobs, results, strict=True)
        return
    _release(gen)
    if len(jobs) == 1:
        yield jobs[0], error
        return
    log.warning("a batch of %d prompts failed (%s): retrying them one at a time", len(jobs), error)
    for job in jobs:
        yield from _render(gen, [job])


def _release(gen: Any) -> None:
    engine = getattr(gen, "engine", None)
    if engine is not None and hasattr(engine, "release_memory"):
        engine.release_memory()


class _Run:
    """The output folder's state: names taken, manifest records, and the bounded queue of writes."""

    def __init__(self, out: str, endpoint_url: str | None, head_hash: str, also_schnell: bool,
                 workers: int = 2) -> None:
        from facelift.storage import Store
        from facelift.tasks.enhance.files import existing_keys
        from facelift.tasks.enhance.manifest import Manifest

        self.store, self.head_hash, self.also_schnell = Store(out, endpoint_url), head_hash, also_schnell
        self.manifest = Manifest(self.store, MANIFEST)
        self.taken = existing_keys(self.store)
        self.done = {(r.get("prompt"), r.get("seed"), r.get("head_sha256")): r for r in self.manifest.records()}
        self.writes: deque[tuple[dict[str, Any], Future[list[str]]]] = deque()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="png")
        self.images: list[str] = []
        self.failed: list[dict[str, Any]] = []
        self.written: list[dict[str, Any]] = []

    def is_done(self, prompt: str, seed: int) -> bool:
        rec = self.done.get((prompt, seed, self.head_hash))
        if rec and rec.get("status") == "ok":
            return rec.get("file") in self.taken and (not self.also_schnell or rec.get("schnell_file") in self.taken)
        return self._unrecorded(prompt, seed)

    def _unrecorded(self, prompt: str, seed: int) -> bool:
        """A file of this key written by a run killed before its manifest line (a SIGKILL while up to 2 x batch
        writes were in flight): found by name, recognised by its own provenance, and recorded now."""
        from facelift.tasks.generate.pipeline import read_provenance

        base, n = f"{slug(prompt)}-s{seed}", 1
        while True:
            stem = base if n == 1 else f"{base}-{n}"
            if f"{stem}.png" not in self.taken:
                return False
            n += 1
            try:
                prov = read_provenance(self.store.read_bytes(f"{stem}.png"))
            except Exception:  # noqa: BLE001 - unreadable: not a finished image of this key
                continue
            if (prov.get("prompt"), prov.get("seed"), prov.get("head_sha256")) != (prompt, seed, self.head_hash):
                continue
            files = {"file": f"{stem}.png", **({"schnell_file": f"{stem}-schnell.png"} if self.also_schnell else {})}
            if all(f in self.taken for f in files.values()):
                self.manifest.append(self._record(prompt, seed, "ok", **files))
                return True

    def _name(self, prompt: str, seed: int) -> str:
        base, n = f"{slug(prompt)}-s{seed}", 1
        while True:
            stem = base if n == 1 else f"{base}-{n}"
            if f"{stem}.png" not in self.taken and f"{stem}-schnell.png" not in self.taken:
                return stem
            n += 1

    def _record(self, prompt: str, seed: int, status: str, **extra: Any) -> dict[str, Any]:
        return {"prompt": prompt, "seed": seed, "head_sha256": self.head_hash, "status": status,
                "time": datetime.now(UTC).isoformat(timespec="seconds"), **extra}

    def fail(self, prompt: str, seed: int, error: str) -> None:
        log.warning("prompt %r (seed %d) failed: %s", prompt, seed, error)
        self.failed.append({"prompt": prompt, "seed": seed, "error": error})
        self.manifest.append(self._record(prompt, seed, "failed", error=error))

    def write(self, g: Generated, window: int) -> None:
        stem = self._name(g.prompt, g.seed)
        files = {"file": f"{stem}.png", **({"schnell_file": f"{stem}-schnell.png"} if self.also_schnell else {})}
        self.taken.update(files.values())
        while len(self.writes) >= window:
            self.collect()
        record = self._record(g.prompt, g.seed, "ok", **files)
        self.writes.append((record, self.pool.submit(self._save, g, files)))

    def _save(self, g: Generated, files: dict[str, str]) -> list[str]:
        self.store.write_bytes(files["file"], png_bytes(g.enhanced, {**g.provenance, "image": "schnell+head"}, 1))
        if "schnell_file" in files:
            self.store.write_bytes(files["schnell_file"], png_bytes(g.schnell, {**g.provenance, "image": "schnell"},
                                                                    1))
        return [self.store.url(f) for f in files.values()]

    def collect(self) -> bool:
        record, fut = self.writes.popleft()
        try:
            uris = fut.result()
        except Exception as exc:  # noqa: BLE001 - a failed write fails this prompt only
            self.fail(record["prompt"], record["seed"], f"write failed: {type(exc).__name__}: {exc}")
            return False
        self.manifest.append(record)
        self.images += uris
        self.written.append({"uri": uris[0], "prompt": record["prompt"], "seed": record["seed"]})
        return True

    def close(self) -> None:
        """Finish the writes already started (also when the run is interrupted) and save the manifest."""
        try:
            while self.writes:
                self.collect()
        finally:
            self.pool.shutdown(wait=True)
            self.manifest.flush()


def run_generate(prompts: list[str], head: str, out: str, seed: int = 0, options: GenerateOptions | None = None,
                 also_schnell: bool = False, *, progress: bool = False, generator: Any = None,
                 max_consecutive_failures: int = 10) -> dict[str, Any]:
    """Generate one image per prompt (seeds ``seed``, ``seed + 1``, ...) into ``out``; skips what a previous run
    finished. ``generator``: an already loaded :class:`Generator` (default: loaded here, only if work is left)."""
    from tqdm.auto import tqdm

    from facelift.tasks.enhance.metadata import head_sha256

    if not prompts:
        raise ValueError("no prompts given")
    options = options or GenerateOptions()
    head_hash = head_sha256(head, options.endpoint_url)
    run = _Run(out, options.endpoint_url, head_hash, also_schnell)
    jobs = [(i, p, seed + i) for i, p in enumerate(prompts) if not run.is_done(p, seed + i)]
    existing = len(prompts) - len(jobs)
    if existing:
        log.info("%d of %d prompts already done in %s (manifest.jsonl): skipped", existing, len(prompts), out)
    gen = generator if generator is not None or not jobs else Generator(head, options)
    t0 = time.perf_counter()
    timing = {"schnell_s": 0.0, "head_s": 0.0}
    count, in_a_row = 0, 0
    bar = tqdm(total=len(prompts), initial=existing, unit="img", desc="generate", disable=not progress)
    try:
        batch = max(1, int(getattr(gen, "batch_size", 1) or 1))
        for start in range(0, len(jobs), batch):
            for (_, prompt, s), result in _render(gen, jobs[start:start + batch]):
                if isinstance(result, str):
                    run.fail(prompt, s, result)
                    in_a_row += 1
                    if in_a_row >= max_consecutive_failures:
                        raise RuntimeError(f"{in_a_row} prompts in a row failed, stopping (what was written is "
                                           f"kept; a rerun resumes); last error: {result}")
                else:
                    run.write(result, 2 * batch)
                    in_a_row, count = 0, count + 1
                    for k in timing:
                        timing[k] += result.seconds.get(k, 0.0)
                bar.update(1)
    finally:
        run.close()
        bar.close()
    seconds = time.perf_counter() - t0
    count -= sum(1 for f in run.failed if f["error"].startswith("write failed"))
    provenance = dict(gen.base_provenance) if gen is not None else {"head_uri": head, "head_sha256": head_hash}
    log.info("generated %d images (%d failed, %d already done) in %.1fs -> %s", count, len(run.failed), existing,
             seconds, out)
    return {"images": run.images, "count": count, "existing": existing, "failed": run.failed,
            "written": run.written, "seconds": round(seconds, 3), "manifest": run.manifest.url(),
            "schnell_s_per_image": round(timing["schnell_s"] / max(count, 1), 4),
            "head_s_per_image": round(timing["head_s"] / max(count, 1), 4), "provenance": provenance}
