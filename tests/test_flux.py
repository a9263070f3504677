from __future__ import annotations

import numpy as np
import pytest

from facelift.config import resolve_config
from facelift.models.flux import FluxPair, FluxWeightsError, component_fingerprint, dev_steps_run, resolve_source


@pytest.fixture(scope="module")
def pair(cache_dir) -> FluxPair:
    return FluxPair.load(resolve_config("tiny", environ={}).generation, str(cache_dir))


def test_tiny_pipeline_round_trips_through_from_pretrained(pair, cache_dir):
    folder = resolve_source(resolve_config("tiny", environ={}).generation.schnell, str(cache_dir))
    assert (folder / "model_index.json").is_file() and (folder / "transformer").is_dir()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 3_000_000
    assert pair.shared  # identical text encoders and VAE files: dev reuses schnell's modules
    assert pair.dev.text_encoder_2 is pair.schnell.text_encoder_2
    assert component_fingerprint(folder, "transformer") != component_fingerprint(
        resolve_source(resolve_config("tiny", environ={}).generation.dev, str(cache_dir)), "transformer")


def test_generation_is_deterministic_per_seed_and_batch_independent(pair):
    prompts = ["A professional portrait of Zoë Ångström", "A professional portrait of 李小龙"]
    s1, d1, t = pair.generate(prompts, [11, 22])
    s2, d2, _ = pair.generate(prompts[1:], [22])
    s3, d3, _ = pair.generate(prompts, [11, 22])
    assert s1[0].size == (64, 64) and d1[0].size == (64, 64)
    assert [i.tobytes() for i in s1 + d1] == [i.tobytes() for i in s3 + d3]  # same batch: bit-identical
    # another batch composition: same image up to float rounding in batched matmuls (<= 1 level of 255)
    pix = lambda img: np.asarray(img, dtype=np.int16)  # noqa: E731
    assert np.abs(pix(s1[1]) - pix(s2[0])).max() <= 1 and np.abs(pix(d1[1]) - pix(d2[0])).max() <= 1
    assert s1[0].tobytes() != s1[1].tobytes()
    assert d1[0].tobytes() != s1[0].tobytes()  # dev really repainted the schnell image
    assert set(t) == {"encode_s", "schnell_s", "dev_s"} and all(v >= 0 for v in t.values())


def test_tiny_prompts_fit_the_tiny_text_encoders():
    """The tiny profile truncates no prompt of the bundled names (no truncation warnings in the demo)."""
    import inspect

    from facelift.models.tiny_flux import clip_tokenizer, t5_tokenizer
    from facelift.tasks.build.names import read_names
    from facelift.tasks.build.plan import make_plan
    from facelift.tasks.evaluate.flux import timing_table

    cfg = resolve_config("tiny", environ={})
    people, _ = read_names()
    prompts = list(make_plan(people, cfg.plan.model_copy(update={"count": None})).prompt)
    prompts += [cfg.plan.prompt.baseline_prompt, inspect.signature(timing_table).parameters["prompt"].default]
    t5, clip = t5_tokenizer(), clip_tokenizer()
    longest = max(len(t5(p).input_ids) for p in prompts)
    assert longest <= min(cfg.generation.schnell.max_sequence_length, cfg.generation.dev.max_sequence_length)
    assert max(len(clip(p).input_ids) for p in prompts) <= clip.model_max_length


def test_missing_weights_name_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stage = resolve_config("flux", environ={}).generation.dev
    with pytest.raises(FluxWeightsError, match=r"black-forest-labs/FLUX.1-dev@main.*Hugging Face cache"):
        resolve_source(stage, str(tmp_path))
    (tmp_path / "notapipe").mkdir()
    with pytest.raises(FluxWeightsError, match="no model_index.json"):
        resolve_source(stage.model_copy(update={"model": str(tmp_path / "notapipe")}), str(tmp_path))
    with pytest.raises(FluxWeightsError, match="neither an existing folder"):
        resolve_source(stage.model_copy(update={"model": str(tmp_path / "absent")}), str(tmp_path))


def test_dev_steps_follow_diffusers_strength_rule():
    assert dev_steps_run(28, 0.6) == 17 and dev_steps_run(28, 1.0) == 28 and dev_steps_run(4, 0.6) == 3


def test_stage_placement_renders_the_same_pairs_as_resident(cache_dir):
    from facelift.models.flux import choose_placement

    cfg = resolve_config("tiny", environ={}, overrides={"generation.placement": "stage"}).generation
    staged = FluxPair.load(cfg, str(cache_dir))
    resident = FluxPair.load(cfg.model_copy(update={"placement": "resident"}), str(cache_dir))
    assert (staged.placement, resident.placement) == ("stage", "resident")
    batches = [(["A professional portrait of Ada", "A professional portrait of Bo"], [1, 2]),
               (["A professional portrait of Cy"], [3])]
    a, b = list(staged.render_batches(batches)), list(resident.render_batches(batches))
    assert [len(x[0]) for x in a] == [2, 1]
    for (s1, d1, _), (s2, d2, _) in zip(a, b, strict=True):
        assert [i.tobytes() for i in s1 + d1] == [i.tobytes() for i in s2 + d2]
    assert choose_placement("auto", "cpu", 10**12) == "resident"  # no GPU memory to run out of
    assert choose_placement("stage", "cuda", 1) == "stage"  # an explicit choice is kept


def test_regional_compile_and_fp8_keep_the_pictures(pair, cache_dir):
    """generation.compile=regional compiles each repeated block once (shared by schnell and dev) and
    renders what eager renders; generation.fp8 swaps the block linears for FP8 ones and stays close."""
    import numpy as np

    from facelift.models.fp8 import Fp8Linear

    base = resolve_config("tiny", environ={}).generation
    batch = [(["A professional portrait of Ada", "A professional portrait of Bo"], [1, 2])]
    (s_ref, d_ref, _), = pair.render_batches(batch)
    for update in ({"compile": True}, {"fp8": True}):
        other = FluxPair.load(type(base).model_validate(base.model_dump() | update), str(cache_dir))
        (s_img, d_img, _), = other.render_batches(batch)
        diff = max(np.abs(np.asarray(a, int) - np.asarray(b, int)).max()
                   for a, b in zip(s_img + d_img, s_ref + d_ref, strict=True))
        if "compile" in update:
            blocks = [*other.schnell.transformer.transformer_blocks, *other.dev.transformer.single_transformer_blocks]
            assert all(b._compiled_call_impl is not None for b in blocks)
            assert other.schnell.transformer._compiled_call_impl is None  # regional, not the whole model
            assert diff <= 2, diff
        else:
            assert any(isinstance(m, Fp8Linear) for m in other.dev.transformer.modules())
            assert 0 < diff <= 64, diff  # FP8 changes pixels, a little


def test_host_copies_pack_tensors_into_few_aligned_buffers():
    """Stage placement's host copies: equal values, few buffers (pinned allocations round up to powers
    of two), 512-byte aligned views that never overlap."""
    import torch

    from facelift.models.flux import host_copies

    tensors = [torch.randn(300, 7), torch.randn(2000), torch.arange(10, dtype=torch.int64),
               torch.randn(2, 3).to(torch.bfloat16), torch.zeros(0)]
    copies = host_copies(tensors, pin=False, chunk_bytes=4096)
    for c, t in zip(copies, tensors, strict=True):
        assert c.dtype == t.dtype and c.shape == t.shape and torch.equal(c, t)
    offsets = [c.data_ptr() - c.untyped_storage().data_ptr() for c in copies if c.numel()]
    assert all(o % 512 == 0 for o in offsets)
    # 8400 B opens a 16 KiB buffer, 8000 B no longer fits there (8704 + 8000) and opens an 8 KiB one, which
    # is then full, so the small tensors share one 4 KiB buffer
    sizes = [c.untyped_storage().nbytes() for c in copies[:4]]
    assert sizes == [16384, 8192, 4096, 4096] and copies[2].untyped_storage().data_ptr() == \
        copies[3].untyped_storage().data_ptr()
    copies[0][0, 0] = 123.0
    assert tensors[0][0, 0] != 123.0  # copies, not aliases
