"""Enhance stage: apply a trained head to any images (a folder, a glob, an object-store prefix, or tensors).

Reads a head (a head folder or a run URI ``<root>/runs/<id>``) and image files; writes the enhanced images under
the destination with the same relative names. Open :mod:`.files` first (the pipeline of ``facelift enhance``:
bounded memory, per-file outcomes, the out-of-memory retries); then :mod:`.outputs` (output names, reruns keyed
by the head's weights hash, the outputs' provenance), :mod:`.engine` (the batched, compiled inference engine
also used by evaluation and the Python API), :mod:`.images` (decoding every PNG/JPEG/WebP variant, encoding),
:mod:`.metadata` (provenance chunks and XMP other tools read, shared with ``generate``) and :mod:`.manifest`
(the JSON-lines record of a run). Only torch and the standard library are imported at package import time
(the GPU benchmark relies on it).
"""

from __future__ import annotations

from facelift.tasks.enhance.engine import (
    POLICIES,
    InferenceEngine,
    chunked,
    is_out_of_memory,
    pick_device,
    translate_batches,
)
from facelift.tasks.enhance.files import (
    DEFAULT_HOLD_PIXELS,
    DEFAULT_TILE_PIXELS,
    EnhanceReport,
    check_paths,
    enhance_files,
    list_images,
    target_key,
)
from facelift.tasks.enhance.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageTooLarge, decode_image, encode_image

__all__ = ["DEFAULT_HOLD_PIXELS", "DEFAULT_MAX_PIXELS", "DEFAULT_TILE_PIXELS", "IMAGE_SUFFIXES", "POLICIES",
           "EnhanceReport", "ImageTooLarge", "InferenceEngine", "check_paths", "chunked", "decode_image",
           "encode_image", "enhance_files", "is_out_of_memory", "list_images", "pick_device", "run_enhance",
           "target_key", "translate_batches"]


def run_enhance(src: str, dst: str, head: str, endpoint_url: str | None = None, device: str = "auto",
                batch_size: int = 16, policy: str = "pad", size: int | None = None, compile: bool | None = None,
                out_format: str | None = None, workers: int = 4, progress: bool = True,
                max_pixels: int = DEFAULT_MAX_PIXELS, tile_pixels: int = DEFAULT_TILE_PIXELS,
                hold_pixels: int = DEFAULT_HOLD_PIXELS, overwrite: bool = False) -> EnhanceReport:
    """Load the head (folder or run URI), prepare the engine, enhance ``src`` into ``dst``.

    Outputs carry the input's provenance plus this head's (name, run id, weights sha256); a rerun skips outputs
    this head made and refuses those of another head unless ``overwrite``."""
    from facelift.models.heads import load_head
    from facelift.tasks.enhance.metadata import head_info

    check_paths(src, dst, endpoint_url)
    loaded = load_head(head, endpoint_url)
    info = head_info(loaded.name, loaded.flavor, head, endpoint_url)
    engine = InferenceEngine.from_head(loaded, device=device, policy=policy, size=size, compile=compile)
    report = enhance_files(src, dst, engine, batch_size=batch_size, workers=workers, out_format=out_format,
                           endpoint_url=endpoint_url, progress=progress, max_pixels=max_pixels,
                           tile_pixels=tile_pixels, hold_pixels=hold_pixels, overwrite=overwrite, head=info)
    report.engine["head"] = head
    report.engine["head_sha256"] = info["head_sha256"]
    return report
