"""Paired head: residual U-Net with CBAM (depth 6); loss = GRAD(x, z) + LPIPS(y, z), Adam lr 5e-5."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from facelift.models.heads.base import Head, OptimizerSpec, adam
from facelift.models.heads.blocks import UNetCBAM, init_weights
from facelift.models.losses import build_perceptual, gradient_loss, ssim


@dataclass
class UNetCBAMConfig:
    channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    lr: float = 5e-5
    beta1: float = 0.9
    beta2: float = 0.999
    grad_weight: float = 1.0
    lpips_weight: float = 1.0
    perceptual: str = "lpips"  # "lpips" (the loss) or "proxy" (timing stand-in where lpips is absent)
    lpips_net: str = "alex"
    lpips_backbone: str | None = None  # torchvision backbone file; None: $FACELIFT_LPIPS_BACKBONE / torch cache
    lpips_pnet_rand: bool = False  # random backbone: tests only
    tone: bool = False  # a GlobalTone on the input: per-image colour and level (docs/train_heads.md)
    seed: int = 0  # unused (weights come from the torch RNG, seeded per rank by the loop); saved heads have it

    def __post_init__(self) -> None:
        if len(self.channels) < 2:
            raise ValueError(f"unet_cbam needs at least 2 levels, got channels={self.channels}")
        if self.perceptual not in ("lpips", "proxy"):
            raise ValueError(f"perceptual must be 'lpips' or 'proxy', got {self.perceptual!r}")


class UNetCBAMHead(Head):
    """x (schnell) -> z; GRAD(x, z) keeps structure, LPIPS(y, z) pulls toward the dev target y."""

    name: ClassVar[str] = "unet_cbam"
    config_cls: ClassVar[type] = UNetCBAMConfig
    paired: ClassVar[bool] = True
    flavors: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # tiny; 40x the lr so a few hundred steps learn; the tone branch (docs/train_heads.md, "A change of tone")
        "debug": {"channels": (8, 16, 16), "lr": 2e-3, "tone": True},
    }

    def __init__(self, config: UNetCBAMConfig, flavor: str = "full") -> None:
        super().__init__(config, flavor)
        self.net = UNetCBAM(tuple(config.channels), config.tone)
        init_weights(self.net)
        self.net.start_as_identity()
        self._perceptual: nn.Module | None = None  # frozen loss network: not part of the saved state

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def perceptual(self, device: torch.device) -> nn.Module:
        if self._perceptual is None:
            c = self.config
            object.__setattr__(self, "_perceptual",
                               build_perceptual(c.perceptual, c.lpips_net, c.lpips_backbone, c.lpips_pnet_rand))
        if next(self._perceptual.parameters()).device != device:
            self._perceptual.to(device)
        return self._perceptual

    def objective(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's loss of an output ``z`` for input ``x`` and target ``y``: GRAD(x, z) + LPIPS(y, z)."""
        grad = gradient_loss(x, z)
        lp = self.perceptual(x.device)(y, z)
        c = self.config
        return {"loss": c.grad_weight * grad + c.lpips_weight * lp, "grad": grad, "lpips": lp}

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["schnell"], batch["dev"]
        return self.objective(x, y, self.net(x))

    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.net(batch["schnell"])
        return {"ssim": ssim(z, batch["dev"]), "ssim_input": ssim(z, batch["schnell"]),
                "l1": (z - batch["dev"]).abs().flatten(1).mean(1),
                "change": (z - batch["schnell"]).abs().flatten(1).mean(1)}

    def inference_module(self) -> nn.Module:
        return self.net

    def configure_optimizers(self, total_steps: int | None = None, lr: float | None = None) -> list[OptimizerSpec]:
        c = self.config
        params = list(self.net.parameters())
        opt = adam(params, lr or c.lr, (c.beta1, c.beta2))
        return [OptimizerSpec("net", opt, "loss", params)]
