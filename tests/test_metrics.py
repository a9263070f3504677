"""Metric computations (FID, KID, CIs, caching) and metric networks (FID Inception, CLIP-IQA, LPIPS)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from facelift.models.metrics import ClipIQA, FIDInceptionV3, MetricWeightsError, build_lpips, resolve_fid_weights
from facelift.models.tiny_metrics import ensure_random_fid_weights, ensure_tiny_clip
from facelift.tasks.metrics import (
    cached_features,
    feature_stats,
    fid_from_features,
    fid_with_ci,
    frechet_distance,
    image_set_key,
    kid,
    mean_with_ci,
)

from facelift.storage import Store


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
    same = [kid(rng.normal(size=(30, 16)), rng.normal(size=(30, 16)), n_subsets=5, subset_size=20, seed=s)[0]
            for s in range(20)]
    spread = np.std(same)
    assert abs(np.mean(same)) < 3 * spread / np.sqrt(len(same))  # unbiased: centred on 0
    assert min(same) < 0 < max(same)  # individual estimates may be negative
    shifted, std = kid(rng.normal(size=(30, 16)), rng.normal(1.0, 1, size=(30, 16)), n_subsets=10,
                       subset_size=20)
    assert shifted > 5 * spread and std >= 0


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(3)
    rows, ref_a, ref_b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), rng.normal(2, 1, size=(40, 8))
    est = fid_with_ci(rows, {"schnell": ref_a, "dev": ref_b}, n_boot=30)
    assert set(est) == {"schnell", "dev", "diff"}
    assert est["diff"].value == pytest.approx(est["schnell"].value - est["dev"].value)
    assert est["diff"].value < 0  # rows look like ref_a: closer to "schnell" than to "dev"
    for e in est.values():
        assert e.low <= e.high and e.n == 40
    m = mean_with_ci(np.linspace(0, 1, 101), n_boot=200)
    assert m.low < 0.5 < m.high and m.value == pytest.approx(0.5)


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
