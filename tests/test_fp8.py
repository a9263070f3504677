"""FP8 linears (models/fp8.py): numerics against nn.Linear, FLUX quantization, torch.compile, inference_mode."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from facelift.models.fp8 import (
    FLUX_SKIP_PREFIXES,
    FP8_DTYPE,
    Fp8Linear,
    flux_default_skip,
    fp8_supported,
    quantize_linears,
)

log = logging.getLogger(__name__)

# e4m3 keeps 3 mantissa bits: each operand rounds with <= 2^-4 relative error (~3.6% rms), so a K-long dot
# product of random data lands at ~3.5% relative rms error. A wrong scale or lost per-channel/per-token
# scaling shows up as >= 10%.
REL_BOUND = 0.05


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def make_linear(k: int, n: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def test_cpu_supported_and_cuda_reason() -> None:
    ok, why = fp8_supported("cpu")
    assert ok, why
    ok, why = fp8_supported("meta")
    assert not ok and "meta" in why
    if not torch.cuda.is_available():
        ok, why = fp8_supported("cuda")
        assert not ok and "CUDA" in why


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_close_to_linear_and_leading_dims(dtype: torch.dtype) -> None:
    lin = make_linear(128, 96).to(dtype)
    q = Fp8Linear.from_linear(lin)
    assert q.weight.dtype == FP8_DTYPE and q.weight.shape == (96, 128) and q.weight.is_contiguous()
    assert q.weight.t().stride() == (1, 128)  # column-major second operand for _scaled_mm
    assert q.weight_scale.dtype == torch.float32 and q.weight_scale.shape == (1, 96)
    x = torch.randn(2, 3, 7, 128).to(dtype)  # M = 42: not a multiple of 16 (only K and N must be)
    y = q(x)
    ref = lin(x)
    assert y.shape == (2, 3, 7, 96) and y.dtype == dtype
    err = rel_err(y, ref)
    assert 0.005 < err < REL_BOUND, err  # lossy (it is fp8) but within the e4m3 bound
    # the weight it multiplies by is the original within e4m3 rounding, channel by channel
    w_err = (q.dequantized_weight() - lin.weight.float()).norm(dim=1) / lin.weight.float().norm(dim=1)
    assert w_err.max() < 0.05


def test_wrong_scale_exceeds_bound() -> None:
    lin = make_linear(128, 96)
    x = torch.randn(64, 128)
    q = Fp8Linear.from_linear(lin)
    assert rel_err(q(x), lin(x)) < REL_BOUND
    bad = copy.deepcopy(q)
    bad.weight_scale.mul_(1.1)
    assert rel_err(bad(x), lin(x)) > 2 * REL_BOUND - 0.02  # a 10% scale error is visible


def test_per_channel_and_per_token_scales() -> None:
    """Rows of very different magnitude: a single per-tensor scale flushes the small ones to zero."""
    lin = make_linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-4, 2, 48)[:, None])  # output channels over 6 decades
    x = torch.randn(32, 64) * torch.logspace(-4, 3, 32)[:, None]  # tokens over 7 decades
    q = Fp8Linear.from_linear(lin)
    with torch.no_grad():
        y, ref = q(x), lin(x)
    per_elem = ((y - ref).abs() / ref.abs().clamp(min=1e-30))
    per_row_col = (y - ref).norm() / ref.norm()
    assert per_row_col < REL_BOUND
    # every token and every channel stays at the e4m3 error level (single rows average few terms: looser bound)
    tok = (y - ref).norm(dim=1) / ref.norm(dim=1)
    ch = (y - ref).norm(dim=0) / ref.norm(dim=0)
    assert tok.max() < 0.15 and ch.max() < 0.15, (tok.max(), ch.max())
    assert torch.isfinite(per_elem).all()
    # control: per-tensor scaling of the same data loses the small tokens entirely
    xs = x.abs().max() / 448
    x_pt = (x / xs).to(FP8_DTYPE).float() * xs
    tok_pt = (x_pt @ lin.weight.t() - ref).norm(dim=1) / ref.norm(dim=1)
    assert tok_pt.max() > 0.5


def test_bias_zero_rows_and_no_bias() -> None:
    lin = make_linear(32, 32)
    with torch.no_grad():
        lin.weight[3].zero_()  # an all-zero output channel (scale guard)
        lin.bias.fill_(5.0)
    q = Fp8Linear.from_linear(lin)
    x = torch.randn(4, 32)
    x[1] = 0  # an all-zero token (amax guard)
    y = q(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y[:, 3], torch.full((4,), 5.0))  # zero channel -> bias only
    assert torch.allclose(y[1], lin.bias)  # zero token -> bias only
    assert rel_err(y - 5.0, lin(x) - 5.0) < REL_BOUND
    q0 = Fp8Linear.from_linear(make_linear(32, 16, bias=False))
    assert q0.bias is None and q0(torch.zeros(2, 32)).abs().max() == 0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear(40, 32)
    with pytest.raises(TypeError, match="nn.Linear"):
        Fp8Linear.from_linear(nn.Conv1d(16, 16, 1))  # type: ignore[arg-type]
    q = Fp8Linear.from_linear(make_linear(32, 16))
    with pytest.raises(ValueError, match="last dim 32"):
        q(torch.randn(2, 48))
    with pytest.raises(ValueError, match="min_features"):
        quantize_linears(nn.Sequential(make_linear(32, 32)), min_features=0)


def test_to_dtype_keeps_fp8_storage() -> None:
    q = Fp8Linear.from_linear(make_linear(32, 32))
    scale = q.weight_scale.clone()
    q.to(torch.bfloat16)
    assert q.weight.dtype == FP8_DTYPE and q.weight_scale.dtype == torch.float32
    assert torch.equal(q.weight_scale, scale) and q.bias.dtype == torch.bfloat16
    q.half()
    assert q.weight.dtype == FP8_DTYPE and q(torch.randn(3, 32).half()).dtype == torch.float16
    state = q.state_dict()
    assert state["weight"].dtype == FP8_DTYPE and set(state) == {"weight", "weight_scale", "bias"}


def test_quantize_linears_skips_unaligned_small_and_named() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("a", nn.Linear(64, 64))
    model.add_module("odd", nn.Linear(64, 40))  # 40 is not a multiple of 16
    model.add_module("b", nn.Linear(40, 32))
    model.add_module("tiny", nn.Linear(32, 16))  # below min_features=32
    model.add_module("proj_out", nn.Linear(16, 16))  # a FLUX edge layer name
    before = {n: m for n, m in model.named_children()}
    stats = quantize_linears(model, min_features=32)
    assert isinstance(model.a, Fp8Linear)
    for name in ("odd", "b", "tiny", "proj_out"):
        assert getattr(model, name) is before[name] and type(getattr(model, name)) is nn.Linear
    assert stats["quantized"] == 1
    assert stats["skipped_by_reason"] == {"by_name": 1, "unaligned": 2, "small": 1}
    assert stats["linear_bytes_before"] == 64 * 64 * 4 and stats["linear_bytes_after"] == 64 * 64 + 64 * 4
    assert stats["module_bytes_after"] < stats["module_bytes_before"]
    # a custom predicate replaces the default list; quantizing twice is a no-op
    stats2 = quantize_linears(model, min_features=16, skip=lambda name, lin: lin.out_features == 40)
    assert stats2["quantized"] == 2 and isinstance(model.proj_out, Fp8Linear)
    assert quantize_linears(model, min_features=16, skip=None)["quantized"] == 0


def test_flux_skip_matches_top_level_prefix_only() -> None:
    lin = nn.Linear(16, 16)
    assert all(flux_default_skip(p, lin) for p in FLUX_SKIP_PREFIXES)
    assert flux_default_skip("time_text_embed.timestep_embedder.linear_1", lin)
    assert not flux_default_skip("single_transformer_blocks.3.proj_out", lin)
    assert not flux_default_skip("proj_out_extra", lin)


def test_inductor_fullgraph_inference_mode() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).to(torch.bfloat16)
    quantize_linears(mlp, min_features=16, skip=None)
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.inference_mode():
        eager = mlp(x)
        compiled = torch.compile(mlp, fullgraph=True)(x)
    assert compiled.shape == (3, 5, 64) and compiled.dtype == torch.bfloat16
    assert rel_err(compiled, eager) < 0.02  # same fp8 values; bf16 rounding of the epilogue may differ


# --- a tiny FLUX transformer (models.flux_arch "tiny": every linear is a multiple of 16) ------------------

B, S_IMG, S_TXT = 2, 64, 16


def flux_inputs(dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(B, S_IMG, 16, generator=g).to(dtype),
                encoder_hidden_states=torch.randn(B, S_TXT, 32, generator=g).to(dtype),
                pooled_projections=torch.randn(B, 32, generator=g).to(dtype),
                timestep=torch.full((B,), 0.5, dtype=dtype), img_ids=torch.zeros(S_IMG, 3),
                txt_ids=torch.zeros(S_TXT, 3), guidance=torch.full((B,), 3.5, dtype=dtype), return_dict=False)


@pytest.fixture(scope="module")
def flux() -> dict:
    from facelift.models.flux_arch import transformer

    torch.manual_seed(0)
    model = transformer("tiny", "dev").eval()
    with torch.inference_mode():
        ref = model(**flux_inputs(torch.float32))[0]
        # what the linears inside the blocks contribute: the same model with all of them zeroed
        hollow = copy.deepcopy(model)
        for name, mod in hollow.named_modules():
            if type(mod) is nn.Linear and not flux_default_skip(name, mod):
                mod.weight.zero_()
                mod.bias.zero_()
        signal = (ref - hollow(**flux_inputs(torch.float32))[0]).norm().item()
    return {"model": model, "ref": ref, "signal": signal}


def test_flux_quantized_close_and_smaller(flux: dict) -> None:
    model = copy.deepcopy(flux["model"])
    stats = quantize_linears(model, min_features=16)
    names = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert "single_transformer_blocks.0.proj_out" in names and "transformer_blocks.0.ff.net.2" in names
    assert "transformer_blocks.0.norm1.linear" in names and "transformer_blocks.0.attn.to_q" in names
    assert not any(n.split(".")[0] in FLUX_SKIP_PREFIXES for n in names)
    assert stats["quantized"] == 20 and stats["skipped_by_reason"]["by_name"] == 10
    assert stats["linear_bytes_after"] < 0.3 * stats["linear_bytes_before"]  # fp32 -> fp8 + scales
    assert stats["module_bytes_before"] - stats["module_bytes_after"] == \
        stats["linear_bytes_before"] - stats["linear_bytes_after"]
    with torch.inference_mode():
        y = model(**flux_inputs(torch.float32))[0]
        ref = flux["ref"]
        err = rel_err(y, ref)
        # relative to what the quantized layers carry (random-init blocks add a few % to the residual stream)
        err_signal = (y - ref).norm().item() / flux["signal"]
        for m in model.modules():
            if isinstance(m, Fp8Linear):
                m.weight_scale.mul_(1.1)
        bad_signal = (model(**flux_inputs(torch.float32))[0] - ref).norm().item() / flux["signal"]
    log.info("tiny FLUX fp8: output rel err %.4f, %.3f of the blocks' contribution (scale x1.1: %.3f)",
             err, err_signal, bad_signal)
    assert err < 0.02 and err_signal < 0.15, (err, err_signal)
    assert bad_signal > 0.15, bad_signal


def test_flux_bf16_fp8_compiles_fullgraph(flux: dict) -> None:
    model = copy.deepcopy(flux["model"]).to(torch.bfloat16)
    quantize_linears(model, min_features=16)
    inputs = flux_inputs(torch.bfloat16)
    torch._dynamo.reset()
    with torch.inference_mode():
        eager = model(**inputs)[0]
        # whole-model graph capture without breaks (aot_eager: inductor codegen of the full model takes ~45 s
        # on 2 CPU cores; test_inductor_fullgraph_inference_mode covers inductor's lowering of Fp8Linear)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(**inputs)[0]
    assert compiled.dtype == torch.bfloat16 and compiled.shape == eager.shape
    assert rel_err(compiled, eager) < 1e-2
    assert rel_err(eager, flux["ref"]) < 0.06  # bf16 + fp8 against the float32 model


def test_cuda_call_contract_under_fake_tensors() -> None:
    """Fake CUDA tensors run ATen's CUDA checks for _scaled_mm (row/col-major, K and N % 16, contiguous
    (M, 1) / (1, N) float32 scales) without a GPU; the call asks for bf16 and casts back to the input dtype."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[dict] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._scaled_mm.default:
                names = [a.name for a in func._schema.arguments]
                calls.append({**dict(zip(names, args, strict=False)), **kwargs})
            return func(*args, **kwargs)

    with FakeTensorMode(), Record():
        q = Fp8Linear(64, 48, device="cuda", bias_dtype=torch.bfloat16)
        for dtype in (torch.float32, torch.bfloat16):
            y = q(torch.randn(2, 7, 64, device="cuda", dtype=dtype))
            assert y.shape == (2, 7, 48) and y.dtype == dtype and y.device.type == "cuda"
        # control: the fake mode really enforces the CUDA layout rule
        a = torch.randn(14, 64, device="cuda").to(FP8_DTYPE)
        with pytest.raises(RuntimeError, match="col_major"):
            torch._scaled_mm(a, q.weight.t().contiguous(), scale_a=torch.ones(14, 1, device="cuda"),
                             scale_b=torch.ones(1, 48, device="cuda"), out_dtype=torch.bfloat16)
    assert len(calls) == 3
    for c in calls[:2]:
        assert c["out_dtype"] == torch.bfloat16
        assert c["self"].shape == (14, 64) and c["mat2"].stride() == (1, 64)
        assert c["scale_a"].shape == (14, 1) and c["scale_b"].shape == (1, 48)
        assert c["scale_a"].dtype == c["scale_b"].dtype == torch.float32
