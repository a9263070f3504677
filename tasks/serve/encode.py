"""An image of a response in the requested format: PNG with its provenance in text chunks (as ``facelift
generate`` writes it), or WebP / JPEG at ``output_quality``. WebP and JPEG carry no provenance inside the file:
the response carries it (``X-Provenance`` header, or the JSON of a multi-image answer)."""

from __future__ import annotations

import io
from typing import Any

import torch

from facelift.tasks.generate import png_bytes


def encode_image(image: torch.Tensor, provenance: dict[str, Any], output_format: str, quality: int) -> bytes:
    """uint8 CHW -> bytes of ``output_format`` (png, webp, jpeg)."""
    if output_format == "png":
        return png_bytes(image, provenance, compress_level=1)
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")
    pil.save(buf, {"webp": "WEBP", "jpeg": "JPEG"}[output_format], quality=quality)
    return buf.getvalue()
