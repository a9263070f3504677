"""The optional safety checker of ``facelift serve``: diffusers' Stable Diffusion safety checker, as is.

What it is, honestly: a CLIP ViT-L/14 image embedding compared by cosine similarity with 17 fixed "concept"
embeddings (and 3 "special care" ones) and per-concept thresholds, all shipped as weights
(``CompVis/stable-diffusion-safety-checker``, ~1.2 GB); an image is flagged when any concept's similarity passes
its threshold. It was built for Stable Diffusion's outputs, is known to miss content and to flag benign images,
and judges the picture only (not the prompt). It is the one Replicate's and diffusers' pipelines default to.

On by default for the flux profile (``ServeConfig.safety_checker``); off for tiny (random pictures). A flagged
image is not returned: that request alone answers 422 with ``{"error": "the safety checker flagged ..."}``. The
weights come from the Hugging Face cache like FLUX's (``HF_HUB_OFFLINE=1``: download them once beforehand); a
missing model fails the replica's start with one line naming it.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
DEFAULT_MODEL = "CompVis/stable-diffusion-safety-checker"
FLAGGED = "the safety checker flagged this image; try another prompt or seed"


class SafetyChecker:
    """``checker(images)`` -> one flag per image (uint8 NCHW), True when flagged."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str | torch.device = "cpu") -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        try:
            self.processor = CLIPImageProcessor.from_pretrained(model)
            self.model = StableDiffusionSafetyChecker.from_pretrained(model).to(device).eval()
        except OSError as exc:
            raise RuntimeError(f"safety checker {model!r} could not be loaded ({str(exc).splitlines()[0][:200]}); "
                               f"download it once, point safety_checker_model at a local copy, or set "
                               f"safety_checker: false") from None
        self.device, self.name = torch.device(device), model
        log.info("safety checker %s on %s", model, self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[bool]:
        arrays = list(images.permute(0, 2, 3, 1).cpu().numpy())
        clip_input = self.processor(images=arrays, return_tensors="pt").pixel_values.to(self.device)
        floats = [a.astype("float32") / 255 for a in arrays]  # the checker blacks out flagged ones: our copy
        _, flagged = self.model(clip_input=clip_input.to(self.model.dtype), images=floats)
        return [bool(f) for f in flagged]
