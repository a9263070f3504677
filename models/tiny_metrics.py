"""Random-weight metric networks in the exact on-disk formats, for offline tests and the demo.

- :func:`ensure_random_fid_weights`: a torchvision Inception-v3 state dict (1008 classes, no aux head; the
  pytorch-fid / torch-fidelity key names) whose BatchNorm statistics are calibrated on random images, so
  features neither vanish nor explode and FID/KID numbers move with the inputs.
- :func:`ensure_tiny_clip`: a tiny ``CLIPModel`` + tokenizer + image processor saved with ``save_pretrained``.

Numbers computed with these networks are plumbing checks, not quality measurements.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TINY_METRICS_VERSION = "v2"


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    root = cache_dir or os.environ.get("FACELIFT_CACHE") or Path.home() / ".cache" / "facelift"
    return Path(root).expanduser() / "tiny-metrics" / TINY_METRICS_VERSION


def write_random_fid_weights(path: str | os.PathLike[str], seed: int = 0) -> Path:
    import torch
    from torchvision.models import inception_v3

    from facelift.models.metrics import FIDInceptionV3

    torch.manual_seed(seed)
    model = FIDInceptionV3()
    tv = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    model.net.load_state_dict(tv.state_dict())  # same keys: the file is a plain torchvision state dict
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # smooth to white-noise images, so every layer's statistics cover the range real inputs span
        batches = [torch.nn.functional.interpolate(torch.rand(2, 3, g, g, generator=gen) * 2 - 1, size=64,
                                                   mode="bilinear") for g in (4, 8, 16, 32, 64)]
        for batch in batches:
            model(batch)
        # Scale the last block's output BatchNorms (ReLU is positively homogeneous) so pool features have
        # the magnitude of the real network's (mean ~0.4): KID's cubic kernel assumes that scale.
        model.eval()
        scale = 0.4 / float(model(torch.cat(batches)).mean())
        last = model.net.Mixed_7c
        for conv in (last.branch1x1, last.branch3x3_2a, last.branch3x3_2b, last.branch3x3dbl_3a,
                     last.branch3x3dbl_3b, last.branch_pool):
            conv.bn.weight.mul_(scale)
            conv.bn.bias.mul_(scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(model.net.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def ensure_random_fid_weights(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the random FID Inception weights file, written once per cache."""
    path = _cache_root(cache_dir) / "random-inception-fid.pth"
    if not path.is_file():
        write_random_fid_weights(path)
        log.info("wrote random FID Inception weights to %s", path)
    return path


def _word_tokenizer():
    """A word-level tokenizer (CLIP's special tokens, lower-casing) that tells the CLIP-IQA prompts apart."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<|startoftext|>", "<|endoftext|>", "<unk>", "good", "bad", "photo", ".", "a", "of", "portrait"]
    words += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=77)


def build_tiny_clip(folder: Path, seed: int = 0) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(seed)
    text = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, projection_dim=16)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                              num_attention_heads=4, num_hidden_layers=2, projection_dim=16)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    model.save_pretrained(folder, safe_serialization=True)
    _word_tokenizer().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def ensure_tiny_clip(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the tiny random CLIP checkpoint, built once per cache (safe under concurrency)."""
    final = _cache_root(cache_dir) / "tiny-clip"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".clip-", dir=final.parent))
    try:
        build_tiny_clip(tmp / "clip")
        try:
            os.rename(tmp / "clip", final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
