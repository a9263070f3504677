"""Metric networks: FID Inception-v3 pool features, CLIP-IQA, LPIPS.

Every network resolves its weights from configuration (a file, a hub id or a local folder); nothing is
downloaded behind the user's back, and a missing weight is one clear error naming where it was looked for.

- :class:`FIDInceptionV3` is the TensorFlow-FID Inception as ported by pytorch-fid / torch-fidelity
  (``pt_inception-2015-12-05-6726825d.pth`` / ``weights-inception-2015-12-05-6726825d.pth``, 1008 classes,
  average pools that exclude padding, a max pool in the last block). Features: the 2048-d pool3 output.
- :func:`fid_input` brings uint8 images to the Inception's 299² input, with one of :data:`FID_RESIZES`:
  ``clean`` (clean-fid's: PIL bicubic of each channel as float32, no re-quantisation) or ``torch``
  (pytorch-fid's: bilinear ``F.interpolate`` inside the network, no antialias).
- :class:`ClipIQA` is the antonym-prompt CLIP-IQA ("Good photo." vs "Bad photo."): the softmax of the
  scaled cosine similarities of an image to both prompts; the score is the positive probability in [0, 1].
  With a transformers CLIP checkpoint it runs at the checkpoint's preprocessing (short side resized, centre
  crop: 224² for ViT-B/16), not as the original CLIP-IQA (RN50 at native resolution): :meth:`ClipIQA.variant`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

FID_WEIGHT_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
FID_FEATURE_DIM = 2048
FID_INPUT_SIZE = 299
FID_RESIZES = {  # how images reach the Inception's 299² input (fid_input)
    "clean": "clean-fid: PIL bicubic per channel on the uint8 values as float32, to 299², not re-quantised",
    "torch": "pytorch-fid: torch bilinear (align_corners=False, no antialias) to 299² inside the network",
}
DEFAULT_FID_RESIZE = "clean"
DEFAULT_CLIP_IQA_MODEL = "openai/clip-vit-base-patch16"
CLIP_IQA_PROMPTS = ("Good photo.", "Bad photo.")
LPIPS_ALEX_FILE = "alexnet-owt-7be5be79.pth"


class MetricWeightsError(FileNotFoundError):
    """A metric network's weights are missing or do not fit the network."""


@dataclass(frozen=True)
class MetricConfig:
    """Where the metric networks come from. ``None`` = the default search locations."""

    inception_weights: str | None = None
    clip_model: str = DEFAULT_CLIP_IQA_MODEL
    lpips_net: str = "alex"
    lpips_random_backbone: bool = False  # tests only: LPIPS with a random AlexNet (no weights needed)


# -- FID Inception ----------------------------------------------------------------------------------
def _torch_home() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser()


def fid_weight_candidates(path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where the FID Inception weights are looked for, in order."""
    if path:
        return [Path(path).expanduser()]
    dirs = [Path(os.environ.get("FACELIFT_CACHE", Path.home() / ".cache" / "facelift")).expanduser() / "weights",
            _torch_home() / "hub" / "checkpoints"]
    return [d / name for d in dirs for name in FID_WEIGHT_FILES]


def resolve_fid_weights(path: str | os.PathLike[str] | None = None) -> Path:
    candidates = fid_weight_candidates(path)
    for cand in candidates:
        if cand.is_file():
            return cand
    looked = ", ".join(str(c) for c in candidates)
    raise MetricWeightsError(
        f"FID Inception-v3 weights not found; looked for: {looked}. Download the pytorch-fid/torch-fidelity "
        f"file ({FID_WEIGHT_FILES[0]}) and pass its path (--inception-weights) or put it in one of those places."
    )


def file_sha256(path: str | os.PathLike[str], _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006
    """sha256 of a weights file (memoised per path, size and mtime: feature caches are keyed by it)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _cache[key] = h.hexdigest()
    return _cache[key]


def model_identity(name: str) -> str:
    """``name`` plus a hash of its weights when it is a local folder or file (a hub id names its own revision)."""
    path = Path(name).expanduser()
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else [path]
    files = [f for f in files if f.is_file()]
    if not files:
        return name
    digest = hashlib.sha256("".join(file_sha256(f) for f in files).encode())
    return f"{name}@sha256:{digest.hexdigest()[:16]}"


def _fid_blocks():
    from torchvision.models import inception as tv

    class FIDInceptionA(tv.InceptionA):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            return torch.cat([b1, b5, b3, bp], 1)

    class FIDInceptionC(tv.InceptionC):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            return torch.cat([b1, b7, bd, bp], 1)

    class FIDInceptionE(tv.InceptionE):
        def __init__(self, in_channels: int, max_pool: bool) -> None:
            super().__init__(in_channels)
            self.max_pool = max_pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            if self.max_pool:
                bp = F.max_pool2d(x, 3, stride=1, padding=1)
            else:
                bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            return torch.cat([b1, b3, bd, self.branch_pool(bp)], 1)

    return FIDInceptionA, FIDInceptionC, FIDInceptionE


class FIDInceptionV3(nn.Module):
    """Inception-v3 pool3 features (2048-d) with the TF-FID architecture. Input: NCHW in [-1, 1], any size."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        block_a, block_c, block_e = _fid_blocks()
        net.Mixed_5b = block_a(192, pool_features=32)
        net.Mixed_5c = block_a(256, pool_features=64)
        net.Mixed_5d = block_a(288, pool_features=64)
        net.Mixed_6b = block_c(768, channels_7x7=128)
        net.Mixed_6c = block_c(768, channels_7x7=160)
        net.Mixed_6d = block_c(768, channels_7x7=160)
        net.Mixed_6e = block_c(768, channels_7x7=192)
        net.Mixed_7b = block_e(1280, max_pool=False)
        net.Mixed_7c = block_e(2048, max_pool=True)
        self.net = net
        self.weights_sha256: str | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None) -> FIDInceptionV3:
        """Load the pytorch-fid / torch-fidelity weights file (clear error if missing or mismatched)."""
        found = resolve_fid_weights(path)
        try:
            state = torch.load(found, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file
            raise MetricWeightsError(f"cannot read FID Inception weights {found}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model = cls()
        missing, unexpected = model.net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("AuxLogits")]
        if missing or unexpected:
            raise MetricWeightsError(
                f"{found} is not an FID Inception-v3 state dict: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.weights_sha256 = file_sha256(found)
        log.info("FID Inception weights: %s", found)
        return model.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool3 features of NCHW images in [-1, 1]; other sizes than 299² are resized as pytorch-fid does."""
        net = self.net
        x = x.float()
        if tuple(x.shape[-2:]) != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        x = net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(net.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(net, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _resize_clean_one(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(channel.astype(np.float32)).resize((size, size), Image.BICUBIC))
                     for channel in image]).clip(0, 255)


@functools.cache
def _resize_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="clean-resize")


def clean_resize(images: torch.Tensor, size: int = FID_INPUT_SIZE) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW in [0, 255] at ``size``², as clean-fid's ``clean`` mode resizes.

    Each channel of the uint8 image becomes a float32 PIL image (mode ``F``), is resized with PIL's bicubic
    filter (antialiased: its support widens with the downscale factor) and clipped to [0, 255], without
    rounding back to uint8 (clean-fid ``make_resizer("PIL", quantize_after=False, "bicubic")``). PIL
    releases the GIL while resizing, so the images of a batch are resized in a thread pool.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"clean_resize takes uint8 NCHW RGB images, got {images.dtype} {tuple(images.shape)}")
    arrays = images.cpu().numpy()
    return torch.from_numpy(np.stack(list(_resize_pool().map(lambda a: _resize_clean_one(a, size), arrays))))


def fid_input(images: torch.Tensor, resize: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NCHW images -> the Inception's float input on ``device``, as the reference library of ``resize`` does.

    - ``clean`` (clean-fid's ``clean`` mode): :func:`clean_resize` to 299² here, then ``(x − 128) / 128`` (the TF
      Inception graph's own normalisation, which clean-fid applies);
    - ``torch`` (pytorch-fid, clean-fid's ``legacy_pytorch``): ``x / 127.5 − 1`` at the image's size;
      :class:`FIDInceptionV3` then resizes bilinearly to 299².
    """
    if resize not in FID_RESIZES:
        raise ValueError(f"unknown FID resize {resize!r}; valid: {', '.join(FID_RESIZES)}")
    if resize == "clean":
        return clean_resize(images).to(device).sub_(128.0).div_(128.0)
    return images.to(device).float().div_(127.5).sub_(1.0)


# -- CLIP-IQA ---------------------------------------------------------------------------------------
class ClipIQA(nn.Module):
    """CLIP-IQA with an antonym prompt pair. Input: NCHW in [-1, 1]; output: (N,) scores in [0, 1]."""

    def __init__(self, model: nn.Module, text_features: torch.Tensor, mean: list[float], std: list[float],
                 size: int, crop: int, source: str, tokenizer: Any = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text_features", F.normalize(text_features.float(), dim=-1))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.size, self.crop, self.source = size, crop, source
        self.tokenizer = tokenizer  # text_embeddings needs it (from_pretrained passes the checkpoint's)

    @classmethod
    def from_pretrained(cls, checkpoint: str = DEFAULT_CLIP_IQA_MODEL,
                        prompts: tuple[str, str] = CLIP_IQA_PROMPTS) -> ClipIQA:
        """Load a CLIP checkpoint (hub id or local folder) and embed the prompt pair once."""
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        local = Path(checkpoint).expanduser()
        if (checkpoint.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").is_file():
            raise MetricWeightsError(f"CLIP checkpoint folder {local} not found or has no config.json")
        try:
            model = CLIPModel.from_pretrained(str(local) if local.exists() else checkpoint)
            tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else checkpoint)
            proc = CLIPImageProcessor.from_pretrained(str(local) if local.exists() else checkpoint)
        except OSError as exc:
            raise MetricWeightsError(
                f"cannot load CLIP checkpoint {checkpoint!r} (a hub id needs the model in the local HF cache "
                f"or network access; or pass a local folder): {exc}"
            ) from exc
        model = model.eval().requires_grad_(False)
        tokens = tokenizer(list(prompts), padding=True, return_tensors="pt")
        with torch.no_grad():
            text = _features(model.get_text_features(**tokens))
        size = proc.size.get("shortest_edge") or proc.size.get("height")
        crop = proc.crop_size.get("height") if proc.do_center_crop else size
        return cls(model, text, list(proc.image_mean), list(proc.image_std), int(size), int(crop), checkpoint,
                   tokenizer)

    def variant(self) -> dict[str, str]:
        """What the table records: the checkpoint and how this CLIP-IQA differs from the original."""
        return {"clip_iqa_model": self.source,
                "clip_iqa_variant": f"{_architecture(self.model)}, short side bicubic to {self.size} + centre crop "
                                    f"{self.crop}², antonyms {CLIP_IQA_PROMPTS[0]!r}/{CLIP_IQA_PROMPTS[1]!r} "
                                    f"(original CLIP-IQA: RN50 at native resolution)"}

    def image_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embeddings of NCHW images in [-1, 1] (CLIP's resize, centre crop, normalise)."""
        x = (x.float().clamp(-1, 1) + 1) / 2
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.crop, round(h * scale)), max(self.crop, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top:top + self.crop, left:left + self.crop]
        x = (x - self.mean) / self.std
        return F.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=-1)

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm CLIP text embeddings (truncated to the tokenizer's 77 tokens)."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.mean.device)
        return F.normalize(_features(self.model.get_text_features(**tokens)).float(), dim=-1)

    def scores(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP-IQA from unit-norm image embeddings (:meth:`image_embeddings`)."""
        logits = self.model.logit_scale.exp().float() * image @ self.text_features.T
        return logits.softmax(dim=-1)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(self.image_embeddings(x))


def _architecture(model: nn.Module) -> str:
    """``ViT-B/16``-style name of a transformers CLIP vision tower (width -> B/L/H), else its class name."""
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    if vision is None or not getattr(vision, "patch_size", None):
        return type(model).__name__
    size = {768: "B", 1024: "L", 1280: "H"}.get(vision.hidden_size, f"w{vision.hidden_size}")
    return f"ViT-{size}/{vision.patch_size}"


def _features(out) -> torch.Tensor:
    """transformers 4 returns a tensor from get_*_features, 5 may return an output object."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


# -- LPIPS ------------------------------------------------------------------------------------------
def build_lpips(net: str = "alex", random_backbone: bool = False) -> nn.Module:
    """``lpips.LPIPS`` (inputs in [-1, 1]). The backbone comes from the torch cache; random only in tests."""
    import lpips

    if not random_backbone and net == "alex":
        path = _torch_home() / "hub" / "checkpoints" / LPIPS_ALEX_FILE
        if not path.is_file():
            raise MetricWeightsError(f"LPIPS AlexNet backbone not found at {path} (torchvision's alexnet weights)")
    model = lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False)
    return model.eval().requires_grad_(False)
