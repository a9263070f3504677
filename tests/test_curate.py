"""Curation (tasks/curate): decisions at their boundaries, planted pairs through the real scorer and OpenCV
detector, dedup against brute force, the guard, and train reading only kept pairs."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facelift.storage import Store
from facelift.tasks.curate import CurateConfig, CurationError, Scorer, Thresholds, decide, decide_curation
from facelift.tasks.curate.config import REASON_NAMES
from facelift.tasks.curate.dedup import near_duplicates
from facelift.tasks.curate.score import DeepFaceFaces, score_shard
from facelift.testing import make_synthetic_dataset

CLIP_FILTERS = ("scene_changed", "off_prompt", "no_improvement")  # random-weight CLIP: report only in tests


# -- decisions on synthetic statistics --------------------------------------------------------------------
def _row(i: int, **kw) -> dict:
    base = dict(pair_id=f"p{i:03d}", split="train", shard=0, worker="w", corrupt=None, bytes_equal=False,
                mean_abs_diff=10.0, clip_image=0.9, clip_text_schnell=0.3, clip_text_dev=0.3, faces_schnell=1,
                faces_dev=1, identity=0.9, iqa_schnell=0.5, iqa_dev=0.6, phash=f"{i:016x}", clip_embedding=None)
    return base | kw


BOUNDARIES = {  # reason -> (statistics exactly at the threshold: kept, just past it: dropped)
    "no_change": ({"mean_abs_diff": 1.0}, {"mean_abs_diff": 0.999}),  # 0.1 x the median 10
    "scene_changed": ({"clip_image": 0.75}, {"clip_image": 0.7499}),
    "identity_changed": ({"identity": 0.32}, {"identity": 0.3199}),
    "off_prompt": ({"clip_text_dev": 0.2}, {"clip_text_dev": 0.1999}),
    "no_improvement": ({"iqa_dev": 0.5}, {"iqa_dev": 0.4999}),
    "no_face": ({"faces_dev": 1}, {"faces_dev": 0}),
    "multi_face": ({"faces_schnell": 1}, {"faces_schnell": 2}),
}


@pytest.mark.parametrize("reason", sorted(BOUNDARIES))
def test_each_reason_fires_exactly_past_its_threshold(reason):
    at, past = BOUNDARIES[reason]
    scores = pd.DataFrame([_row(i) for i in range(8)] + [_row(8, **at), _row(9, **past)])
    keep = decide(scores, set(), Thresholds(), frozenset(REASON_NAMES)).set_index("pair_id")
    assert keep.loc["p008", "keep"] and keep.loc["p008", "reasons"] == []
    assert not keep.loc["p009", "keep"] and keep.loc["p009", "reasons"] == [reason]
    assert keep["keep"].sum() == 9


def test_several_reasons_are_recorded_and_report_only_ones_drop_nothing():
    scores = pd.DataFrame([_row(i) for i in range(6)] + [
        _row(6, identity=0.1, clip_text_schnell=0.0, iqa_dev=0.1),
        _row(7, corrupt="does not decode", mean_abs_diff=None, clip_image=None, identity=None, faces_dev=None),
        _row(8, bytes_equal=True)])
    everything = decide(scores, {"p000"}, Thresholds(), frozenset(REASON_NAMES)).set_index("pair_id")
    assert everything.loc["p006", "reasons"] == ["identity_changed", "off_prompt", "no_improvement"]
    assert everything.loc["p006", "first_reason"] == "identity_changed"
    assert everything.loc["p007", "reasons"] == ["corrupt"]  # nothing else fires on missing statistics
    assert everything.loc["p008", "reasons"] == ["no_change"] and everything.loc["p000", "reasons"] == [
        "near_duplicate"]
    lenient = decide(scores, set(), Thresholds(), frozenset(REASON_NAMES) - set(CLIP_FILTERS)).set_index("pair_id")
    assert lenient.loc["p006", "reasons"] == ["identity_changed"]
    assert lenient.loc["p006", "flagged"] == ["off_prompt", "no_improvement"]


def test_thresholds_scale_for_the_sensitivity_table():
    th = Thresholds().scaled(1.1)
    assert th.clip_image_min == pytest.approx(0.825) and th.phash_max == 6 and th.dup_clip_min <= 1.0001
    with pytest.raises(ValueError):
        Thresholds(clip_image_mn=0.5)  # a misspelt threshold is refused, not ignored


# -- dedup against brute force --------------------------------------------------------------------------
def _brute_clusters(bits: list[int], emb: np.ndarray, phash_max: int, clip_min: float) -> set[frozenset[int]]:
    n = len(bits)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in itertools.combinations(range(n), 2):
        if bin(bits[a] ^ bits[b]).count("1") <= phash_max or float(emb[a] @ emb[b]) >= clip_min:
            parent[find(a)] = find(b)
    groups: dict[int, set[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(i)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dedup_finds_the_same_clusters_as_brute_force_and_keeps_test_before_train(seed):
    rng = np.random.default_rng(seed)
    n = 70
    bits = [int(x) for x in rng.integers(0, 2**63, n)]
    for a, b in rng.integers(0, n, (12, 2)):  # planted near-copies: a few flipped bits
        bits[b] = bits[a] ^ (1 << int(rng.integers(64))) ^ (1 << int(rng.integers(64)))
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    for a, b in rng.integers(0, n, (4, 2)):
        emb[b] = emb[a] + 0.01 * rng.normal(size=16)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb.astype(np.float16).astype(np.float32)  # as stored
    splits = rng.choice(["train", "val", "test"], n)
    scores = pd.DataFrame({"pair_id": [f"p{i:03d}" for i in range(n)], "split": splits,
                           "phash": [f"{b:016x}" for b in bits],
                           "clip_embedding": [e.astype(np.float16).tobytes() for e in emb]})
    got = near_duplicates(scores, 5, 0.96, block=16)  # blocks smaller than the set
    want = _brute_clusters(bits, emb / np.linalg.norm(emb, axis=1, keepdims=True), 5, 0.96)
    clusters = {frozenset(int(p[1:]) for p in g["pair_id"]) for _, g in got.groupby("cluster")}
    assert clusters == want and want
    rank = {"test": 0, "val": 1, "train": 2}
    for _, g in got.groupby("cluster"):
        assert g["kept"].sum() == 1
        kept = g[g["kept"]].iloc[0]
        assert rank[kept["split"]] == min(rank[s] for s in g["split"])  # test before val before train


# -- planted pairs: the real scorer, OpenCV detector, an injected embedder --------------------------------
def _crop(box, flip=False, size=256) -> np.ndarray:
    from skimage import data

    a = np.asarray(Image.fromarray(data.astronaut()).crop(box).resize((size, size), Image.Resampling.BICUBIC))
    return a[:, ::-1].copy() if flip else a


def _square(a: np.ndarray, size=256) -> np.ndarray:
    h, w = a.shape[:2]
    s = min(h, w)
    return np.asarray(Image.fromarray(a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
                      .resize((size, size), Image.Resampling.BICUBIC))


def _tone(a: np.ndarray) -> np.ndarray:
    return np.clip(a.astype(int) * 1.1 + 8, 0, 255).astype(np.uint8)


def _chroma(face: np.ndarray) -> np.ndarray:
    """A stand-in identity: the face's mean colour minus its grey (a tone change keeps it, a swap does not)."""
    mean = face.reshape(-1, 3).astype(float).mean(0)
    return mean - mean.mean()


def planted_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from skimage import data

    c1, c3 = _crop((40, 0, 440, 400), flip=True), _crop((20, 0, 480, 460))
    c2 = _crop((60, 10, 360, 310))
    return [("good", c0 := _crop((0, 0, 400, 400)), _tone(c0)),
            ("no_face", _square(data.coffee()), _tone(_square(data.coffee()))),
            ("identity_changed", c1, c1[:, :, ::-1].copy()),  # another person: the embedder tells them apart
            ("no_change", c2, c2),
            ("dup_a", c3, _tone(c3)),
            ("dup_b", np.roll(c3, 1, axis=1), _tone(np.roll(c3, 1, axis=1))),  # shifted by one pixel
            ("corrupt", c4 := _crop((0, 20, 300, 320), flip=True), _tone(c4))]


def make_planted(root: Store, dataset_id: str = "planted"):
    """The planted pairs, written with the project's writer; the last pair's dev PNG then truncated."""
    import pyarrow as pa

    pairs = iter(planted_pairs())
    ds = make_synthetic_dataset(root, dataset_id, n_pairs=7, size=256, shard_size=4,
                                make_pair=lambda rng, size: tuple(Image.fromarray(x) for x in next(pairs)[1:]))
    table = ds.read_shard(1)
    dev = table.column("dev_image").to_pylist()
    dev[-1] = {"bytes": dev[-1]["bytes"][: len(dev[-1]["bytes"]) // 2], "path": dev[-1]["path"]}
    ds.commit_shard(1, table.set_column(table.schema.get_field_index("dev_image"), "dev_image",
                                        pa.array(dev, table.schema.field("dev_image").type)))
    return ds


@pytest.fixture(scope="module")
def tiny_clip(cache_dir) -> str:
    from facelift.models.tiny_metrics import ensure_tiny_clip

    return str(ensure_tiny_clip(cache_dir))


def _config(clip: str, **kw) -> CurateConfig:
    return CurateConfig(clip_model=clip, iqa_model=clip, detector="opencv", report_only=CLIP_FILTERS, **kw)


def test_planted_pairs_are_dropped_for_their_reason_and_the_good_one_kept(tmp_path, deepface_home, tiny_clip):
    ds = make_planted(Store(str(tmp_path)))
    cfg = _config(tiny_clip, min_kept_fraction=0.0)
    scorer = Scorer(cfg, faces=DeepFaceFaces("opencv", embedder=_chroma))
    for shard in ds.committed_shards():
        score_shard(ds, shard, "k1", scorer)
    cur = decide_curation(ds, "k1", scorer.models, cfg, ds.committed_shards())
    names = [name for name, *_ in planted_pairs()]
    keep = cur.keep.assign(case=names).set_index("case")  # pair order = planted order
    assert keep.loc["good", "keep"], keep.loc["good"].to_dict()
    assert keep.loc["no_face", "reasons"] == ["no_face"]  # the real OpenCV detector finds no face in a cup
    assert "identity_changed" in keep.loc["identity_changed", "reasons"]
    assert keep.loc["no_change", "reasons"] == ["no_change"]
    assert keep.loc["corrupt", "reasons"] == ["corrupt"]
    dups = keep.loc[["dup_a", "dup_b"]]
    assert sorted(map(tuple, dups["reasons"])) == [(), ("near_duplicate",)]  # one of the two kept
    rank = {"test": 0, "val": 1, "train": 2}
    kept_dup = dups[dups["keep"]].iloc[0]
    assert rank[kept_dup["split"]] <= min(rank[s] for s in dups["split"])
    assert cur.info["kept"] == 2 and not set(keep["flagged"].sum()) - set(CLIP_FILTERS)
    counts = cur.counts.set_index("reason")
    assert counts.loc["no_face", "dropped_alone"] == 1 and counts.loc["corrupt", "first_reason"] == 1

    # other thresholds decide again from the stored scores, exactly as scoring afresh would
    strict = _config(tiny_clip, min_kept_fraction=0.0, thresholds=Thresholds(identity_min=0.999, phash_max=1))
    before = sorted(p.name for p in (tmp_path / "datasets/planted/curation/scores-k1").iterdir())
    again = decide_curation(ds, "k1", scorer.models, strict, ds.committed_shards())
    assert sorted(p.name for p in (tmp_path / "datasets/planted/curation/scores-k1").iterdir()) == before
    fresh = Scorer(strict, faces=DeepFaceFaces("opencv", embedder=_chroma))
    for shard in ds.committed_shards():
        score_shard(ds, shard, "k2", fresh)
    pd.testing.assert_frame_equal(again.keep, decide_curation(ds, "k2", fresh.models, strict,
                                                              ds.committed_shards()).keep)
    assert again.curation_id != cur.curation_id
    assert list(again.keep.set_index(pd.Index(names)).loc[["dup_a", "dup_b"], "keep"]) == [True, True]  # 1 bit


def test_the_guard_fails_in_one_line_and_keeps_latest_unchanged(tmp_path, deepface_home, tiny_clip):
    ds = make_planted(Store(str(tmp_path)))
    cfg = _config(tiny_clip)  # min_kept_fraction 0.5: 2 of 7 kept is too few
    scorer = Scorer(cfg, faces=DeepFaceFaces("opencv", embedder=_chroma))
    for shard in ds.committed_shards():
        score_shard(ds, shard, "k", scorer)
    with pytest.raises(CurationError) as err:
        decide_curation(ds, "k", scorer.models, cfg, ds.committed_shards())
    message = str(err.value)
    assert "\n" not in message and "would keep 29% of 7 pairs" in message and "min_kept_fraction 50%" in message
    assert err.value.curation is not None  # the report can still show why
    assert not ds.store.exists("curation/latest.json")


def test_random_weight_arcface_ranks_the_same_face_above_another_person(deepface_home):
    """Random weights: only the order means anything."""
    from skimage import data

    faces = DeepFaceFaces("skip")  # whole images: OpenCV finds no face in the cameraman
    a = _crop((150, 20, 330, 200))
    _, ea = faces(a)
    _, same = faces(_tone(a))
    _, other = faces(_square(np.stack([data.camera()] * 3, -1)))
    assert float(ea @ same) > float(ea @ other)


# -- train reads only kept pairs ------------------------------------------------------------------------
def test_pair_stream_reads_only_kept_training_pairs_and_resumes(tmp_path):
    from facelift.tasks.train.data import DataConfig, PairStream, split_counts

    ds = make_synthetic_dataset(Store(str(tmp_path)), "kept", n_pairs=24, size=16, shard_size=8, seed=3)
    ids = list(ds.manifest()["pair_id"])
    splits = ds.splits()
    train = [p for p, s in zip(ids, splits.assign(ids), strict=True) if s == "train"]
    keep = frozenset(train[::2] + [p for p in ids if p not in train])
    cfg = DataConfig(resolution=16, splits=splits, keep=keep, decode_workers=0, shuffle_buffer=4)
    stream = PairStream(ds, ds.committed_shards(), cfg, batch_size=1, paired=True)
    seen = set()
    it = stream._pairs()
    for _ in range(3 * len(train)):
        (shard, row), _, _ = next(it)
        seen.add(ds.read_shard(shard, ["pair_id"]).column("pair_id")[row].as_py())
    assert seen == set(train[::2])  # every kept train pair, and no other
    assert split_counts(ds, ds.committed_shards(), splits, keep)["train"] == len(train[::2])
    state = PairStream(ds, ds.committed_shards(), cfg, 2, True)
    first = iter(state)
    next(first)
    saved = state.state_dict()
    expected = [b["schnell"].sum().item() for b in itertools.islice(first, 3)]
    resumed = PairStream(ds, ds.committed_shards(), cfg, 2, True, state=saved)
    assert [b["schnell"].sum().item() for b in itertools.islice(iter(resumed), 3)] == expected


def test_a_png_that_is_cut_short_is_corrupt_not_a_crash():
    from facelift.tasks.curate.score import _decode

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
    with pytest.raises(ValueError, match="does not decode"):
        _decode({"bytes": buf.getvalue()[:40]}, None)
    with pytest.raises(ValueError, match="sha256"):
        _decode({"bytes": buf.getvalue()}, "0" * 64)
