"""Heads: registry, forward/backward (debug flavors), parameter counts, ESA, losses, save/load."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import torch

from facelift.models.heads import DEFAULT_COMPILE, HEADS, HeadError, build_head, compile_mode, load_head, train_step
from facelift.models.heads.blocks import ESA, PatchDiscriminator, ResnetGenerator
from facelift.models.losses import (
    LPIPSLoss,
    gradient_loss,
    lsgan_loss,
    resolve_lpips_backbone,
    save_random_lpips_backbone,
    ssim,
)
from facelift.storage import Store

TEST_OVERRIDES = {"unet_cbam": {"lpips_pnet_rand": True}}


def debug_head(name: str, **kw):
    return build_head(name, "debug", **{**TEST_OVERRIDES.get(name, {}), **kw})


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_registry_and_errors():
    assert list(HEADS) == ["unet_cbam", "cyclegan", "esa_cyclegan"]
    with pytest.raises(HeadError, match="unknown head 'pix2pix'; valid heads: unet_cbam, cyclegan, esa_cyclegan"):
        build_head("pix2pix")
    with pytest.raises(HeadError, match="valid: full, debug"):
        build_head("cyclegan", "huge")
    with pytest.raises(HeadError, match="unknown CycleGANConfig fields: lamda"):
        build_head("cyclegan", "debug", lamda=3)


@pytest.mark.parametrize("name", list(HEADS))
def test_debug_head_forward_backward(name: str):
    head = debug_head(name).train()
    batch = {"schnell": images(seed=1), "dev": images(seed=2)}
    optimizers = head.configure_optimizers(total_steps=10)
    before = {k: v.clone() for k, v in head.inference_module().state_dict().items()}
    losses = train_step(head, optimizers, batch)
    assert "loss" in losses and all(torch.isfinite(v) for v in losses.values())
    for spec in optimizers:
        assert losses[spec.loss_key].ndim == 0
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in spec.params)
    after = head.inference_module().state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the generator moved
    # stateless: no batch tensor is kept on the module
    kept = [v for v in vars(head).values() if isinstance(v, torch.Tensor)]
    assert not kept
    out = head.eval().translate(images(1, 32))
    assert out.shape == (1, 3, 32, 32) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="divisible by"):
        head.translate(images(1, 30))


def test_cyclegan_generator_loss_does_not_touch_discriminators():
    head = debug_head("cyclegan").train()
    g_spec, d_spec = head.configure_optimizers()
    losses = head.step({"schnell": images(seed=3), "dev": images(seed=4)})
    losses["loss"].backward(inputs=g_spec.params)
    assert all(p.grad is None for p in d_spec.params)


def test_full_flavor_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ResnetGenerator(64, 9)) == 11_378_179  # junyanz ResNet-9: 11.378M
    assert count(PatchDiscriminator(64, 3)) == 2_764_737  # 70x70 PatchGAN
    # ESA(256): 1x1 256->64, 1x1 64->64, four 3x3 64->64, 1x1 64->256 = 184,960 per residual block
    assert count(ResnetGenerator(64, 9, esa=True)) == 11_378_179 + 9 * 184_960
    with torch.device("meta"):
        sizes = {name: count(build_head(name, "full", **TEST_OVERRIDES.get(name, {}))) for name in HEADS}
    assert sizes["cyclegan"] == 2 * 11_378_179 + 2 * 2_764_737
    assert sizes["esa_cyclegan"] == sizes["cyclegan"] + 2 * 9 * 184_960
    assert sizes["unet_cbam"] == 33_065_308
    assert build_head("unet_cbam", "full").size_multiple == 32  # depth 6: five poolings


def test_esa_block_shape_and_mask_range():
    esa = ESA(32).requires_grad_(False)
    for size in (16, 40, 128):
        x = torch.randn(2, 32, size, size)
        mask = esa.mask(x)
        assert mask.shape == x.shape
        assert float(mask.min()) > 0 and float(mask.max()) < 1
        assert torch.allclose(esa(x), x * mask)
    with pytest.raises(ValueError, match="at least 3x3"):
        esa(torch.randn(1, 32, 2, 2))


def test_gradient_loss_on_known_images():
    flat = torch.zeros(1, 3, 8, 8)
    ramp = torch.linspace(0, 0.7, 8).expand(1, 3, 8, 8).clone()  # slope 0.1 along W
    assert float(gradient_loss(flat, flat + 0.5)) == 0.0  # a constant shift keeps every gradient
    assert float(gradient_loss(ramp, flat)) == pytest.approx(0.1, abs=1e-6)
    assert float(gradient_loss(ramp.transpose(-1, -2), flat)) == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match="equal shapes"):
        gradient_loss(flat, flat[..., :4])


@pytest.mark.parametrize("name", list(HEADS))
def test_construction_leaves_the_torch_seed_to_the_caller(name: str):
    """The loop seeds torch per rank (seed + rank) before building the head: a constructor that reseeds
    torch from its config would give every rank the same initial weights and the same random stream."""
    torch.manual_seed(1)
    a, after_a = debug_head(name), torch.rand(4)
    torch.manual_seed(2)
    b, after_b = debug_head(name), torch.rand(4)
    torch.manual_seed(1)
    c = debug_head(name)
    assert not torch.equal(after_a, after_b)
    differ = [k for k, v in a.state_dict().items() if v.is_floating_point() and not torch.equal(v, b.state_dict()[k])]
    assert differ  # another seed, other initial weights
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())  # the same seed, the same


@pytest.mark.parametrize("lambda_cyc", [10.0, 2.0])
def test_cyclegan_total_is_the_papers_objective(lambda_cyc: float):
    """``total`` = GAN(G, D_dev) + GAN(F, D_schnell) + lambda * cycle (the paper's L_total, no identity term);
    ``loss`` (what G minimises) adds the identity term."""
    head = debug_head("cyclegan", lambda_cyc=lambda_cyc).eval()
    with torch.no_grad():
        losses = head.step({"schnell": images(seed=12), "dev": images(seed=13)})
    total = losses["gan_G"] + losses["gan_F"] + lambda_cyc * losses["cycle"]
    assert torch.allclose(losses["total"], total)
    tone = head.config.tone_gan * losses["tone_G"]  # the debug flavour's tone discriminators (not the paper's)
    assert head.config.tone_gan > 0 and torch.allclose(losses["loss"], total + 0.5 * lambda_cyc * losses["identity"]
                                                       + tone)
    metrics = head.metrics({"schnell": images(seed=12), "dev": images(seed=13)})
    acc = {f"{d}_acc_{k}" for d in ("D_dev", "D_schnell", "T_dev") for k in ("real", "fake")}
    assert set(metrics) == {"ssim", "l1", "change"} | acc and metrics["l1"].shape == (2,)
    assert float(metrics["change"].max()) < 1e-3  # residual debug generators start as the identity
    assert all(((metrics[k] >= 0) & (metrics[k] <= 1)).all() for k in acc)
    with torch.no_grad():  # a discriminator that scores everything 1 is right on every real patch, no fake one
        head.D_dev.model[-1].weight.zero_()
        head.D_dev.model[-1].bias.fill_(1.0)
    metrics = head.metrics({"schnell": images(seed=12), "dev": images(seed=13)})
    assert torch.equal(metrics["D_dev_acc_real"], torch.ones(2)) and torch.equal(metrics["D_dev_acc_fake"],
                                                                                 torch.zeros(2))


def test_gan_losses_and_ssim():
    assert float(lsgan_loss(torch.ones(2, 1, 4, 4), True)) == 0.0
    assert float(lsgan_loss(torch.ones(2, 1, 4, 4), False)) == 1.0
    x = images(2, 32, seed=5)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert float(ssim(x, images(2, 32, seed=6)).mean()) < 0.2


def test_lpips_backbone_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FACELIFT_LPIPS_BACKBONE", raising=False)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(FileNotFoundError, match=str(expected)):
        resolve_lpips_backbone("alex")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_head("unet_cbam", "debug").step({"schnell": images(), "dev": images()})
    path = save_random_lpips_backbone(tmp_path / "alex.pth")
    loss = LPIPSLoss("alex", backbone=str(path))
    a = images(1, 64, seed=7)
    assert float(loss(a, a)) == pytest.approx(0.0, abs=1e-6) and float(loss(a, -a)) > 0


def test_save_load_round_trip_local_and_s3(tmp_path, seaweed):
    head = debug_head("esa_cyclegan", lambda_cyc=5.0)
    x = images(1, 32, seed=8)
    folder = tmp_path / "run" / "head"
    head.save(folder)
    info = json.loads((folder / "config.json").read_text())
    assert info["head"] == "esa_cyclegan" and info["flavor"] == "debug" and info["config"]["lambda_cyc"] == 5.0
    assert "facelift_version" in info
    for loaded in (load_head(str(folder)), load_head(str(tmp_path / "run"))):  # head folder and run folder
        assert loaded.config == head.config
        assert torch.equal(loaded.translate(x), head.eval().translate(x))
    s3 = Store(f"s3://facelift/heads-{uuid.uuid4().hex[:8]}/runs/r1", seaweed.endpoint)
    head.save(s3.child("head").url(), seaweed.endpoint)
    assert torch.equal(load_head(s3.url(), seaweed.endpoint).translate(x), head.translate(x))


def test_load_errors(tmp_path):
    with pytest.raises(HeadError, match="found neither config.json nor head/config.json"):
        load_head(str(tmp_path))
    debug_head("cyclegan").save(tmp_path / "cg")
    with pytest.raises(HeadError, match="is a 'cyclegan' head, not 'unet_cbam'"):
        load_head(str(tmp_path / "cg"), expect="unet_cbam")
    # weights of another head under a config that claims unet_cbam
    info = json.loads((tmp_path / "cg" / "config.json").read_text())
    unet = debug_head("unet_cbam")
    unet.save(tmp_path / "mixed")
    (tmp_path / "mixed" / "model.safetensors").write_bytes((tmp_path / "cg" / "model.safetensors").read_bytes())
    with pytest.raises(HeadError, match="does not match head 'unet_cbam'"):
        load_head(str(tmp_path / "mixed"))
    (tmp_path / "cg" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(HeadError, match="corrupt model.safetensors"):
        load_head(str(tmp_path / "cg"))
    (tmp_path / "cg" / "config.json").write_text(json.dumps({**info, "format": "something/else"}))
    with pytest.raises(HeadError, match="is not a facelift head"):
        load_head(str(tmp_path / "cg"))


def test_models_import_only_torch():
    code = ("import sys, models.heads, models.losses; "
            "bad = [m for m in ('ray', 'prefect', 'diffusers', 'lpips', 'facelift.storage', 'pydantic') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_proxy_perceptual_for_machines_without_lpips():
    head = debug_head("unet_cbam", perceptual="proxy", lpips_pnet_rand=False)
    x, y = images(2, 32, seed=9), images(2, 32, seed=10)
    proxy = head.perceptual(x.device)
    assert float(proxy(x, x)) == pytest.approx(0.0, abs=1e-6) and float(proxy(x, y)) > 0
    assert set(head.step({"schnell": x, "dev": y})) == {"loss", "grad", "lpips"}
    assert not any(k.startswith("_perceptual") for k in head.state_dict())  # the loss net is never saved


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_compile_modes_parse_and_errors():
    assert compile_mode(True) == DEFAULT_COMPILE == "regional"
    assert [compile_mode(v) for v in (False, None, "none", "full")] == ["none", "none", "none", "full"]
    with pytest.raises(HeadError, match="unknown compile mode 'fast'; valid: none, regional, full"):
        compile_mode("fast")
    head = debug_head("cyclegan")
    assert head.compile_modules("none") == "none" and head.compiled == "none"
    assert head.compile_modules("full", backend="eager") == "full"
    with pytest.raises(HeadError, match="already compiled"):
        head.compile_modules("regional")


# the reference networks: no tone parts, no weight average (the graph counts of docs/train_heads.md)
REFERENCE_PARTS = {"tone": False, "tone_gan": 0.0, "ema": 0.0}


@pytest.mark.parametrize("parts, backend, graphs", [(REFERENCE_PARTS, "inductor", 4), ({}, "aot_eager", None)],
                         ids=["reference", "debug-flavour"])
def test_compiled_training_matches_eager_without_recompiles(parts: dict, backend: str, graphs: int | None,
                                                            one_thread):
    """The default (regional) compiled ESA-CycleGAN step: with the reference networks, 4 graphs in the first
    step (generator stem, one residual block shared by all blocks of G and F, tail, one discriminator graph);
    with the debug flavour's tone parts and weight average, whatever the first step compiles. Either way none
    after (error_on_recompile), and the same losses and weights as eager over 4 steps (pool filling included)."""
    import torch._dynamo

    torch._dynamo.reset()
    batches = [{"schnell": images(seed=10 + i), "dev": images(seed=20 + i)} for i in range(4)]
    eager, compiled = debug_head("esa_cyclegan", **parts).train(), debug_head("esa_cyclegan", **parts).train()
    compiled.load_state_dict(eager.state_dict())  # construction draws from the torch RNG: same start
    init = {k: v.clone() for k, v in eager.state_dict().items()}
    assert compiled.compile_modules(True, backend=backend) == "regional"
    opt_eager, opt_compiled = eager.configure_optimizers(10), compiled.configure_optimizers(10)
    before = graphs_compiled()
    out = [train_step(compiled, opt_compiled, batches[0])]
    first = graphs_compiled() - before
    assert first == graphs if graphs is not None else first > 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        out += [train_step(compiled, opt_compiled, b) for b in batches[1:]]
    assert graphs_compiled() - before == first
    ref = [train_step(eager, opt_eager, b) for b in batches]
    for r, o in zip(ref, out, strict=True):
        assert set(r) == set(o)
        for key in r:
            assert torch.allclose(o[key], r[key], rtol=1e-3, atol=1e-5), (key, float(o[key]), float(r[key]))
    compiled_state = compiled.state_dict()
    assert set(compiled_state) == set(eager.state_dict())  # compilation does not rename weights
    # Adam's normalised steps amplify rounding where a grad is ~0: compare the updates on average
    moved = sum(float((v - init[k]).abs().sum()) for k, v in eager.state_dict().items())
    apart = sum(float((compiled_state[k] - v).abs().sum()) for k, v in eager.state_dict().items())
    assert moved > 0 and apart < 0.05 * moved, (apart, moved)


def test_full_compile_one_graph_per_network_under_autocast_channels_last():
    """GPU conditions on CPU (bf16 autocast, channels_last): real fp32 images, generated bf16 ones and
    pooled past fakes reach each network as one kind of input, so G/F and D compile one graph each and
    nothing recompiles; validation runs eager (no graphs for no-grad, eval or a smaller last batch)."""
    import torch._dynamo

    from facelift.tasks.train.loop import LoopEnv, validate

    torch._dynamo.reset()
    head = debug_head("esa_cyclegan", **REFERENCE_PARTS).to(memory_format=torch.channels_last).train()
    head.compile_modules("full", backend="aot_eager")  # dynamo + AOT autograd guards, no code generation
    optimizers = head.configure_optimizers(10)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    batch = {k: images(seed=s).contiguous(memory_format=torch.channels_last) for k, s in (("schnell", 1), ("dev", 2))}
    pooled = head.pool_dev.query(batch["dev"].to(torch.bfloat16))
    assert pooled.dtype == torch.bfloat16 and pooled.is_contiguous(memory_format=torch.channels_last)
    before = graphs_compiled()
    train_step(head, optimizers, batch, autocast)
    assert graphs_compiled() - before == 2
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):  # the pool (size 4) fills, then serves past fakes
            losses = train_step(head, optimizers, batch, autocast)
        val = {k: torch.cat([v, v[:1]]) for k, v in batch.items()}  # 3 images: last batch of 1
        metrics = validate(head, val, LoopEnv(), 2)
    assert graphs_compiled() - before == 2
    assert all(torch.isfinite(v) for v in losses.values())
    assert {"val_loss", "val_loss_D", "val_ssim"} <= set(metrics) and head.training


@pytest.mark.parametrize("decay", [0.5, 0.98])
def test_weight_average_is_the_exponential_average_of_g_and_is_exported(decay: float, tmp_path):
    """``ema``: after every step G_ema = decay * G_ema + (1 - decay) * G, checked against the average written
    out from G's own trajectory; translate (and so every export) runs G_ema; it is saved and loaded."""
    torch.manual_seed(0)
    head = build_head("cyclegan", "debug", ema=decay)
    optimizers = head.configure_optimizers(20)
    expected = {k: v.clone() for k, v in head.G.state_dict().items()}
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    for step in range(4):
        train_step(head, optimizers, {"schnell": x[:4], "dev": x[4:].flip(-1)})
        for k, v in head.G.state_dict().items():
            expected[k] = decay * expected[k] + (1 - decay) * v
        assert step > 0 or not torch.equal(head.G.model[-1].weight, head.G_ema.model[-1].weight)
    for k, v in head.G_ema.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-7)
    assert not any(p.requires_grad for p in head.G_ema.parameters())
    head.eval()
    assert head.inference_module() is head.G_ema
    torch.testing.assert_close(head.translate(x), head.G_ema(x).clamp(-1, 1))
    assert not torch.allclose(head.translate(x), head.G(x).clamp(-1, 1))
    loaded = load_head(head.save(tmp_path / "head")).eval()
    torch.testing.assert_close(loaded.translate(x), head.translate(x))
    assert build_head("cyclegan", "debug", ema=0.0).G_ema is None
    with pytest.raises(ValueError, match="ema must be in"):
        build_head("cyclegan", "debug", ema=1.0)
