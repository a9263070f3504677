"""Python API: ``enhance(images, head=...)`` makes schnell-looking images look like FLUX.1-dev;
``generate(prompts, head=...)`` makes them from prompts (FLUX.1-schnell, then the head).

```python
from facelift.api import enhance
from PIL import Image
out = enhance([Image.open("a.png")], head="s3://bucket/runs/abc")   # -> list of PIL images
```
``images``: one PIL image, a list of PIL images, a uint8 HWC numpy array (or a list of them), or a float
tensor NCHW in [-1, 1]. The result has the same kind and the same sizes. ``head``: a loaded head, a head
folder, or a run URI (``<root>/runs/<run_id>``); loaded heads are kept per (head, device, options).
A PIL result keeps the input's provenance (a facelift or A1111 image) and adds the head's (name, run id,
weights sha256), and a plain ``img.save(path)`` writes it: PNG chunks, JPEG/WebP XMP.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=4)
def _engine(head: str, endpoint_url: str | None, device: str, policy: str, compile: bool | None):
    from facelift.models.heads import load_head
    from facelift.tasks.enhance import InferenceEngine

    return InferenceEngine.from_head(load_head(head, endpoint_url), device=device, policy=policy, compile=compile)


def enhance(images: Any, head: Any, *, device: str = "auto", batch_size: int = 16, policy: str = "pad",
            compile: bool | None = None, endpoint_url: str | None = None) -> Any:
    """Apply a trained head to ``images`` (see the module docstring for the accepted kinds)."""
    import numpy as np

    from facelift.tasks.enhance import InferenceEngine, translate_batches

    if isinstance(head, str):
        engine = _engine(head, endpoint_url, device, policy, compile)
    elif hasattr(head, "inference_module"):
        engine = InferenceEngine.from_head(head, device=device, policy=policy, compile=compile)
    else:
        raise TypeError(f"head must be a head folder/run URI or a loaded head, not {type(head).__name__}")

    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"a tensor must be float NCHW RGB in [-1, 1], got {images.dtype} "
                             f"{tuple(images.shape)}")
        parts = [engine(images[i:i + batch_size]).to(images.device) for i in range(0, len(images), batch_size)]
        return torch.cat(parts).to(images.dtype)

    single = not isinstance(images, list | tuple)
    items = [images] if single else list(images)
    arrays = [_to_array(im, i) for i, im in enumerate(items)]
    outputs: list[np.ndarray | None] = [None] * len(arrays)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, arr in enumerate(arrays):
        by_size.setdefault(arr.shape[:2], []).append(i)
    for idx in by_size.values():  # equal sizes are batched together
        batch = torch.from_numpy(np.stack([arrays[i] for i in idx])).permute(0, 3, 1, 2)
        result = translate_batches(engine, batch, batch_size).permute(0, 2, 3, 1).numpy()
        for j, i in enumerate(idx):
            outputs[i] = result[j]
    record = _head_record(head, endpoint_url)
    results = [_like(items[i], out, record) for i, out in enumerate(outputs)]
    return results[0] if single else results


def _to_array(image: Any, index: int):
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    raise TypeError(f"image {index}: expected a PIL image or a uint8 HxWx3 array, got {type(image).__name__}"
                    + (f" {image.dtype} {image.shape}" if isinstance(image, np.ndarray) else ""))


def _like(original: Any, array: Any, head: dict[str, Any]) -> Any:
    """A PIL result keeps the input's provenance and adds the head's (a plain ``save`` writes both)."""
    from PIL import Image

    from facelift.tasks.enhance.metadata import COMPOSITE, TRAINED, attach, enhance_parameters, read_metadata

    if not isinstance(original, Image.Image):
        return array
    provenance, parameters = read_metadata(original)
    generated = bool(provenance) or parameters is not None
    return attach(Image.fromarray(array), {**provenance, "enhance": head},
                  enhance_parameters(parameters, head.get("head", ""), head.get("head_sha256", "")),
                  TRAINED if generated else COMPOSITE)


def _head_record(head: Any, endpoint_url: str | None) -> dict[str, Any]:
    """What an enhanced image records about its head (no weights hash for a head passed already loaded)."""
    if isinstance(head, str):
        return dict(_head_record_of(head, endpoint_url))
    from facelift import __version__

    return {"head": head.name, "head_flavor": head.flavor, "facelift_version": __version__}


@lru_cache(maxsize=2)
def _generator(head: str, profile: str, device: str, size: int | None, batch_size: int | None,
               endpoint_url: str | None):
    from facelift.tasks.generate import GenerateOptions, Generator

    return Generator(head, GenerateOptions(profile=profile, size=size, batch_size=batch_size, device=device,
                                           endpoint_url=endpoint_url))


def generate(prompts: str | list[str], head: str, *, seed: int = 0, profile: str = "tiny", device: str = "auto",
             size: int | None = None, batch_size: int | None = None, endpoint_url: str | None = None,
             with_schnell: bool = False) -> Any:
    """Portraits from prompts: FLUX.1-schnell text-to-image, then the head (models loaded once per options).

    One prompt -> one PIL image, a list -> a list (the i-th uses ``seed + i``). Each image's ``info`` holds its
    provenance (prompt, seed, model ids and revisions, weight hashes, head run id), and ``img.save(path)`` writes
    it (PNG: ``facelift`` JSON, A1111 ``parameters`` and XMP chunks; JPEG/WebP: XMP). ``with_schnell=True``
    returns (schnell, schnell + head) pairs instead.
    """
    from PIL import Image

    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    results = _generator(str(head), profile, device, size, batch_size, endpoint_url)(
        texts, [seed + i for i in range(len(texts))])

    def pil(t: torch.Tensor, provenance: dict[str, Any]) -> Image.Image:
        return provenance_image(Image.fromarray(t.permute(1, 2, 0).numpy(), "RGB"), provenance)

    out = [(pil(g.schnell, {**g.provenance, "image": "schnell"}),
            pil(g.enhanced, {**g.provenance, "image": "schnell+head"})) if with_schnell
           else pil(g.enhanced, {**g.provenance, "image": "schnell+head"}) for g in results]
    return out[0] if single else out


def provenance_image(img: Any, provenance: dict[str, Any]) -> Any:
    """``img`` carrying a generated image's provenance: in ``info``, and written by a plain ``img.save(path)``."""
    from facelift.tasks.enhance.metadata import attach
    from facelift.tasks.generate.provenance import a1111_parameters

    img.info.update({k: str(v) for k, v in provenance.items()})
    return attach(img, provenance, a1111_parameters(provenance))


@lru_cache(maxsize=8)
def _head_record_of(head: str, endpoint_url: str | None) -> dict[str, Any]:
    """Per head URI, like the engines above (an object-store head's weights are read once to hash them)."""
    from facelift.models.heads import read_head_config
    from facelift.tasks.enhance.metadata import head_info

    _, info = read_head_config(head, endpoint_url)
    return head_info(str(info.get("head")), str(info.get("flavor", "full")), head, endpoint_url)
