"""The file pipeline of ``facelift enhance``: a folder, glob or object-store prefix in, the same names out.

Decoding and encoding run in thread pools overlapped with compute; images of equal size are batched together.
Memory is bounded whatever the folder holds:
- at most ``max(batch_size, 2 * workers)`` decodes are in flight;
- decoded images wait in per-size buckets holding at most ``hold_pixels`` pixels in all: past the budget the
  largest bucket is run as a (partial) batch. A folder of 300 distinct sizes no longer keeps 300 images;
- images over ``tile_pixels`` are run alone through the engine's tiled path (bounded device memory);
- at most ``max(batch_size, 2 * workers)`` outputs wait for their encode/upload.
Bound on host memory, beyond the model: about 3 bytes x (hold_pixels + window and queue x the largest image).

Per-file outcomes instead of aborting: a corrupt file, an out-of-memory batch that fails even per image and
tiled, a failed write, or a name that would escape ``dst`` is recorded in ``report.failed``; files over
``max_pixels`` are skipped with the reason in ``report.skipped``; existing outputs are not redone (``existing``)
unless ``overwrite``. ``dst`` equal to the source folder, or inside a source folder, is refused up front.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from facelift.tasks.enhance.engine import InferenceEngine, is_out_of_memory
from facelift.tasks.enhance.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    Decoded,
    ImageTooLarge,
    decode_image,
    encode_image,
    output_format,
)
from facelift.tasks.enhance.outputs import (
    ESCAPE,
    MANIFEST,
    EnhanceReport,
    check_destination,
    existing_keys,
    output_metadata,
    plan_jobs,
    skip_done,
    target_key,
    under,
)

__all__ = ["DEFAULT_HOLD_PIXELS", "DEFAULT_TILE_PIXELS", "ESCAPE", "MANIFEST", "EnhanceReport", "check_destination",
           "check_paths", "enhance_files", "existing_keys", "list_images", "source_root", "target_key", "trim_heap",
           "under"]

log = logging.getLogger(__name__)

DEFAULT_HOLD_PIXELS = 32 * 2**20  # ~100 MB of uint8 RGB waiting in size buckets
DEFAULT_TILE_PIXELS = 2048 * 2048  # larger images run tiled


def list_images(src: str, endpoint_url: str | None = None) -> tuple[str, list[str]]:
    """(base, image URIs) for a folder, a glob or an object-store prefix of PNG/JPEG/WebP files, or a file."""
    base, found, _ = _list(src, endpoint_url)
    return base, found


def source_root(src: str, endpoint_url: str | None = None) -> tuple[str, str, bool]:
    """(base URI, filesystem path or glob, is a folder) of a source, without listing it."""
    from facelift.storage import Store

    store = Store(src, endpoint_url)
    fs = store.fs
    path = store.root if store.is_local else fs._strip_protocol(store.root)
    prefix = "" if store.is_local else f"{store.protocol}://"
    if any(c in path for c in "*?["):
        return prefix + path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0], path, False
    if fs.isdir(path):
        return prefix + path.rstrip("/"), path, True
    if fs.isfile(path):
        return prefix + path.rsplit("/", 1)[0], path, False
    raise FileNotFoundError(f"no such folder, file or prefix: {src}")


def _list(src: str, endpoint_url: str | None) -> tuple[str, list[str], bool]:
    from facelift.storage import Store

    base, path, is_dir = source_root(src, endpoint_url)
    store = Store(src, endpoint_url)
    fs = store.fs
    prefix = "" if store.is_local else f"{store.protocol}://"
    if any(c in path for c in "*?["):
        found = [p for p in fs.glob(path) if p.lower().endswith(IMAGE_SUFFIXES)]
    elif is_dir:
        found = [p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES)]
    else:
        found = [path]
    if not found:
        raise FileNotFoundError(f"no PNG/JPEG/WebP images under {src}")
    return base, [prefix + p for p in sorted(found)], is_dir


def check_paths(src: str, dst: str, endpoint_url: str | None = None) -> None:
    """The destination checks of :func:`enhance_files`, without listing the source (run before loading a head)."""
    from facelift.storage import Store

    base, _, is_dir = source_root(src, endpoint_url)
    check_destination(src, base, is_dir, Store(dst, endpoint_url).url())


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc). Images of many distinct sizes fragment glibc's heap: without
    this, resident memory grew ~140 MB over 300 sizes although the pipeline held at most its pixel budget."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


@dataclass
class _Item:
    uri: str
    key: str
    image: Decoded


class _Pipeline:
    """Size buckets under a pixel budget -> engine (per-batch out-of-memory fallbacks) -> bounded writes."""

    def __init__(self, engine: InferenceEngine, out: Any, report: EnhanceReport, batch_size: int,
                 hold_pixels: int, tile_pixels: int, encoder: ThreadPoolExecutor, max_writes: int, bar: Any) -> None:
        self.engine, self.out, self.report, self.bar = engine, out, report, bar
        self.batch_size, self.hold_pixels, self.tile_pixels = batch_size, hold_pixels, tile_pixels
        self.encoder, self.max_writes = encoder, max_writes
        self.buckets: dict[tuple[int, int], list[_Item]] = {}
        self.held = 0
        self.writes: deque[tuple[_Item, Future[str]]] = deque()
        self.alpha_dropped = 0
        self.flushes = 0
        self.head: dict[str, Any] | None = None
        self.manifest: Any = None

    def add(self, item: _Item) -> None:
        if item.image.pixels > self.tile_pixels:
            self.compute([item], "tile")
            return
        shape = tuple(item.image.rgb.shape[-2:])
        bucket = self.buckets.setdefault(shape, [])
        bucket.append(item)
        self.held += item.image.pixels
        self.report.peak_held_pixels = max(self.report.peak_held_pixels, self.held)
        if len(bucket) >= self.batch_size:
            self.flush(shape)
        while self.held > self.hold_pixels and self.buckets:
            self.flush(max(self.buckets, key=lambda s: s[0] * s[1] * len(self.buckets[s])))

    def flush(self, shape: tuple[int, int]) -> None:
        items = self.buckets.pop(shape)
        self.held -= sum(i.image.pixels for i in items)
        self.compute(items, None)
        self.flushes += 1
        if self.flushes % 8 == 0:
            trim_heap()

    def finish(self) -> None:
        for shape in list(self.buckets):
            self.flush(shape)
        while self.writes:
            self._collect()
        if self.alpha_dropped:
            self.report.notes.append(f"alpha dropped: {self.alpha_dropped} image(s) with transparency were written "
                                     f"as JPEG, which has no alpha channel (use --format png or webp to keep it)")

    def compute(self, items: list[_Item], policy: str | None) -> None:
        for item, result in self._run(items, policy):
            if isinstance(result, BaseException):
                self.report.failed.append((item.uri, f"out of memory even alone and tiled: {result}"))
                self.bar.update(1)
            else:
                self._write(item, result)

    def _run(self, items: list[_Item], policy: str | None) -> Iterator[tuple[_Item, torch.Tensor | BaseException]]:
        """Run a batch; on out of memory, retry one image at a time, then tiled. The retry runs *after* the
        ``except`` block: inside it, the traceback keeps the failed batch's tensors (device memory) alive."""
        oom: BaseException | None = None
        try:
            result = self.engine.run_uint8(torch.stack([i.image.rgb for i in items]), policy)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            oom = RuntimeError(str(exc))  # the message alone: no traceback, no frames, no tensors
        if oom is None:
            yield from zip(items, result, strict=True)
            return
        self.engine.release_memory()  # the failed batch is garbage now, so its cached blocks can be returned
        if len(items) > 1:
            log.warning("out of memory on a batch of %d %s images: retrying one at a time", len(items),
                        "x".join(map(str, items[0].image.rgb.shape[-2:])))
            for item in items:
                yield from self._run([item], policy)
        elif policy != "tile":
            log.warning("out of memory on %s alone: retrying tiled", items[0].uri)
            yield from self._run(items, "tile")
        else:
            yield items[0], oom

    def _write(self, item: _Item, image: torch.Tensor) -> None:
        while len(self.writes) >= self.max_writes:
            self._collect()
        alpha = item.image.alpha
        if alpha is not None and output_format(posixpath.splitext(item.key)[1]) == "JPEG":
            self.alpha_dropped += 1
        fut = self.encoder.submit(self._save, item, image, alpha)
        self.writes.append((item, fut))

    def _save(self, item: _Item, image: torch.Tensor, alpha: torch.Tensor | None) -> str:
        suffix = posixpath.splitext(item.key)[1]
        metadata = output_metadata(output_format(suffix), item.image, self.head)
        self.out.write_bytes(item.key, encode_image(image, suffix, alpha=alpha, metadata=metadata))
        return self.out.url(item.key)

    def _collect(self) -> None:
        item, fut = self.writes.popleft()
        try:
            self.report.outputs.append(fut.result())
            self.report.processed += 1
            self.manifest.append({"key": item.key, "source": item.uri,
                                  "head_sha256": (self.head or {}).get("head_sha256", "")})
        except Exception as exc:  # noqa: BLE001 - a failed encode or upload is this file's failure only
            self.report.failed.append((item.uri, f"write failed: {type(exc).__name__}: {exc}"))
        self.bar.update(1)


def enhance_files(src: str, dst: str, engine: InferenceEngine, batch_size: int = 16, workers: int = 4,
                  out_format: str | None = None, endpoint_url: str | None = None, progress: bool = True, *,
                  max_pixels: int = DEFAULT_MAX_PIXELS, tile_pixels: int = DEFAULT_TILE_PIXELS,
                  hold_pixels: int = DEFAULT_HOLD_PIXELS, overwrite: bool = False,
                  head: dict[str, Any] | None = None) -> EnhanceReport:
    """Enhance every image under ``src`` into ``dst`` (same relative names; ``out_format`` e.g. ".png").

    ``head``: what the outputs record about the head (:func:`facelift.tasks.enhance.metadata.head_info`); its
    ``head_sha256`` is part of the rerun key."""
    from tqdm.auto import tqdm

    from facelift.storage import Store
    from facelift.tasks.enhance.manifest import Manifest

    if out_format is not None:
        output_format(out_format)
    if min(batch_size, workers, max_pixels, tile_pixels, hold_pixels) < 1:
        raise ValueError("batch_size, workers and the pixel limits must be positive")
    base, sources, src_is_dir = _list(src, endpoint_url)
    reader, out = Store(base, endpoint_url), Store(dst, endpoint_url)
    check_destination(src, base, src_is_dir, out.url())
    report = EnhanceReport(engine=engine.describe())
    start = time.perf_counter()
    manifest = Manifest(out, MANIFEST)
    jobs = plan_jobs(sources, base, out_format, out.url(), report)
    if not overwrite:
        jobs = skip_done(jobs, out, manifest, (head or {}).get("head_sha256", ""), report)
    if report.existing:
        log.info("%d outputs of this head already exist in %s: skipped (overwrite=True redoes them)",
                 report.existing, dst)

    def load(uri: str) -> Decoded:
        return decode_image(reader.fs.cat_file(uri.split("://", 1)[-1]), max_pixels)

    bar = tqdm(total=len(jobs), unit="img", disable=not progress, desc="enhance")
    window = max(batch_size, 2 * workers)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as dec, \
                ThreadPoolExecutor(workers, thread_name_prefix="encode") as enc:
            pipe = _Pipeline(engine, out, report, batch_size, hold_pixels, tile_pixels, enc, window, bar)
            pipe.head, pipe.manifest = head, manifest
            pending: deque[tuple[str, str, Future[Decoded]]] = deque()
            queue = iter(jobs)
            while True:
                for uri, key in queue:  # keep `window` decodes in flight, consume them in order
                    pending.append((uri, key, dec.submit(load, uri)))
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                uri, key, fut = pending.popleft()
                try:
                    image = fut.result()
                except ImageTooLarge as exc:
                    report.skipped.append((uri, str(exc)))
                    bar.update(1)
                    continue
                except Exception as exc:  # noqa: BLE001 - any unreadable/corrupt file is reported and skipped
                    report.failed.append((uri, f"{type(exc).__name__}: {exc}"))
                    bar.update(1)
                    continue
                pipe.add(_Item(uri, key, image))
            pipe.finish()
    finally:
        manifest.flush()
        bar.close()
    report.seconds = time.perf_counter() - start
    for path, err in report.failed:
        log.warning("failed %s: %s", path, err)
    for path, why in report.skipped:
        log.warning("skipped %s: %s", path, why)
    log.info("enhanced %d images (%d failed, %d skipped, %d already done) in %.2fs: %.1f img/s", report.processed,
             len(report.failed), len(report.skipped), report.existing, report.seconds, report.images_per_s)
    return report
