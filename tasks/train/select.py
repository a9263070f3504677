"""Which weights a training run exports, and whether they do anything.

Selection criteria (``TrainConfig.selection``; ``auto`` = the head's ``selection``):

- ``val``: the lowest validation ``val_<monitor>`` (U-Net: its loss, the paper's early-stopping setting). For the
  unpaired heads ``monitor`` is L1(G(x), dev), which rewards doing nothing (docs/train_heads.md, "Selection").
- ``last``: the weights at the end of the fixed schedule, as the reference CycleGAN keeps them (the GAN default).
- ``kid``: the lowest KID between the head's outputs on the val split's schnell images and the val split's dev
  images, on the FID Inception features in fp32, with evaluation's own code (``fid_input``, ``kid``).

:func:`identity_check` says whether an exported head is within noise of the identity: L1(head(x), x) relative
to L1(dev, x) on the val pairs.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import torch

from facelift.models.heads import Head
from facelift.tasks.train.data import to_model
from facelift.tasks.train.dist import gather_bytes

log = logging.getLogger(__name__)

SELECTIONS: dict[str, str] = {
    "val": "lowest validation loss of the head's monitor (U-Net: its training loss; CycleGANs: L1 to dev)",
    "last": "last weights of the fixed schedule",
    "kid": "lowest KID(head(val schnell), val dev) on the FID Inception features",
}
# a head whose mean change of its input is under this fraction of dev's is reported as near-identity
NEAR_IDENTITY_RATIO = 0.1
KID_SUBSETS = 50


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 NCHW (what evaluation feeds the feature network)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class KIDSelector:
    """KID of a head's val outputs against the val dev images; features of every worker's val share."""

    def __init__(self, weights: str | None, device: torch.device, world: int = 1, batch_size: int = 16,
                 resize: str | None = None, seed: int = 0) -> None:
        from facelift.models.metrics import DEFAULT_FID_RESIZE, FIDInceptionV3

        self.net = FIDInceptionV3.from_file(weights).to(device)
        self.device, self.world, self.batch_size, self.seed = device, world, batch_size, seed
        self.resize = resize or DEFAULT_FID_RESIZE
        self._ref: np.ndarray | None = None

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """fp32 Inception features of [-1, 1] images, gathered from every worker (rank order)."""
        from facelift.models.metrics import fid_input

        parts = [np.zeros((0, 2048), np.float32)]
        with torch.autocast(self.device.type, enabled=False):
            for i in range(0, len(images), self.batch_size):
                x = fid_input(float_to_uint8(images[i:i + self.batch_size]).cpu(), self.resize, self.device)
                parts.append(self.net(x).float().cpu().numpy())
        buf = io.BytesIO()
        np.save(buf, np.concatenate(parts))
        return np.concatenate([np.load(io.BytesIO(b)) for b in gather_bytes(buf.getvalue(), self.world,
                                                                             self.device)])

    @torch.no_grad()
    def __call__(self, head: Head, val: dict[str, torch.Tensor]) -> float:
        from facelift.tasks.evaluate.joint import kid

        if self._ref is None:  # the val dev images' features, once per run
            self._ref = self.features(to_model({"dev": val["dev"]}, self.device)["dev"])
        outs = [translate_eval(head, to_model({"schnell": val["schnell"][i:i + self.batch_size]}, self.device)
                               ["schnell"]) for i in range(0, len(val["schnell"]), self.batch_size)]
        fake = self.features(torch.cat(outs) if outs else val["schnell"].float())
        return kid(fake, self._ref, n_subsets=KID_SUBSETS, seed=self.seed).value


def translate_eval(head: Head, x: torch.Tensor) -> torch.Tensor:
    """``head.translate`` in eval mode and fp32 (restores train mode)."""
    was = head.training
    head.eval()
    try:
        with torch.compiler.set_stance("force_eager"), torch.autocast(x.device.type, enabled=False):
            return head.translate(x)
    finally:
        head.train(was)


@torch.no_grad()
def identity_check(head: Head, val: dict[str, torch.Tensor], device: torch.device,
                   batch_size: int = 16) -> dict[str, Any]:
    """How much the head changes its input on the val pairs, against how much dev differs from it.

    ``change_l1`` = mean |head(x) - x|, ``dev_l1`` = mean |dev - x|, ``ratio`` = their quotient; ``near_identity``
    when ``ratio < NEAR_IDENTITY_RATIO`` (the head does under a tenth of the change the data asks for)."""
    change = dev_change = 0.0
    n = len(val["schnell"])
    for i in range(0, n, batch_size):
        batch = to_model({k: v[i:i + batch_size] for k, v in val.items()}, device)
        x = batch["schnell"]
        z = translate_eval(head, x)
        change += float((z - x).abs().mean((1, 2, 3)).sum())
        dev_change += float((batch["dev"] - x).abs().mean((1, 2, 3)).sum())
    if n == 0 or dev_change == 0:
        return {"n": n, "change_l1": None, "dev_l1": None, "ratio": None, "near_identity": None,
                "threshold": NEAR_IDENTITY_RATIO}
    ratio = change / dev_change
    return {"n": n, "change_l1": change / n, "dev_l1": dev_change / n, "ratio": ratio,
            "near_identity": ratio < NEAR_IDENTITY_RATIO, "threshold": NEAR_IDENTITY_RATIO}


def identity_message(check: dict[str, Any], head: str) -> str:
    """One log line for the identity check (a warning's text when the head is near the identity)."""
    if check.get("ratio") is None:
        return f"{head}: no validation pairs to check the exported head against the identity"
    what = ("NEAR-IDENTITY: the exported head barely changes its input" if check["near_identity"]
            else "the exported head changes its input")
    return (f"{head}: {what}: mean |head(x) - x| = {check['change_l1']:.4f} is {check['ratio']:.1%} of "
            f"mean |dev - x| = {check['dev_l1']:.4f} on {check['n']} val pairs (flag below "
            f"{check['threshold']:.0%})")


def epoch_line(epoch: int, step: int, metrics: dict[str, float]) -> str:
    """One log line per validation: how far the exported head moves its input (as a share of dev's change) and,
    for GANs, each discriminator's accuracy on real and generated val images (0.5 = chance). A generator that
    does not move while its discriminator wins shows here, epoch by epoch."""
    parts = [f"epoch {epoch} (step {step})"]
    if metrics.get("val_change_ratio") is not None:
        parts.append(f"head changes its input by {metrics['val_change_ratio']:.1%} of dev's change")
    for name in sorted({k[4:-len("_acc_real")] for k in metrics if k.startswith("val_") and k.endswith("_acc_real")}):
        real, fake = metrics.get(f"val_{name}_acc_real"), metrics.get(f"val_{name}_acc_fake")
        if real is not None and fake is not None:
            parts.append(f"{name} accuracy real {real:.2f} / generated {fake:.2f}")
    if metrics.get("val_l1") is not None:
        parts.append(f"val L1 to dev {metrics['val_l1']:.4f}")
    return "; ".join(parts)
