"""Image files <-> uint8 tensors for the heads: every common PNG/JPEG/WebP variant, decoded to what a viewer shows.

Decoding (:func:`decode_image`):
- the pixel count is checked from the header, before any pixel is decoded: over ``max_pixels`` raises
  :class:`ImageTooLarge` (PIL's own decompression-bomb limit is replaced by this one);
- EXIF orientation is applied (the head sees the image upright; outputs carry no rotation tag);
- 16-bit greyscale (``I;16``, ``I``) is scaled to 8 bits (65535 -> 255), not clipped;
- palette images, greyscale, 1-bit and CMYK are converted to RGB; an embedded ICC profile is converted to sRGB
  (the space the heads were trained in), so outputs need no profile;
- alpha (RGBA, LA, PA, palette or greyscale transparency) is split off and returned beside the RGB: the
  pipeline writes it back unchanged into PNG/WebP outputs; JPEG has no alpha, so it is dropped there with a note.
Only torch and the standard library are imported at module import time.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
ALPHA_FORMATS = ("PNG", "WEBP")
DEFAULT_MAX_PIXELS = 8192 * 8192


class ImageTooLarge(ValueError):
    """The image has more pixels than the configured limit (it is skipped, not decoded)."""


@dataclass
class Decoded:
    """An image as the head sees it: ``rgb`` uint8 CHW (sRGB, upright) and ``alpha`` uint8 HW or None."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None = None
    provenance: dict[str, Any] | None = None  # a facelift provenance found in the file (PNG chunk or XMP)
    parameters: str | None = None  # an A1111 ``parameters`` text chunk found in the file

    @property
    def pixels(self) -> int:
        return int(self.rgb.shape[-2] * self.rgb.shape[-1])


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Encoded bytes -> :class:`Decoded`; raises :class:`ImageTooLarge` above ``max_pixels``.

    Pillow's own decompression-bomb limit is raised to ``max_pixels`` when that is higher (never lowered), so
    that ``--max-pixels`` above Pillow's 89 MP default takes effect."""
    import numpy as np
    from PIL import Image, ImageOps

    from facelift.tasks.enhance.metadata import read_metadata

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"too large: {exc}") from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageTooLarge(f"too large: {w}x{h} = {w * h / 1e6:.1f} MP > limit {max_pixels / 1e6:.1f} MP "
                                f"(raise --max-pixels to process it)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        icc = img.info.get("icc_profile")
        provenance, parameters = read_metadata(img)
        img = ImageOps.exif_transpose(img) or img
        img = _to_8bit(img)
        alpha = None
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            img = img.convert("RGBA")
            alpha = torch.from_numpy(np.asarray(img.getchannel("A"), dtype=np.uint8).copy())
        rgb_img = img if img.mode == "RGB" else img.convert("CMYK" if img.mode == "CMYK" else "RGB")
        rgb_img = _to_srgb(rgb_img, icc)
        arr = np.asarray(rgb_img, dtype=np.uint8)
    return Decoded(torch.from_numpy(arr.copy()).permute(2, 0, 1), alpha, provenance or None, parameters)


def _to_8bit(img):
    """16/32-bit greyscale -> 8-bit "L" by scaling (PIL's convert() clips everything above 255 to white)."""
    import numpy as np
    from PIL import Image

    if not img.mode.startswith("I"):
        return img
    arr = np.asarray(img).astype(np.float64)
    if not img.mode.startswith("I;16") and arr.max(initial=0) <= 255:  # 32-bit "I" that holds 8-bit values
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    return Image.fromarray(np.round(arr.clip(0, 65535) / 257.0).astype(np.uint8), "L")


def _to_srgb(img, icc: bytes | None):
    """RGB or CMYK with an optional ICC profile -> RGB in sRGB (no profile: assumed sRGB; CMYK: PIL's naive)."""
    from PIL import ImageCms

    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unreadable profile: fall back to treating the values as sRGB
    return img if img.mode == "RGB" else img.convert("RGB")


def output_format(suffix: str) -> str:
    fmt = FORMATS.get(suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported output format {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    return fmt


def encode_image(image: torch.Tensor, suffix: str, quality: int = 95, alpha: torch.Tensor | None = None,
                 metadata: dict[str, Any] | None = None) -> bytes:
    """uint8 CHW (+ optional uint8 HW alpha, kept for PNG/WebP) -> PNG/JPEG/WebP bytes (format from the suffix).

    ``metadata``: extra ``PIL.Image.save`` arguments (``pnginfo``, ``xmp``: see :mod:`.metadata`)."""
    from PIL import Image

    fmt = output_format(suffix)
    arr = image.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr, "RGB")
    if alpha is not None and fmt in ALPHA_FORMATS:
        img.putalpha(Image.fromarray(alpha.numpy(), "L"))
    buf = io.BytesIO()
    opts: dict[str, Any] = {"compress_level": 1} if fmt == "PNG" else {"quality": quality}
    opts.update(metadata or {})
    if fmt == "WEBP" and alpha is not None:
        opts["exact"] = True  # keep the RGB under transparent pixels
    img.save(buf, fmt, **opts)
    return buf.getvalue()
