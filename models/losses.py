"""Losses and image metrics for the heads: gradient, LPIPS, LSGAN, cycle, identity, SSIM.

Imports only torch at module level; ``lpips`` and ``torchvision`` are imported when an LPIPS loss is built.
LPIPS backbone weights (torchvision AlexNet/VGG) come from a configured file or the torch hub cache, never
from the network; ``pnet_rand=True`` (random backbone) is for tests only.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
LPIPS_BACKBONE_ENV = "FACELIFT_LPIPS_BACKBONE"


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along W and H (NCHW)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def gradient_loss(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """GRAD(x, z): mean L1 distance between the image gradients of input ``x`` and output ``z``."""
    if x.shape != z.shape:
        raise ValueError(f"gradient_loss needs equal shapes, got {tuple(x.shape)} and {tuple(z.shape)}")
    gxw, gxh = image_gradients(x)
    gzw, gzh = image_gradients(z)
    return (gxw - gzw).abs().mean() + (gxh - gzh).abs().mean()


def lsgan_loss(pred: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: MSE of the patch scores against 1 (real) or 0 (fake)."""
    target = torch.ones_like(pred) if real else torch.zeros_like(pred)
    return F.mse_loss(pred, target)


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """L1 cycle-consistency ||F(G(x)) - x||_1 (weight it with lambda_cyc)."""
    return F.l1_loss(reconstructed, original)


def identity_loss(same: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """L1 identity ||G(y) - y||_1 (weight it with lambda_idt * lambda_cyc)."""
    return F.l1_loss(same, original)


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).to(dtype)
    return w.expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image (shape ``[N]``) of two NCHW batches in [-1, 1] (Gaussian window, data range 1).

    Always fp32, also inside autocast (in bf16, 0.932 reads 0.961)."""
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    with torch.autocast(a.device.type, enabled=False):
        return _ssim(a, b, window, sigma)


def _ssim(a: torch.Tensor, b: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    a = (a.float() + 1) / 2
    b = (b.float() + 1) / 2
    c = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    w = _gaussian_window(window, sigma, c, a.device, a.dtype)
    mu_a = F.conv2d(a, w, groups=c)
    mu_b = F.conv2d(b, w, groups=c)
    saa = F.conv2d(a * a, w, groups=c) - mu_a**2
    sbb = F.conv2d(b * b, w, groups=c) - mu_b**2
    sab = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1)


def resolve_lpips_backbone(net: str = "alex", path: str | None = None) -> Path:
    """The torchvision backbone file LPIPS needs: ``path``, ``$FACELIFT_LPIPS_BACKBONE`` or the torch cache."""
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS net {net!r}; valid: {', '.join(LPIPS_BACKBONE_FILES)}")
    configured = path or os.environ.get(LPIPS_BACKBONE_ENV)
    if configured:
        candidates = [Path(configured).expanduser()]
    else:
        hub = Path(torch.hub.get_dir())
        candidates = [hub / "checkpoints" / LPIPS_BACKBONE_FILES[net]]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"LPIPS {net} backbone weights not found; looked for {', '.join(str(c) for c in candidates)}. "
        f"Put torchvision's {LPIPS_BACKBONE_FILES[net]} there, or set the head's lpips_backbone / "
        f"${LPIPS_BACKBONE_ENV} to the file (nothing is downloaded)."
    )


class LPIPSLoss(nn.Module):
    """LPIPS distance (``lpips`` package), mean over the batch; inputs in [-1, 1]; frozen."""

    def __init__(self, net: str = "alex", backbone: str | None = None, pnet_rand: bool = False) -> None:
        super().__init__()
        try:
            import lpips
        except ImportError as exc:
            raise ImportError("the LPIPS loss needs the 'lpips' package (pip install lpips)") from exc
        import torchvision

        backbone_file = None if pnet_rand else resolve_lpips_backbone(net, backbone)
        # pnet_rand=True builds the backbone without touching the network; real weights are loaded below.
        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" from inside lpips
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        if backbone_file is not None:
            tv = torchvision.models.alexnet() if net == "alex" else torchvision.models.vgg16()
            try:
                tv.load_state_dict(torch.load(backbone_file, map_location="cpu", weights_only=True))
            except Exception as exc:  # noqa: BLE001 - one clear error for a bad file
                raise ValueError(f"LPIPS backbone {backbone_file} is not a torchvision {net} state dict: "
                                 f"{exc}") from exc
            features = tv.features
            for i in range(1, self.model.net.N_slices + 1):
                for idx, layer in getattr(self.model.net, f"slice{i}").named_children():
                    layer.load_state_dict(features[int(idx)].state_dict())
            log.info("LPIPS %s backbone loaded from %s", net, backbone_file)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPSLoss:  # always eval: frozen statistics
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(a, b, normalize=False).mean()


class FeatureDistanceProxy(nn.Module):
    """Stand-in for LPIPS where the ``lpips`` package is absent (GPU benchmark only): the same AlexNet
    feature stack with random weights, unit-normalised features, squared distance. Same cost, no meaning."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.features = torchvision.models.alexnet().features.eval().requires_grad_(False)
        self.taps = {1, 4, 7, 9, 11}

    def train(self, mode: bool = True) -> FeatureDistanceProxy:
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(())
        h = torch.cat([a, b], 0)
        for i, layer in enumerate(self.features[:max(self.taps) + 1]):  # the last pool is unused
            h = layer(h)
            if i in self.taps:
                fa, fb = h.chunk(2, 0)
                fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
                fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
                total = total + ((fa - fb) ** 2).sum(1).mean()
        return total


def build_perceptual(kind: str, net: str = "alex", backbone: str | None = None,
                     pnet_rand: bool = False) -> nn.Module:
    """``kind``: ``lpips`` (the real loss) or ``proxy`` (timing stand-in, see FeatureDistanceProxy)."""
    if kind == "lpips":
        return LPIPSLoss(net, backbone, pnet_rand)
    if kind == "proxy":
        return FeatureDistanceProxy()
    raise ValueError(f"unknown perceptual loss {kind!r}; valid: lpips, proxy")


def save_random_lpips_backbone(path: str | Path, net: str = "alex", seed: int = 0) -> Path:
    """Write a random-weight torchvision backbone in the real on-disk format (offline demos and tests)."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.alexnet() if net == "alex" else torchvision.models.vgg16()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
