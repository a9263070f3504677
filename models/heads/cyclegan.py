"""Unpaired head: CycleGAN (Zhu et al.) with ResNet-9 generators, 70x70 PatchGANs and LSGAN.

G: schnell -> dev, F: dev -> schnell, D_dev judges G's outputs, D_schnell judges F's. Generator loss =
LSGAN(G) + LSGAN(F) + lambda_cyc * (cycle L1 both ways) + lambda_idt * lambda_cyc * (identity L1 both ways);
discriminators see a 50-image history of fakes; Adam(0.5, 0.999); lr constant then linear decay to 0, over a
fixed schedule (no early stopping by default: it would cut the decay). ``total`` is the paper's
L_total = GAN(G, D_dev) + GAN(F, D_schnell) + lambda_cyc * cycle (no identity term).

Not the reference, off in ``full`` and on in the debug flavours (docs/train_heads.md, "A change of tone"):
``tone`` gives residual generators a global per-image colour transform (``GlobalTone``); ``tone_gan`` > 0
adds global discriminators ``T_dev`` and ``T_schnell`` (``ToneDiscriminator``, on each image's intensity
distribution) beside the PatchGANs, with that weight in the generator and discriminator losses. ``ema`` > 0
keeps ``G_ema``, an exponential moving average of G's weights (decay ``ema`` per step), and exports it
instead of G: the average damps the oscillation of the adversarial game (Yazici et al. 2019; StyleGAN's
G_ema).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from facelift.models.heads.base import Head, OptimizerSpec, adam
from facelift.models.heads.blocks import ImagePool, PatchDiscriminator, ResnetGenerator, ToneDiscriminator, init_weights
from facelift.models.losses import cycle_loss, identity_loss, lsgan_loss, ssim


@dataclass
class CycleGANConfig:
    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    n_layers_d: int = 3
    esa: bool = False
    esa_reduction: int = 4
    residual: bool = False  # generators predict a change of their input, starting at the identity (not the reference)
    tone: bool = False  # residual generators also apply a global per-image colour transform (GlobalTone)
    tone_gan: float = 0.0  # weight of global ToneDiscriminators beside the PatchGANs; 0: none (the reference)
    lambda_cyc: float = 10.0
    lambda_idt: float = 0.5
    pool_size: int = 50
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_fraction: float = 0.5  # last fraction of the training steps decays lr linearly to 0
    ema: float = 0.0  # > 0: export an exponential moving average of G's weights with this decay per step
    seed: int = 0  # seeds the image pools; weights come from the torch RNG (the loop seeds it per rank)

    def __post_init__(self) -> None:
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.tone and not self.residual:
            raise ValueError("tone=True needs residual=True (the colour transform is applied to the input)")
        if self.tone_gan < 0:
            raise ValueError(f"tone_gan must be >= 0, got {self.tone_gan}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema}")


def discriminator_accuracy(name: str, d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image, the fraction of ``d``'s patches on the right side of 0.5 (LSGAN targets: real 1, fake 0):
    ``<name>_acc_real`` on real images, ``<name>_acc_fake`` on generated ones. 0.5 on both is chance."""
    return {f"{name}_acc_real": (d(real) > 0.5).float().flatten(1).mean(1),
            f"{name}_acc_fake": (d(fake) < 0.5).float().flatten(1).mean(1)}


def linear_decay(total_steps: int | None, decay_fraction: float):
    """lr multiplier: 1 for the first (1 - decay_fraction) of the steps, then linear down to ~0."""
    if not total_steps or decay_fraction == 0:
        return lambda step: 1.0
    start = int(total_steps * (1 - decay_fraction))
    span = max(total_steps - start, 1)
    return lambda step: 1.0 - max(0, step - start) / (span + 1)


class CycleGANHead(Head):
    name: ClassVar[str] = "cyclegan"
    config_cls: ClassVar[type] = CycleGANConfig
    paired: ClassVar[bool] = False
    # lambda-independent (sweep-comparable) and closer to the goal than the adversarial generator loss
    monitor: ClassVar[str] = "l1"
    early_stopping: ClassVar[bool] = False  # the reference trains a fixed schedule (linear lr decay to 0)
    # export the end of that schedule: L1 to the paired dev image rewards doing nothing (docs/train_heads.md)
    selection: ClassVar[str] = "last"
    flavors: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # tiny and CPU-fast: residual generators and a higher lr so a few hundred steps learn, the tone parts and
        # the weight average so that one flavour learns a cast and a change of tone (docs/train_heads.md)
        "debug": {"ngf": 8, "n_blocks": 2, "ndf": 8, "n_layers_d": 2, "pool_size": 4, "residual": True, "lr": 1e-3,
                  "lambda_cyc": 2.0, "tone": True, "tone_gan": 4.0, "ema": 0.98},
    }

    def __init__(self, config: CycleGANConfig, flavor: str = "full") -> None:
        super().__init__(config, flavor)
        c = config
        self.G = ResnetGenerator(c.ngf, c.n_blocks, c.esa, c.esa_reduction, c.residual, c.tone)  # schnell -> dev
        self.F = ResnetGenerator(c.ngf, c.n_blocks, c.esa, c.esa_reduction, c.residual, c.tone)  # dev -> schnell
        self.D_dev = PatchDiscriminator(c.ndf, c.n_layers_d)
        self.D_schnell = PatchDiscriminator(c.ndf, c.n_layers_d)
        for m in (self.G, self.F, self.D_dev, self.D_schnell):
            init_weights(m)
        if c.tone_gan:  # global discriminators on each image's intensity distribution (default torch init)
            self.T_dev, self.T_schnell = ToneDiscriminator(), ToneDiscriminator()
        if c.residual:
            self.G.start_as_identity()
            self.F.start_as_identity()
        self.G_ema: ResnetGenerator | None = None
        if c.ema:  # the exported generator: G's weights averaged over the steps (not trained; never compiled)
            self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        # histories of generated images for the discriminators (training state; never saved)
        self.pool_dev = ImagePool(c.pool_size, c.seed)
        self.pool_schnell = ImagePool(c.pool_size, c.seed + 1)

    @property
    def size_multiple(self) -> int:
        return 4

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, b = batch["schnell"], batch["dev"]  # unpaired: any schnell batch, any dev batch
        c = self.config
        net_a, net_b = self.net_input(a), self.net_input(b)  # compiled: one graph per network (net_input)
        fake_b, fake_a = self.G(net_a), self.F(net_b)
        rec_a, rec_b = self.F(fake_b), self.G(fake_a)
        gan_g = lsgan_loss(self.D_dev(fake_b), True)
        gan_f = lsgan_loss(self.D_schnell(fake_a), True)
        cyc = cycle_loss(rec_a, a) + cycle_loss(rec_b, b)
        loss_g = gan_g + gan_f + c.lambda_cyc * cyc
        losses = {"gan_G": gan_g, "gan_F": gan_f, "cycle": cyc, "total": loss_g.detach()}
        if c.tone_gan:
            tone_g = lsgan_loss(self.T_dev(fake_b), True) + lsgan_loss(self.T_schnell(fake_a), True)
            losses["tone_G"] = tone_g
            loss_g = loss_g + c.tone_gan * tone_g
        if c.lambda_idt > 0:
            idt = identity_loss(self.G(net_b), b) + identity_loss(self.F(net_a), a)
            losses["identity"] = idt
            loss_g = loss_g + c.lambda_idt * c.lambda_cyc * idt
        pooled_b = self.net_input(self.pool_dev.query(fake_b) if self.training else fake_b.detach())
        pooled_a = self.net_input(self.pool_schnell.query(fake_a) if self.training else fake_a.detach())
        d_dev = 0.5 * (lsgan_loss(self.D_dev(net_b), True) + lsgan_loss(self.D_dev(pooled_b), False))
        d_schnell = 0.5 * (lsgan_loss(self.D_schnell(net_a), True) + lsgan_loss(self.D_schnell(pooled_a), False))
        losses.update({"loss": loss_g, "loss_D": d_dev + d_schnell, "D_dev": d_dev, "D_schnell": d_schnell})
        if c.tone_gan:
            t_d = 0.5 * (lsgan_loss(self.T_dev(b), True) + lsgan_loss(self.T_dev(pooled_b), False)
                         + lsgan_loss(self.T_schnell(a), True) + lsgan_loss(self.T_schnell(pooled_a), False))
            losses.update({"loss_D": losses["loss_D"] + c.tone_gan * t_d, "tone_D": t_d})
        return losses

    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """SSIM(x, F(G(x))): how much of the schnell image survives the round trip (paper Tables 2-3);
        l1: mean |G(x) - y| against the paired dev image (validation pairs are paired even here)."""
        a, b = batch["schnell"], batch["dev"]
        fake, fake_a = self.G(a), self.F(b)
        out = fake if self.G_ema is None else self.G_ema(a)  # what the head exports
        return {"ssim": ssim(a, self.F(fake)), "l1": (out - b).abs().flatten(1).mean(1),
                "change": (out - a).abs().flatten(1).mean(1),
                **discriminator_accuracy("D_dev", self.D_dev, b, fake),
                **discriminator_accuracy("D_schnell", self.D_schnell, a, fake_a),
                **(discriminator_accuracy("T_dev", self.T_dev, b, fake) if self.config.tone_gan else {})}

    def inference_module(self) -> nn.Module:
        return self.G if self.G_ema is None else self.G_ema

    @torch.no_grad()
    def after_step(self) -> None:
        if self.G_ema is not None:
            torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1 - self.config.ema)

    def configure_optimizers(self, total_steps: int | None = None, lr: float | None = None) -> list[OptimizerSpec]:
        c = self.config
        lr = lr or c.lr
        g_params = list(self.G.parameters()) + list(self.F.parameters())
        discriminators = [self.D_dev, self.D_schnell] + ([self.T_dev, self.T_schnell] if c.tone_gan else [])
        d_params = [p for d in discriminators for p in d.parameters()]
        specs = []
        for name, params, key in (("G", g_params, "loss"), ("D", d_params, "loss_D")):
            opt = adam(params, lr, (c.beta1, c.beta2))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(total_steps, c.decay_fraction))
            specs.append(OptimizerSpec(name, opt, key, params, sched))
        return specs
