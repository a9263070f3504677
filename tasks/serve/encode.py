"""An image of a response in the requested format, carrying its provenance inside the file the way ``facelift
generate`` writes it (:func:`facelift.tasks.generate.provenance_params`): PNG text chunks (JSON, A1111
``parameters``, XMP), or XMP (IPTC DigitalSourceType trainedAlgorithmicMedia) in WebP and JPEG. The response
also carries it (``X-Provenance`` header, or the JSON of a multi-image answer)."""

from __future__ import annotations

import io
from typing import Any

import torch

from facelift.tasks.generate import png_bytes, provenance_params

PIL_FORMATS = {"webp": "WEBP", "jpeg": "JPEG"}


def encode_image(image: torch.Tensor, provenance: dict[str, Any], output_format: str, quality: int) -> bytes:
    """uint8 CHW -> bytes of ``output_format`` (png, webp, jpeg)."""
    if output_format == "png":
        return png_bytes(image, provenance, compress_level=1)
    from PIL import Image

    fmt = PIL_FORMATS[output_format]
    buf = io.BytesIO()
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")
    pil.save(buf, fmt, quality=quality, **provenance_params(fmt, provenance))
    return buf.getvalue()
