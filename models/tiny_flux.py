"""A tiny random-weight FLUX pipeline in the exact on-disk diffusers format (for CPU tests and the demo).

It is built from configs, saved with ``save_pretrained`` and loaded back through the same
``FluxPipeline.from_pretrained`` path as the real FLUX.1 checkpoints. Building is deterministic per
``variant`` (``schnell`` and ``dev`` get different transformers; text encoders and VAE are identical, as
in the real checkpoints) and safe under concurrency (built in a temp folder, then renamed).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TINY_VERSION = "v3"  # bump when the tiny architecture changes, so stale caches are rebuilt
_SHARED_SEED = 1234
_VARIANT_SEEDS = {"schnell": 1, "dev": 2}


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values (CLIP's first vocab entries)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def clip_tokenizer():
    """A byte-level BPE CLIP tokenizer with CLIP's vocab layout (specials, bytes, bytes + ``</w>``, merges).

    Specials first (ids 0 and 1) to match the tiny CLIP config's bos/eos ids, which CLIP pooling uses.
    """
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in chars:
            vocab[ch + suffix] = len(vocab)
    merges = [("p", "r"), ("o", "r"), ("a", "i"), ("i", "t</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(32, 127)]
    pieces += [("▁" + chr(c), -1.5) for c in range(ord("a"), ord("z") + 1)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512,
        extra_ids=0,
    )


def build_tiny_flux(folder: Path, variant: str) -> None:
    """Create the tiny pipeline for ``variant`` in ``folder`` (must not exist)."""
    import torch
    from diffusers import FluxPipeline

    from facelift.models import flux_arch

    if variant not in _VARIANT_SEEDS:
        raise ValueError(f"unknown tiny FLUX variant {variant!r}; valid: {', '.join(_VARIANT_SEEDS)}")
    torch.manual_seed(_SHARED_SEED)
    shared = flux_arch.shared_components("tiny")
    torch.manual_seed(_VARIANT_SEEDS[variant])
    pipe = FluxPipeline(
        scheduler=flux_arch.scheduler(variant), tokenizer=clip_tokenizer(), tokenizer_2=t5_tokenizer(),
        transformer=flux_arch.transformer("tiny", variant), **shared,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def ensure_tiny_flux(cache_dir: str | os.PathLike[str], variant: str) -> Path:
    """Return the folder of the tiny ``variant`` pipeline, building it once per cache."""
    final = Path(cache_dir).expanduser() / "tiny-flux" / TINY_VERSION / variant
    if (final / "model_index.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=final.parent))
    try:
        build_tiny_flux(tmp / "pipe", variant)
        try:
            os.rename(tmp / "pipe", final)
            log.info("built tiny FLUX %s pipeline at %s", variant, final)
        except OSError:
            if not (final / "model_index.json").is_file():  # lost a race to a finished build: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
