"""Layers shared by the heads: ResNet generator (optional ESA), PatchGAN, CBAM residual U-Net, image pool.

Only torch is imported here, so these modules run on a bare GPU machine (bench) and in inference code.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """pix2pix/CycleGAN init: conv weights ~ N(0, gain), norm weights ~ N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


class ESA(nn.Module):
    """Enhanced Spatial Attention: a sigmoid mask computed at low resolution, multiplied onto ``x``.

    1x1 reduction by ``reduction``, strided 3x3 conv, max-pool(7, stride 3), a group of 3x3 convs,
    bilinear upsample back to the input size, 1x1 expansion (plus a 1x1 skip of the reduced features),
    sigmoid. The pool kernel shrinks to the feature map when it is smaller than 7 (small test images).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        f = max(channels // reduction, 1)
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 3 or x.shape[-2] < 3:
            raise ValueError(f"ESA needs feature maps of at least 3x3, got {tuple(x.shape[-2:])}")
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        k = min(7, c1.shape[-2], c1.shape[-1])
        v = F.max_pool2d(c1, kernel_size=k, stride=3)
        v = F.relu(self.conv_max(v))
        c3 = F.relu(self.conv3(v))
        c3 = self.conv3_(c3)
        c3 = F.interpolate(c3, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


class ResnetBlock(nn.Module):
    """Two reflection-padded 3x3 convs with InstanceNorm, residual; optional ESA on the residual branch."""

    def __init__(self, channels: int, esa: bool = False, esa_reduction: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )
        self.esa = ESA(channels, esa_reduction) if esa else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.esa(self.body(x))


class ResnetGenerator(nn.Module):
    """junyanz ResNet generator: c7s1-ngf, two stride-2 downs, ``n_blocks`` residual blocks, two ups, tanh.

    ``residual=True`` (not the reference): the network predicts a change of its input in the pre-tanh domain,
    ``z = tanh(atanh(x) + net(x))``, and ``start_as_identity`` zeroes the last conv, so training starts at the
    identity. InstanceNorm removes every image's mean colour at the first layer, so a small generator that
    must rebuild its output cannot keep an image's colours; a residual one keeps them and learns a colour
    shift in the last conv's bias (the debug flavours use it: tiny networks, a few hundred steps).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, esa: bool = False, esa_reduction: int = 4,
                 residual: bool = False, tone: bool = False) -> None:
        super().__init__()
        if tone and not residual:
            raise ValueError("the global tone branch needs a residual generator")
        self.residual = residual
        self.tone = GlobalTone() if tone else None
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf),
                                   nn.ReLU(True)]
        c = ngf
        for _ in range(2):
            layers += [nn.Conv2d(c, c * 2, 3, 2, 1), nn.InstanceNorm2d(c * 2), nn.ReLU(True)]
            c *= 2
        layers += [ResnetBlock(c, esa, esa_reduction) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(c // 2),
                       nn.ReLU(True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7)] + ([] if residual else [nn.Tanh()])
        self.model = nn.Sequential(*layers)
        # regional compilation (compile_regions): plain list, not registered, so state-dict keys do not change
        self._regions: list[nn.Module] | None = None

    def compile_regions(self, **kwargs: Any) -> None:
        """Regional ``torch.compile``: the stem (c7s1 + downs), every residual block, the tail (ups + c7s1).

        The residual blocks share one compiled graph (same code and shapes: the 9 blocks of G and of F),
        so compilation costs about one block, a stem and a tail instead of a whole unrolled generator.
        The layers are the same objects as in ``self.model``: weights, state dict and maths are unchanged.
        """
        layers = list(self.model)
        blocks = [i for i, m in enumerate(layers) if isinstance(m, ResnetBlock)]
        first, end = (blocks[0], blocks[-1] + 1) if blocks else (len(layers), len(layers))
        regions = [nn.Sequential(*layers[:first]), *layers[first:end]]
        if end < len(layers):
            regions.append(nn.Sequential(*layers[end:]))
        for region in regions:
            region.compile(**kwargs)
        self._regions = regions

    def start_as_identity(self) -> None:
        """Zero the last conv of a residual generator: its output is then its input."""
        if not self.residual:
            raise ValueError("only a residual generator starts as the identity")
        last = self.model[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        if self.tone is not None:
            self.tone.reset()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self._regions is None:
            h = self.model(h)
        else:
            for region in self._regions:
                h = region(h)
        if not self.residual:
            return h
        # in fp32: bf16 rounds 0.999 to 1 and atanh(1) is inf; returned in the network's dtype (autocast)
        base = x.float().clamp(-0.999, 0.999)
        if self.tone is not None:
            base = self.tone(base)
        return torch.tanh(torch.atanh(base) + h.float()).to(h.dtype)


class GlobalTone(nn.Module):
    """A per-image, per-channel affine colour transform ``x * (1 + gain) + bias``; a small MLP predicts gain
    and bias from the image's channel means and standard deviations. Starts as the identity.

    InstanceNorm removes every image's mean and contrast at the generator's first layer, so the convolutional
    path cannot tell a dark, flat image from a bright, contrasty one and cannot restore its tone: trained
    with L1 on paired tone-mapped pictures, a debug residual generator keeps 0.54-1.33x of the identity's
    colour error without this and 0.06-0.14x with it (tests/test_tone.py)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(True), nn.Linear(hidden, 6))

    def reset(self) -> None:
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        stats = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        gain, bias = self.mlp(stats).unsqueeze(-1).unsqueeze(-1).chunk(2, 1)
        return ((1 + gain) * x + bias).clamp(-0.999, 0.999)


class PatchDiscriminator(nn.Module):
    """PatchGAN (n_layers 3 = the 70x70 receptive field), InstanceNorm, LeakyReLU(0.2); raw scores."""

    def __init__(self, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), nn.InstanceNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), nn.InstanceNorm2d(ndf * mult),
                   nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ToneDiscriminator(nn.Module):
    """A global discriminator: scores a whole image (one score, shape ``[N, 1, 1, 1]``) from each channel's
    intensity distribution (mean, standard deviation, 5/25/50/75/95th percentiles) with a small MLP.

    The PatchGAN's InstanceNorm removes every image's brightness and contrast, so a PatchGAN alone cannot
    tell a flat, tinted image from a contrasty one; this one sees nothing else (a global discriminator
    beside the local one, as in EnlightenGAN, which learns tone from unpaired images)."""

    QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        n = 3 * (2 + len(self.QUANTILES))
        self.mlp = nn.Sequential(nn.Linear(n, hidden), nn.LeakyReLU(0.2, True), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2, True), nn.Linear(hidden, 1))

    @classmethod
    def statistics(cls, x: torch.Tensor) -> torch.Tensor:
        """``[N, 21]``: per channel, mean, std and the percentiles, in fp32."""
        f = x.float().flatten(2)
        q = torch.quantile(f, torch.tensor(cls.QUANTILES, device=f.device), dim=2)  # [Q, N, C]
        return torch.cat([f.mean(2), f.std(2), q.permute(1, 0, 2).flatten(1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self.statistics(x)
        return self.mlp(stats.to(self.mlp[0].weight.dtype)).view(-1, 1, 1, 1)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel attention (avg+max MLP) then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(a)
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(s))


class ResCBAMBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, CBAM, plus a (1x1 projected) skip, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True),
                                  nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.cbam = CBAM(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.cbam(self.body(x)) + self.skip(x))


class UNetCBAM(nn.Module):
    """Residual U-Net with CBAM; depth = len(channels) levels (``depth - 1`` poolings).

    Predicts a residual in the pre-tanh domain: ``z = tanh(atanh(x) + head(h))``, so an untrained net is
    close to the identity and the output stays in (-1, 1). With ``tone``, ``x`` there is first passed through
    a ``GlobalTone`` (a per-image, per-channel gain and bias), which starts as the identity too.
    """

    def __init__(self, channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512), tone: bool = False) -> None:
        super().__init__()
        self.tone = GlobalTone() if tone else None
        self.downs = nn.ModuleList()
        cin = 3
        for c in channels:
            self.downs.append(ResCBAMBlock(cin, c))
            cin = c
        self.ups = nn.ModuleList()
        for c in reversed(channels[:-1]):
            self.ups.append(ResCBAMBlock(cin + c, c))
            cin = c
        self.out = nn.Conv2d(cin, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, down in enumerate(self.downs):
            h = down(h)
            if i < len(self.downs) - 1:
                skips.append(h)
                h = F.max_pool2d(h, 2)
        for up in self.ups:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = up(torch.cat([h, skips.pop()], 1))
        base = x.clamp(-0.999, 0.999)
        if self.tone is not None:  # a per-image colour transform of the input, which the residual adds to
            base = self.tone(base)
        return torch.tanh(torch.atanh(base) + self.out(h))

    def start_as_identity(self) -> None:
        nn.init.zeros_(self.out.weight)
        if self.tone is not None:
            self.tone.reset()


class ImagePool:
    """History of generated images (Shrivastava et al.): the discriminator sees old fakes half the time.

    Holds detached past generator outputs (training state, not batch state); ``size`` 0 disables it.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self._rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """A detached batch like ``images`` (same shape, dtype and memory format): each image is the new one
        or, once the pool is full, with probability 1/2 a stored past one (which the new one replaces)."""
        if self.size == 0:
            return images.detach()
        out = torch.empty_like(images, requires_grad=False)  # keeps channels_last: no recompile downstream
        for i, image in enumerate(images.detach()):
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out[i] = image[0]
            elif self._rng.random() > 0.5:
                idx = self._rng.randrange(self.size)
                out[i] = self.images[idx][0]
                self.images[idx] = image.clone()
            else:
                out[i] = image[0]
        return out
