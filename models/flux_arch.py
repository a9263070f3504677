"""FLUX.1 component architectures with random weights, at two sizes.

``tiny``: the CPU test model (DESIGN §3), saved to disk by :mod:`models.tiny_flux`.
``full``: the real FLUX.1 sizes (12B transformer, T5-XXL, CLIP-L, 16-channel VAE), built directly on a
device for benchmarks: speed does not depend on the weights, so GPU numbers need no download.
"""

from __future__ import annotations

from typing import Any

ARCHS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "clip": dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                     num_hidden_layers=2, projection_dim=32, max_position_embeddings=77, bos_token_id=0,
                     eos_token_id=1, pad_token_id=1),
        "t5": dict(vocab_size=1000, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    layers_per_block=1, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
                    shift_factor=0.0609, scaling_factor=1.5035),
        "transformer": dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                            pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
    },
    "full": {
        "clip": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                     num_hidden_layers=12, projection_dim=768, max_position_embeddings=77, hidden_act="quick_gelu",
                     bos_token_id=0, eos_token_id=1, pad_token_id=1),
        "t5": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    layers_per_block=2, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
                    shift_factor=0.1159, scaling_factor=0.3611),
        "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                            pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)),
    },
}


def _check(arch: str) -> dict[str, dict[str, Any]]:
    if arch not in ARCHS:
        raise ValueError(f"unknown FLUX arch {arch!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[arch]


def shared_components(arch: str) -> dict[str, Any]:
    """Text encoders and VAE (identical for schnell and dev), random weights on the current device."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg = _check(arch)
    return {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["clip"])),
        "text_encoder_2": T5EncoderModel(T5Config(**cfg["t5"])),
        "vae": AutoencoderKL(**cfg["vae"]),
    }


def transformer(arch: str, variant: str, **overrides: Any) -> Any:
    """The denoiser; dev has the guidance embedding (guidance-distilled), schnell does not. ``overrides``
    change config fields (e.g. ``num_layers``)."""
    from diffusers import FluxTransformer2DModel

    cfg = {**_check(arch)["transformer"], **overrides}
    return FluxTransformer2DModel(**cfg, guidance_embeds=(variant == "dev"))


def scheduler(variant: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if variant == "dev":  # FLUX.1-dev's scheduler config: resolution-dependent shift
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                               max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(shift=1.0)
