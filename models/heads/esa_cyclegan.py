"""Unpaired head: CycleGAN with an Enhanced Spatial Attention block on every residual block of each
generator (1x1 reduction by 4, strided conv + max-pool(7, 3), conv group, bilinear upsample, 1x1, sigmoid,
multiply). Defaults are the paper's best sweep point: lambda_cyc 2, lr 1e-4."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from facelift.models.heads.cyclegan import CycleGANConfig, CycleGANHead


@dataclass
class ESACycleGANConfig(CycleGANConfig):
    esa: bool = True
    lambda_cyc: float = 2.0
    lr: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.esa:
            raise ValueError("esa_cyclegan always has ESA blocks (use the 'cyclegan' head without them)")


class ESACycleGANHead(CycleGANHead):
    name: ClassVar[str] = "esa_cyclegan"
    config_cls: ClassVar[type] = ESACycleGANConfig
    flavors: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # as the CycleGAN's debug flavour (docs/train_heads.md)
        "debug": {"ngf": 8, "n_blocks": 2, "ndf": 8, "n_layers_d": 2, "pool_size": 4, "residual": True, "lr": 1e-3,
                  "tone": True, "tone_gan": 4.0, "ema": 0.98},
    }
