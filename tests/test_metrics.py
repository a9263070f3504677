"""Metric computations (FID, KID, CIs, caching) and metric networks (FID Inception, CLIP-IQA, LPIPS)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from facelift.models.metrics import (
    ClipIQA,
    FIDInceptionV3,
    MetricWeightsError,
    _architecture,
    build_lpips,
    clean_resize,
    fid_input,
    resolve_fid_weights,
)
from facelift.models.tiny_metrics import ensure_random_fid_weights, ensure_tiny_clip
from facelift.storage import Store
from facelift.tasks.evaluate.joint import _fid_stack, _mmd_stack, fid_with_ci, kid
from facelift.tasks.evaluate.metrics import (
    KID_MIN_SUBSETS,
    SampleSizeError,
    cached_features,
    feature_stats,
    fid_from_features,
    frechet_distance,
    image_set_key,
    kid_values,
    mmd2_unbiased,
)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The pytorch-fid reference formula (scipy.linalg.sqrtm)."""
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    covmean, _ = scipy.linalg.sqrtm(s1.dot(s2), disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize(("n", "d"), [(200, 16), (12, 64), (40, 40)])
def test_fid_matches_scipy_reference(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(0.5, 1.2, size=(n + 3, d))
    ref = scipy_fid(a, b)
    assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-6, abs=1e-6)
    assert frechet_distance(*feature_stats(a), *feature_stats(b)) == pytest.approx(ref, rel=1e-6, abs=1e-6)
    # float32 input is promoted: the result is the float64 one
    assert fid_from_features(a.astype(np.float32), b) == pytest.approx(ref, rel=1e-4)


def test_fid_identical_sets_is_zero() -> None:
    a = np.random.default_rng(0).normal(size=(64, 32))
    assert abs(fid_from_features(a, a)) < 1e-8
    assert abs(frechet_distance(*feature_stats(a), *feature_stats(a))) < 1e-8


def test_fid_shifted_gaussians_closed_form() -> None:
    d = 8
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = np.diag(np.full(d, 1.0)), np.diag(np.full(d, 4.0))
    expected = d * 0.25 + d * (1.0 - 2.0) ** 2  # |mu1-mu2|² + Σ(√s1 − √s2)²
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, size=(20000, d))
    b = rng.normal(0.5, 2, size=(20000, d))
    assert fid_from_features(a, b) == pytest.approx(expected, rel=0.05)


def test_fid_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same width"):
        fid_from_features(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((4, 3)))


def test_kid_unbiased_and_sensitive() -> None:
    rng = np.random.default_rng(2)
    same = [kid(rng.normal(size=(30, 16)), rng.normal(size=(30, 16)), n_subsets=10, subset_size=15, seed=s).value
            for s in range(20)]
    spread = np.std(same)
    assert abs(np.mean(same)) < 3 * spread / np.sqrt(len(same))  # unbiased: centred on 0
    assert min(same) < 0 < max(same)  # individual estimates may be negative
    shifted = kid(rng.normal(size=(30, 16)), rng.normal(1.0, 1, size=(30, 16)), n_subsets=10, subset_size=15)
    assert shifted.value > 5 * spread and shifted.se > 0 and shifted.subset_sd > 0


def test_kid_subsets_at_the_evaluation_defaults() -> None:
    """n = 256 with the configured cap of 1000: subsets of n/2, >= 10 of them, a real spread and interval."""
    rng = np.random.default_rng(4)
    est = kid(rng.normal(size=(256, 32)), rng.normal(0.3, 1, size=(256, 32)), subset_size=1000)
    assert est.subset_size == 128 and est.n_subsets >= KID_MIN_SUBSETS and est.n == 256
    assert est.se > 0 and est.low < est.value < est.high
    assert est.as_dict("kid")["kid_subsets"] == est.n_subsets
    small = kid(rng.normal(size=(10, 8)), rng.normal(size=(12, 8)))
    assert small.subset_size == 5 and small.n_subsets == 100  # defaults chosen from n


def test_kid_too_few_images_is_a_clear_error() -> None:
    with pytest.raises(SampleSizeError, match=r"n >= 4 .*got n=3"):
        kid(np.zeros((3, 8)), np.ones((40, 8)))
    assert issubclass(SampleSizeError, ValueError)
    with pytest.raises(ValueError, match=">= 10 subsets"):
        kid(np.zeros((40, 8)), np.ones((40, 8)), n_subsets=5)


# -- FID intervals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [64, 2048])
def test_fid_estimates_lie_inside_their_intervals(d: int) -> None:
    """256 rows: the old with-replacement bootstrap put the whole interval above the FID (463.5 vs [505, 514])."""
    rng = np.random.default_rng(d)
    rows, ref_a, ref_b = (rng.normal(0, 1, (256, d)), rng.normal(0.05, 1, (256, d)), rng.normal(0, 1.1, (256, d)))
    est = fid_with_ci(rows, {"schnell": ref_a, "dev": ref_b}, n_boot=10)
    assert set(est) == {"schnell", "dev", "diff", "schnell_bc", "dev_bc", "diff_bc"}
    for key, e in est.items():
        assert e.low < e.value < e.high, (key, e)
        assert e.n == 256 and e.method.startswith("joint halves+quarters")
    assert est["diff"].value == pytest.approx(est["schnell"].value - est["dev"].value)


def test_fid_intervals_from_four_images() -> None:
    """Quarters need two images each: from 8 images halves and quarters, from 4 halves only (the linear,
    conservative variance), below 4 the FID has its value but no interval."""
    rng = np.random.default_rng(9)

    def sets(n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return rng.normal(size=(n, 4)), {"schnell": rng.normal(size=(n, 4)), "dev": rng.normal(size=(n, 4))}

    est = fid_with_ci(*sets(3))
    assert np.isfinite(est["schnell"].value) and np.isnan(est["schnell"].low) and np.isnan(est["schnell_bc"].value)
    for n, method in ((4, "joint halves ×20"), (7, "joint halves ×20"), (8, "joint halves+quarters ×20")):
        est = fid_with_ci(*sets(n))
        assert 0 <= est["schnell"].low < est["schnell"].value < est["schnell"].high, n
        assert est["schnell"].method == method and est["diff"].low < est["diff"].value < est["diff"].high


# -- the same numbers as torchmetrics -------------------------------------------------------------------
class _Precomputed(torch.nn.Module):
    """A torchmetrics ``feature=`` extractor whose "images" are already feature vectors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize(("n", "d"), [(300, 64), (120, 256)])
def test_fid_matches_torchmetrics(n: int, d: int) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(n)
    real, fake = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.2, rng.normal(0.3, 1.3, size=(n + 7, d))
    metric = FrechetInceptionDistance(feature=_Precomputed(d))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    assert fid_from_features(fake, real) == pytest.approx(float(metric.compute()), rel=1e-3)
    stacked = _fid_stack([fake[None, :n]], [real[None]])  # the batched path the intervals use
    assert stacked[0, 0, 0] == pytest.approx(fid_from_features(fake[:n], real), rel=1e-9)


def test_kid_matches_torchmetrics() -> None:
    from torchmetrics.image.kid import KernelInceptionDistance

    rng = np.random.default_rng(11)
    real, fake = rng.normal(size=(60, 24)), rng.normal(0.4, 1.2, size=(50, 24))
    metric = KernelInceptionDistance(feature=_Precomputed(24), subsets=12, subset_size=20)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    torch.manual_seed(3)
    tm_mean, tm_std = (float(v) for v in metric.compute())
    torch.manual_seed(3)  # the same subsets: torchmetrics draws randperm(real)[:m], then randperm(fake)[:m]
    subsets = [(torch.randperm(60)[:20].numpy(), torch.randperm(50)[:20].numpy()) for _ in range(12)]
    ours = kid_values(real, fake, subsets)
    np.testing.assert_allclose(_mmd_stack([real], fake, subsets)[0], ours, rtol=1e-12)  # the batched path
    assert ours.mean() == pytest.approx(tm_mean, rel=1e-3) and ours.std() == pytest.approx(tm_std, rel=1e-3)
    whole = KernelInceptionDistance(feature=_Precomputed(24), subsets=1, subset_size=50)
    whole.update(torch.from_numpy(real[:50]), real=True)
    whole.update(torch.from_numpy(fake), real=False)
    assert mmd2_unbiased(real[:50], fake) == pytest.approx(float(whole.compute()[0]), rel=1e-3)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_feature_cache(where: str, tmp_path, request) -> None:
    if where == "s3":
        seaweed = request.getfixturevalue("seaweed")
        store = Store(f"s3://facelift/test-metrics-cache-{tmp_path.name}", seaweed.endpoint)
    else:
        store = Store(str(tmp_path / "root"))
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(3, 4)

    key = image_set_key(["b" * 64, "a" * 64])
    assert key == image_set_key(["a" * 64, "b" * 64])
    first, hit1 = cached_features(store, "inception-x", key, compute)
    second, hit2 = cached_features(store, "inception-x", key, compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(first, second)
    assert store.exists(f"cache/features/inception-x/{key}.npy")


@pytest.fixture(scope="module")
def inception(cache_dir) -> FIDInceptionV3:
    return FIDInceptionV3.from_file(ensure_random_fid_weights(cache_dir))


def test_inception_features(inception: FIDInceptionV3) -> None:
    x = torch.rand(3, 3, 48, 40) * 2 - 1
    with torch.no_grad():
        f = inception(x)
        g = inception(x.flip(-1))
    assert f.shape == (3, 2048) and torch.isfinite(f).all()
    assert not torch.allclose(f, g)
    assert inception.weights_sha256 and len(inception.weights_sha256) == 64


def test_inception_missing_or_wrong_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("FACELIFT_CACHE", str(tmp_path / "fc"))
    with pytest.raises(MetricWeightsError, match="pt_inception-2015-12-05") as err:
        resolve_fid_weights()
    assert str(tmp_path / "th") in str(err.value) and str(tmp_path / "fc") in str(err.value)
    with pytest.raises(MetricWeightsError, match="nope.pth"):
        FIDInceptionV3.from_file(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(MetricWeightsError, match="not an FID Inception-v3 state dict"):
        FIDInceptionV3.from_file(bad)


def clean_fid_resize(image_hwc: np.ndarray) -> np.ndarray:
    """clean-fid 0.1.35's ``build_resizer("clean")`` (``make_resizer("PIL", False, "bicubic", (299, 299))``),
    restated: each channel as a float32 PIL image, bicubic to 299², clipped to [0, 255], not re-quantised."""
    from PIL import Image

    channels = [np.asarray(Image.fromarray(image_hwc[:, :, c].astype(np.float32)).resize((299, 299), Image.BICUBIC))
                .clip(0, 255).reshape(299, 299, 1) for c in range(3)]
    return np.concatenate(channels, axis=2).astype(np.float32)


def test_clean_resize_is_clean_fids() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 96, 80), dtype=np.uint8)
    ours = clean_resize(torch.from_numpy(images))
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, 299, 299)
    ref = np.stack([clean_fid_resize(im.transpose(1, 2, 0)).transpose(2, 0, 1) for im in images])
    np.testing.assert_array_equal(ours.numpy(), ref)
    with pytest.raises(ValueError, match="uint8 NCHW RGB"):
        clean_resize(torch.zeros(1, 3, 8, 8))


def test_fid_input_per_resize() -> None:
    """clean: antialiased to 299² here, (x − 128) / 128 as clean-fid; torch: x / 127.5 − 1 at the image's size
    (pytorch-fid; the network resizes bilinearly without antialias)."""
    i = torch.arange(512)
    board = (((i[:, None] + i[None, :]) % 2) * 255).to(torch.uint8).expand(1, 3, 512, 512).contiguous()
    clean, legacy = fid_input(board, "clean"), fid_input(board, "torch")
    assert clean.shape == (1, 3, 299, 299) and legacy.shape == (1, 3, 512, 512)
    assert set(legacy.unique().tolist()) == {-1.0, 1.0} and fid_input(board[..., :1, :1], "clean").min() == -1.0
    # a one-pixel checkerboard shrinks to flat grey; bilinear without antialias samples single pixels (aliasing)
    aliased = torch.nn.functional.interpolate(legacy, size=(299, 299), mode="bilinear", align_corners=False)
    assert clean.std() < 1e-3 and aliased.std() > 0.3
    with pytest.raises(ValueError, match="unknown FID resize 'area'"):
        fid_input(board, "area")


def test_clip_iqa_records_its_variant(cache_dir) -> None:
    iqa = ClipIQA.from_pretrained(str(ensure_tiny_clip(cache_dir)))
    variant = iqa.variant()
    assert variant["clip_iqa_model"] == str(ensure_tiny_clip(cache_dir))
    assert variant["clip_iqa_variant"].startswith("ViT-w32/8, short side bicubic to 32 + centre crop 32²")
    assert "original CLIP-IQA: RN50 at native resolution" in variant["clip_iqa_variant"]
    from types import SimpleNamespace

    vit_b16 = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(hidden_size=768, patch_size=16)))
    assert _architecture(vit_b16) == "ViT-B/16"  # openai/clip-vit-base-patch16, the default


def test_clip_iqa_tiny(cache_dir) -> None:
    iqa = ClipIQA.from_pretrained(str(ensure_tiny_clip(cache_dir)))
    with torch.no_grad():
        scores = iqa(torch.rand(4, 3, 64, 48) * 2 - 1)
    assert scores.shape == (4,)
    assert ((scores >= 0) & (scores <= 1)).all()
    with torch.no_grad():
        other = iqa(-torch.ones(1, 3, 64, 64))
    assert not torch.allclose(scores[:1], other)


def test_clip_iqa_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(MetricWeightsError, match="no config.json"):
        ClipIQA.from_pretrained(str(tmp_path / "missing-clip"))


def test_lpips_backbone(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricWeightsError, match="alexnet-owt"):
        build_lpips("alex")
    net = build_lpips("alex", random_backbone=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert net(x, x).abs().max() < 1e-6
        assert (net(x, -x) > 0).all()
