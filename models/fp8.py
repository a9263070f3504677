"""FP8 (e4m3) linear layers for the FLUX transformer: weights and activations in float8, rowwise scales.

``Fp8Linear`` stores the weight as ``torch.float8_e4m3fn`` (N, K) row-major with one float32 scale per
output channel, quantizes the activation per row (per token) on every call and multiplies with
``torch._scaled_mm`` (rowwise scaling: ``scale_a`` (M, 1), ``scale_b`` (1, N), both float32).
``quantize_linears`` swaps eligible ``nn.Linear`` modules in place; ``fp8_supported`` says whether a
device can run it.

What ``torch._scaled_mm`` accepts (torch 2.14, checked against ``_meta_registrations`` and ATen):

- CPU: any M, K, N and any output dtype (float32, bfloat16, float16); no layout or alignment checks.
- CUDA: ``mat1`` row-major, ``mat2`` column-major, K and N multiples of 16 (M free); compute capability
  >= 8.9 (Ada, Hopper). Rowwise scaling writes bfloat16 (or float16) only, except cuBLAS >= 12.9 on
  SM 9.0 which also writes float32. We therefore always ask CUDA for bfloat16 and cast to the input
  dtype afterwards (float32 / float16 callers get their dtype back; FLUX runs in bfloat16 anyway).

Only torch is imported here, so GPU benchmarks can use this module without diffusers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
_EPS = 1e-12  # amax floor: an all-zero row quantizes to zeros instead of dividing by zero
_ALIGN = 16  # torch._scaled_mm on CUDA: K and N must be multiples of 16

# Top-level FLUX submodules left in high precision. They are small (a few % of the 12B weights, so
# little memory or time to win) and they sit at the model's edges where errors are not averaged away:
# ``x_embedder`` / ``context_embedder`` read the raw latents and T5 states, ``time_text_embed`` builds the
# conditioning vector that modulates every block, and ``norm_out`` / ``proj_out`` write the predicted
# velocity that the scheduler integrates directly. Names match a top-level prefix only: the single
# blocks have their own ``proj_out`` (``single_transformer_blocks.N.proj_out``, 15360 -> 3072), which
# IS quantized.
FLUX_SKIP_PREFIXES: tuple[str, ...] = ("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out")

# Below this width a layer's matmul is too cheap for fp8 to pay for the per-call activation quantization.
DEFAULT_MIN_FEATURES = 1024


def _quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D tensor per row: (fp8 values, float32 scale of shape (rows, 1)), t ≈ values * scale."""
    # abs/amax are exact in any float dtype: reduce in the input dtype (half the bytes of bf16 -> fp32 first)
    scale = t.abs().amax(dim=1, keepdim=True).float().clamp(min=_EPS) / FP8_MAX
    # e4m3fn has no inf: clamp so an out-of-range value (rounding at the edge) saturates on every backend
    q = (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


class Fp8Linear(nn.Module):
    """``y = x @ W.T + b`` with W and x in float8 e4m3 (per-output-channel / per-token float32 scales).

    Buffers: ``weight`` (N, K) float8_e4m3fn row-major (so ``weight.t()`` is the column-major operand
    ``_scaled_mm`` wants), ``weight_scale`` (1, N) float32; ``bias`` stays a high-precision parameter.
    ``Module.to(dtype)`` / ``.half()`` leave the fp8 weight and its float32 scale alone (see ``_apply``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 device: torch.device | str | None = None, bias_dtype: torch.dtype = torch.float32,
                 fast_accum: bool = False) -> None:
        super().__init__()
        if in_features % _ALIGN or out_features % _ALIGN:
            raise ValueError(f"Fp8Linear needs in_features and out_features divisible by {_ALIGN} "
                             f"(torch._scaled_mm), got {in_features} -> {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.fast_accum = fast_accum  # CUDA only: fp8 accumulation inside the tensor-core MMA (faster, less exact)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones(1, out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, fast_accum: bool = False) -> Fp8Linear:
        """Quantize ``linear``'s weight per output channel (scale = amax / 448; all-zero rows get scale 1)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Fp8Linear.from_linear expects an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device,
                  bias_dtype=w.dtype, fast_accum=fast_accum)
        with torch.no_grad():
            amax = w.float().abs().amax(dim=1)
            scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
            out.weight.copy_((w.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE))
            out.weight_scale.copy_(scale[None, :])
            if linear.bias is not None:
                out.bias.copy_(linear.bias.detach())
        return out

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight this layer actually multiplies by, (N, K) in ``dtype``."""
        return (self.weight.float() * self.weight_scale.t()).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Fp8Linear expected last dim {self.in_features}, got input of shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        x_fp8, x_scale = _quantize_rows(x2)
        # CUDA rowwise _scaled_mm writes bf16 (fp32 only on SM 9.0 with cuBLAS >= 12.9): compute in bf16 there
        # and cast back; the CPU kernel writes any float dtype directly.
        mm_dtype = x.dtype if x.device.type == "cpu" else torch.bfloat16
        y = torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale, out_dtype=mm_dtype,
                             use_fast_accum=self.fast_accum)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Fp8Linear:
        # Module.to(dtype) casts every floating tensor, float8 included: keep the stored dtypes, move devices only.
        kept = {"weight": self.weight, "weight_scale": self.weight_scale}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def extra_repr(self) -> str:
        extra = ", fast_accum" if self.fast_accum else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"fp8=e4m3{extra}"


def skip_prefixes(prefixes: tuple[str, ...]) -> Callable[[str, nn.Linear], bool]:
    """A ``skip`` predicate for :func:`quantize_linears`: true for modules named ``p`` or ``p.*``."""
    def skip(name: str, linear: nn.Linear) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)
    return skip


flux_default_skip = skip_prefixes(FLUX_SKIP_PREFIXES)


def _tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def quantize_linears(module: nn.Module, *, min_features: int = DEFAULT_MIN_FEATURES,
                     skip: Callable[[str, nn.Linear], bool] | None = flux_default_skip,
                     fast_accum: bool = False) -> dict[str, Any]:
    """Replace eligible ``nn.Linear`` submodules of ``module`` by :class:`Fp8Linear`, in place.

    Eligible: both dims multiples of 16, both >= ``min_features``, and ``skip(name, linear)`` false
    (default: the FLUX edge layers in :data:`FLUX_SKIP_PREFIXES`; pass ``skip=None`` to skip nothing).
    Quantize after moving the model to its device and dtype. Returns counts and bytes (``linear_*``:
    the replaced layers' weights + scales; ``module_*``: every parameter and buffer).
    """
    if min_features < 1:
        raise ValueError(f"min_features must be >= 1, got {min_features}")
    if isinstance(module, nn.Linear):
        raise TypeError("quantize_linears replaces submodules in place; wrap a bare nn.Linear with "
                        "Fp8Linear.from_linear instead")
    module_before = _tensor_bytes(module)
    targets: list[tuple[str, nn.Linear]] = []
    skipped = {"by_name": 0, "unaligned": 0, "small": 0}
    for name, sub in module.named_modules():
        if type(sub) is not nn.Linear:
            continue
        if skip is not None and skip(name, sub):
            skipped["by_name"] += 1
        elif sub.in_features % _ALIGN or sub.out_features % _ALIGN:
            skipped["unaligned"] += 1
        elif min(sub.in_features, sub.out_features) < min_features:
            skipped["small"] += 1
        else:
            targets.append((name, sub))
    linear_before = linear_after = 0
    for name, lin in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        q = Fp8Linear.from_linear(lin, fast_accum=fast_accum)
        linear_before += lin.weight.numel() * lin.weight.element_size()
        linear_after += q.weight.numel() * q.weight.element_size() + q.weight_scale.numel() * 4
        setattr(parent, attr, q)
    stats = {
        "quantized": len(targets),
        "skipped": sum(skipped.values()),
        "skipped_by_reason": skipped,
        "linear_bytes_before": linear_before,
        "linear_bytes_after": linear_after,
        "module_bytes_before": module_before,
        "module_bytes_after": _tensor_bytes(module),
    }
    log.info("fp8: quantized %d linears (%d skipped: %s), weights %.1f -> %.1f MB", len(targets),
             stats["skipped"], skipped, linear_before / 1e6, linear_after / 1e6)
    return stats


def fp8_supported(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` runs :class:`Fp8Linear`, and why (or why not)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available in this torch build / machine"
        if torch.version.hip is not None:
            return False, "ROCm GPUs use float8_e4m3fnuz; Fp8Linear implements the NVIDIA e4m3fn path only"
        name = torch.cuda.get_device_name(dev)
        cc = torch.cuda.get_device_capability(dev)
        if cc >= (8, 9):
            return True, f"{name} (sm_{cc[0]}{cc[1]}) has FP8 tensor cores"
        return False, f"{name} (sm_{cc[0]}{cc[1]}) has no FP8 tensor cores: needs compute capability >= 8.9 " \
                      "(Ada L40/RTX 4090, Hopper H100/H200)"
    if dev.type == "cpu":
        try:
            a = torch.ones(16, 16, dtype=FP8_DTYPE)
            one = torch.ones(16, 1)
            y = torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one.t(), out_dtype=torch.float32)
        except (RuntimeError, NotImplementedError, ValueError) as e:
            return False, f"torch._scaled_mm failed on CPU: {e}"
        if not torch.allclose(y, torch.full_like(y, 16.0)):
            return False, "torch._scaled_mm on CPU returned wrong values for a ones probe"
        return True, "torch._scaled_mm rowwise works on CPU (emulated, slower than float32 matmul)"
    return False, f"no FP8 path for device type {dev.type!r} (supported: cuda with sm >= 8.9, cpu)"
