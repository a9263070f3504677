"""Issue 21's tone experiment: the debug heads trained in-process (the head's own step and optimizers, no
Ray) on the ``tone`` mapping of tests/learning_data.py, scored on fresh held-out pairs; a table of colour
residual and L1, each as a multiple of the identity's, per configuration, size and seed.

Configurations (CycleGANs, the debug flavour with): ``none`` (neither tone part), ``+tone`` (GlobalTone in the
residual generators),
``+tone_gan`` (global ToneDiscriminators, weight 4), ``+both`` (the debug flavours); all with lambda_cyc 2 and
lr 1e-3 (the debug flavours') and the weight average ``--ema`` (0.98, the debug flavours'; 0: G itself).
U-Net: ``debug`` (the paper's GRAD + LPIPS loss on a random AlexNet), ``L1`` (the same network trained
with L1 to dev: what the architecture can reach) and ``oracle`` (no network: a free per-channel gain and bias
for each held-out picture, optimised against the paper's loss on that very picture and its dev: what the loss
itself asks for).

    .venv/bin/python bench/tone_heads.py [--heads cyclegan,esa_cyclegan,unet_cbam] [--sizes 32] [--seeds 0,1,2,3]
        [--configs none,+both] [--tone-gan 4] [--ema 0.98] [--pairs 256] [--mapping tone] [--steps N]
        [--backbone-seed 0]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from learning_data import MAPPINGS, held_out_pairs, make_pairs, scores  # noqa: E402

from facelift.models.heads import build_head, train_step  # noqa: E402
from facelift.models.losses import save_random_lpips_backbone  # noqa: E402

log = logging.getLogger("bench.tone_heads")
STEPS = {32: 200, 64: 300}
GAN_CONFIGS = {"none": {"tone": False, "tone_gan": 0.0}, "+tone": {"tone": True, "tone_gan": 0.0},
               "+tone_gan": {"tone": False, "tone_gan": 4.0}, "+both": {"tone": True, "tone_gan": 4.0}}


def oracle(head, mapping: str, size: int, steps: int = 400) -> dict:
    """The paper's loss minimised per held-out picture over a per-channel ``(1 + gain) * x + bias``
    (GlobalTone's form; Adam lr 1e-2): the colour the loss itself asks for."""
    x, y = held_out_pairs(mapping, size)
    gain = torch.zeros(len(x), 3, 1, 1, requires_grad=True)
    bias = torch.zeros(len(x), 3, 1, 1, requires_grad=True)
    opt = torch.optim.Adam([gain, bias], lr=1e-2)
    toned = lambda: ((1 + gain) * x + bias).clamp(-0.999, 0.999)  # noqa: E731
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        head.objective(x, y, toned())["loss"].backward()
        opt.step()
    with torch.no_grad():
        return scores(x, y, toned())


def train(head_name: str, config: str, mapping: str, size: int, seed: int, n: int, backbone: str,
          tone_gan: float = 4.0, ema: float = 0.98, steps: int | None = None) -> dict:
    torch.manual_seed(seed)
    steps = steps or STEPS[size]
    if head_name == "unet_cbam":
        head = build_head(head_name, "debug", lpips_backbone=backbone)
        if config == "oracle":
            return oracle(head, mapping, size)
    else:
        parts = {k: (tone_gan if k == "tone_gan" and v else v) for k, v in GAN_CONFIGS[config].items()}
        head = build_head(head_name, "debug", lambda_cyc=2.0, lr=1e-3, ema=ema, **parts)
    head.train()
    optimizers = head.configure_optimizers(steps)
    xs, ys = make_pairs(mapping, size, n, 1000 + seed)
    pick = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, n, (4,), generator=pick)
        j = i if head.paired else torch.randint(0, n, (4,), generator=pick)
        if config == "L1":  # the U-Net's network with L1 to dev instead of the paper's loss
            spec = optimizers[0]
            spec.optimizer.zero_grad(set_to_none=True)
            (head.net(xs[i]) - ys[i]).abs().mean().backward()
            spec.optimizer.step()
        else:
            train_step(head, optimizers, {"schnell": xs[i], "dev": ys[j]})
    head.eval()
    x, y = held_out_pairs(mapping, size)
    with torch.no_grad():
        return scores(x, y, head.translate(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", default="cyclegan,esa_cyclegan,unet_cbam")
    p.add_argument("--sizes", default="32")
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--pairs", type=int, default=256, help="training pairs")
    p.add_argument("--mapping", default="tone", choices=sorted(MAPPINGS))
    p.add_argument("--configs", default=None, help="a subset of the configurations (default: all)")
    p.add_argument("--tone-gan", type=float, default=4.0, help="the tone discriminators' weight where they are on")
    p.add_argument("--ema", type=float, default=0.98, help="the CycleGANs' weight average (0: export G itself)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {STEPS} by size)")
    p.add_argument("--backbone-seed", type=int, default=0, help="seed of the random LPIPS AlexNet")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    folder = tempfile.TemporaryDirectory()
    backbone = str(save_random_lpips_backbone(Path(folder.name) / "alexnet-random.pth", seed=args.backbone_seed))
    rows = []
    for head_name in args.heads.split(","):
        configs = ["debug", "L1", "oracle"] if head_name == "unet_cbam" else list(GAN_CONFIGS)
        configs = [c for c in configs if args.configs is None or c in args.configs.split(",")]
        for config in configs:
            for size in (int(s) for s in args.sizes.split(",")):
                for seed in (int(s) for s in args.seeds.split(",")):
                    t0 = time.perf_counter()
                    got = train(head_name, config, args.mapping, size, seed, args.pairs, backbone, args.tone_gan,
                                args.ema, args.steps)
                    rows.append({"head": head_name, "config": config, "size": size, "seed": seed,
                                 "colour": got["cast"], "l1": got["l1"], "s": time.perf_counter() - t0})
                    log.info("%s %s %d² seed %d: colour %.3fx, L1 %.3fx identity", head_name, config, size,
                             seed, got["cast"], got["l1"])
    table = pd.DataFrame(rows)
    lines = ["| head | config | size | colour residual / identity's, per seed | worst | L1 / identity's |",
             "|---|---|---|---|---|---|"]
    for (head_name, config, size), g in table.groupby(["head", "config", "size"], sort=False):
        lines.append(f"| {head_name} | {config} | {size}² | {' '.join(f'{v:.2f}' for v in g['colour'])} | "
                     f"{g['colour'].max():.2f} | {' '.join(f'{v:.2f}' for v in g['l1'])} |")
    log.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
