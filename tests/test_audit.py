"""Diversity audit: random-weight DeepFace files, the real DeepFace path, Table 1 math, t-SNE, rebalance, flow.

DeepFace runs unpatched (``DeepFace.analyze`` / ``DeepFace.represent``) on random-weight model files made once
per session with DeepFace's own builders. Synthetic images are noise: with the opencv detector they are
"no face"; the positive path uses ``detector="skip"`` (the whole image is the face).
"""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import pytest
from PIL import Image
from typer.testing import CliRunner

from facelift.dataset import Dataset, read_parquet_bytes, table_to_parquet_bytes
from facelift.models.deepface_weights import AUDIT_MODELS, MODELS, MissingWeightsError, check_weights, missing_weights
from facelift.storage import Store
from facelift.tasks.audit.analyze import (
    AUDIT_SCHEMA,
    RACES,
    AuditError,
    AuditOptions,
    audit_dataset,
    audit_key,
    load_audit,
    race_column,
)
from facelift.tasks.audit.rebalance import (
    RebalanceError,
    compute_weights,
    name_attributes,
    parse_target,
    rake,
    simulate_sampling,
)
from facelift.tasks.audit.report import age_bucket, summarize, table1, to_markdown, tv_distance
from facelift.tasks.audit.tsne import plot_tsne, tsne_embed
from facelift.testing import make_synthetic_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _s3_root(seaweed) -> Store:
    return Store(f"s3://facelift/audit-{uuid.uuid4().hex[:8]}", seaweed.endpoint)


# -- weights -----------------------------------------------------------------------------------------------
def test_missing_weights_error_names_every_file(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        check_weights(home=tmp_path)
    for model in AUDIT_MODELS:
        assert MODELS[model][0] in str(err.value)
    assert str(tmp_path / ".deepface" / "weights") in str(err.value)
    (tmp_path / ".deepface" / "weights").mkdir(parents=True)
    (tmp_path / ".deepface" / "weights" / "arcface_weights.h5").write_bytes(b"x")
    assert [p.name for p in missing_weights(home=tmp_path)] == [
        "age_model_weights.h5", "gender_model_weights.h5", "race_model_single_batch.h5"]


def test_random_weight_files_are_compact_keras_h5(deepface_home):
    import h5py

    check_weights(home=deepface_home, detector="opencv")  # all files present, Haar cascades shipped
    sizes = {m: (deepface_home / ".deepface" / "weights" / MODELS[m][0]).stat().st_size for m in AUDIT_MODELS}
    assert sum(sizes.values()) < 40e6, sizes  # full-size random files would be ~1.8 GB
    with h5py.File(deepface_home / ".deepface" / "weights" / MODELS["race"][0]) as f:
        assert f.attrs["backend"] in (b"tensorflow", "tensorflow") and len(f.attrs["layer_names"]) > 30
        kernel = f["predictions"][f["predictions"].attrs["weight_names"][0]]
        assert kernel.shape[-1] == 6 and kernel.compression in (None, "gzip")


# -- the real DeepFace path --------------------------------------------------------------------------------
def test_noise_images_are_counted_and_listed_as_no_face(deepface_home, seaweed, tmp_path):
    from facelift.tasks.audit.outputs import write_outputs

    root = _s3_root(seaweed)
    ds = make_synthetic_dataset(root, "noise", n_pairs=4, size=64, shard_size=2, prompt_mode="baseline")
    results = audit_dataset(ds, AuditOptions(detector="opencv"))
    assert [r.no_face for r in results] == [2, 2] and sum(r.faces for r in results) == 0
    out = write_outputs([ds], "opencv", root.child("runs/noise"))
    summary = out.report["audits"]["baseline"]
    assert summary["detection_failure_rate"] == 1.0 and summary["no_face"] == 4 and summary["faces"] == 0
    failures = pd.read_csv(io.BytesIO(root.child("runs/noise").read_bytes("failures.csv")))
    assert sorted(failures["pair_id"]) == sorted(ds.plan()["pair_id"])
    assert set(failures["reason"]) == {"no face detected"}
    assert "tsne" not in out.report  # nothing to embed, no crash


def _corrupt_one_image(ds: Dataset, shard: int, row: int) -> str:
    table = ds.read_shard(shard)
    cells = table.column("schnell_image").to_pylist()
    cells[row] = {"bytes": b"not a png", "path": cells[row]["path"]}
    idx = table.schema.get_field_index("schnell_image")
    ds.commit_shard(shard, table.set_column(idx, "schnell_image", pa.array(cells, table.schema.field(idx).type)))
    return table.column("pair_id")[row].as_py()


def test_skip_detector_runs_deepface_and_resumes_per_shard(deepface_home, tmp_path):
    ds = make_synthetic_dataset(Store(str(tmp_path)), "enr", n_pairs=4, size=48, shard_size=2, seed=3)
    bad = _corrupt_one_image(ds, 1, 1)
    opts = AuditOptions(detector="skip")
    first = audit_dataset(ds, opts)
    assert [r.images for r in first] == [2, 2] and sum(r.errors for r in first) == 1
    assert ds.store.exists(audit_key("skip", 0)) and ds.store.exists(audit_key("skip", 1))
    df = load_audit(ds, "skip")
    ok = df[df["error"].isna()]
    assert len(ok) == 3 and ok["face_detected"].all()
    assert ok["gender"].isin(["Man", "Woman"]).all() and ok["dominant_race"].isin(RACES).all()
    np.testing.assert_allclose(ok[[race_column(r) for r in RACES]].sum(axis=1), 100.0, atol=0.1)
    np.testing.assert_allclose(ok["gender_man"] + ok["gender_woman"], 100.0, atol=0.1)
    emb = np.stack(ok["embedding"].to_numpy())
    assert emb.shape == (3, 512) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])  # embeddings depend on the image
    assert df.loc[df["pair_id"] == bad, "error"].str.contains("corrupt").all()

    # resume: nothing left to do; extending with the dev images adds rows and keeps the schnell ones
    before = read_parquet_bytes(ds.store.read_bytes(audit_key("skip", 0))).to_pandas()
    assert all(r.skipped for r in audit_dataset(ds, opts))
    extended = audit_dataset(ds, AuditOptions(detector="skip", include_dev=True))
    assert [r.images for r in extended] == [2, 2]
    both = load_audit(ds, "skip", ("schnell", "dev"))
    assert len(both) == 8 and sorted(both["image"].unique()) == ["dev", "schnell"]
    after = read_parquet_bytes(ds.store.read_bytes(audit_key("skip", 0))).to_pandas()
    pd.testing.assert_frame_equal(after[after["image"] == "schnell"].reset_index(drop=True), before)
    with pytest.raises(AuditError, match="delete"):
        audit_dataset(ds, AuditOptions(detector="skip", align=False))


# -- aggregation -------------------------------------------------------------------------------------------
def _rows(specs: list[tuple[str, float, str]], no_face: int = 0, errors: int = 0, prefix: str = "p"):
    rows = []
    for i, (gender, age, race) in enumerate(specs):
        rows.append({"pair_id": f"{prefix}{i}", "nconst": f"nm{i:07d}", "name": f"Name {i}", "prompt": "x",
                     "shard": 0, "image": "schnell", "face_detected": True, "n_faces": 1, "error": None,
                     "age": age, "gender": gender, "dominant_race": race, "embedding": None})
    for j in range(no_face + errors):
        rows.append({"pair_id": f"{prefix}x{j}", "nconst": "", "name": "", "prompt": "x", "shard": 0,
                     "image": "schnell", "face_detected": False, "n_faces": 0,
                     "error": "corrupt image" if j < errors else None, "age": None, "gender": None,
                     "dominant_race": None, "embedding": None})
    return pd.DataFrame(rows)


def test_age_buckets_match_the_paper():
    assert [age_bucket(a) for a in (5, 17, 18, 30, 31, 50, 51, 80)] == [
        "under 18", "under 18", "18-30", "18-30", "31-50", "31-50", "50+", "50+"]
    assert age_bucket(None) is None and age_bucket(float("nan")) is None


def test_summary_and_table1_side_by_side():
    base = _rows([("Man", 25, "white")] * 6 + [("Woman", 40, "asian")] * 2, no_face=1, errors=1)
    enr = _rows([("Man", 55, "black"), ("Woman", 29, "indian"), ("Woman", 33, "white"),
                 ("Man", 12, "latino hispanic")])
    s = summarize(base)
    assert (s["images"], s["faces"], s["no_face"], s["errors"]) == (10, 8, 1, 1)
    assert s["detection_failure_rate"] == pytest.approx(0.2) and s["male_to_female"] == pytest.approx(3.0)
    assert s["gender"] == {"man": 0.75, "woman": 0.25}
    assert s["age"] == {"under 18": 0.0, "18-30": 0.75, "31-50": 0.25, "50+": 0.0}
    assert s["race"]["white"] == 0.75 and s["race"]["asian"] == 0.25 and sum(s["race"].values()) == 1
    assert s["no_face_pair_ids"] == ["px1"] and s["error_pair_ids"] == ["px0"]
    t = table1({"baseline": s, "enriched": summarize(enr)})
    assert list(t.columns) == ["statistic", "baseline", "enriched"]
    row = t.set_index("statistic")
    assert row.loc["gender M:F", "baseline"] == "3.00:1" and row.loc["gender M:F", "enriched"] == "1.00:1"
    assert row.loc["race white", "baseline"] == "75.0%" and row.loc["age under 18", "enriched"] == "25.0%"
    assert row.loc["detection failures", "baseline"] == "20.0%"
    assert to_markdown(t).splitlines()[0] == "| statistic | baseline | enriched |"
    assert tv_distance({"a": 1.0}, {"b": 1.0}) == 1.0 and tv_distance({"a": .5, "b": .5}, {"a": .5, "b": .5}) == 0


# -- t-SNE ------------------------------------------------------------------------------------------------
def _clusters(per: int, k: int = 3, dim: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim)) * 4
    labels = np.repeat(np.arange(k), per)
    return (centers[labels] + rng.standard_normal((k * per, dim))).astype(np.float32), labels


def _same_cluster_neighbour(coords: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> float:
    d = np.linalg.norm(coords[idx, None] - coords[None], axis=2)
    d[np.arange(len(idx)), idx] = np.inf
    return float((labels[d.argmin(axis=1)] == labels[idx]).mean())


def test_tsne_separates_clusters_and_places_the_rest():
    x, labels = _clusters(40)
    res = tsne_embed(x, perplexity=10, max_fit=60, seed=0)
    assert res.coords.shape == (120, 2) and (res.fitted, res.placed) == (60, 60)
    assert np.isfinite(res.coords).all()
    assert _same_cluster_neighbour(res.coords, labels, np.arange(120)) > 0.95
    with pytest.raises(ValueError, match="at least 4"):
        tsne_embed(x[:3])


def test_tsne_plot_is_a_png():
    x, labels = _clusters(10)
    coords = tsne_embed(x, perplexity=5).coords
    png = plot_tsne(coords, [RACES[i] for i in labels], "test", groups=["baseline"] * 15 + ["enriched"] * 15)
    assert png.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.format == "PNG" and img.size[0] > 300


# -- rebalance ----------------------------------------------------------------------------------------------
def _skewed_names(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    race = rng.choice(list(RACES), n, p=[.12, .08, .05, .07, .03, .65])
    gender = np.where(race == "white", rng.choice(["Man", "Woman"], n, p=[.8, .2]),
                      rng.choice(["Man", "Woman"], n, p=[.55, .45]))
    age = rng.choice([25.0, 40.0, 60.0], n, p=[.6, .3, .1])
    return _rows(list(zip(gender, age, race, strict=True)), prefix="e")


def test_rebalance_moves_a_skewed_draw_toward_the_target():
    audit = _skewed_names()
    target = parse_target({"race": {r: 1 / 6 for r in RACES}, "gender": {"male": 0.5, "female": 0.5}})
    names = name_attributes(audit)
    for count in (400, 1200):
        weights, report = compute_weights(audit, target, count=count)
        assert list(weights.columns) == ["nconst", "name", "weight"] and (weights["weight"] >= 0).all()
        w = weights.set_index("nconst").loc[names["nconst"], "weight"].to_numpy()
        for seed in (1, 2):
            before = simulate_sampling(names, None, count, seed)
            after = simulate_sampling(names, w, count, seed)
            for attr in target:
                d0, d1 = tv_distance(before[attr], target[attr]), tv_distance(after[attr], target[attr])
                assert d1 < 0.4 * d0, (count, attr, d0, d1)
        assert all(report["draw"]["tv_weighted"][a] < report["draw"]["tv_uniform"][a] for a in target)
    raked = rake(names, target)
    assert raked.max() <= 20.0 + 1e-9 and raked.mean() == pytest.approx(1.0)


def test_rebalance_rejects_bad_targets_and_baseline_audits():
    with pytest.raises(RebalanceError, match="sum"):
        parse_target({"gender": {"man": 0.7, "woman": 0.7}})
    with pytest.raises(RebalanceError, match="unknown race category"):
        parse_target({"race": {"martian": 1.0}})
    with pytest.raises(RebalanceError, match="unknown target attribute"):
        parse_target({"height": {"tall": 1.0}})
    baseline = _rows([("Man", 30, "white")] * 3).assign(name="")
    with pytest.raises(RebalanceError, match="baseline"):
        name_attributes(baseline)


def test_rebalance_cli_writes_the_weights_contract(tmp_path):
    from facelift.cli.main import app

    ds = make_synthetic_dataset(Store(str(tmp_path)), "pilot", n_pairs=2, size=16, shard_size=2)
    audit = _skewed_names(400, seed=5).drop(columns=["embedding"])
    table = pa.Table.from_pandas(audit, preserve_index=False)
    table = pa.table({f.name: (table.column(f.name) if f.name in table.column_names
                               else pa.nulls(len(table))) for f in AUDIT_SCHEMA}).cast(AUDIT_SCHEMA)
    ds.store.write_bytes(audit_key("opencv", 0), table_to_parquet_bytes(table))
    target = tmp_path / "target.toml"
    target.write_text('[race]\nwhite = 0.5\nblack = 0.5\n[gender]\nman = 0.5\nwoman = 0.5\n')
    out = tmp_path / "weights.parquet"
    res = CliRunner().invoke(app, ["rebalance", ds.uri, "--target", str(target), "--out", str(out),
                                   "--count", "100"])
    assert res.exit_code == 0, res.output
    schema = pa.parquet.read_schema(out)
    assert [(f.name, f.type) for f in schema] == [("nconst", pa.string()), ("name", pa.string()),
                                                  ("weight", pa.float64())]
    weights = pd.read_parquet(out)
    assert len(weights) == 400
    names = name_attributes(audit)
    eligible = set(weights.loc[weights["weight"] > 0, "nconst"])
    assert eligible == set(names.loc[names["race"].isin(["white", "black"]), "nconst"])
    assert "plan.weights_uri=" in res.output
    bad = CliRunner().invoke(app, ["rebalance", ds.uri, "--target", str(tmp_path / "nope.json")])
    assert bad.exit_code == 2 and "not found" in bad.output


# -- the flow --------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_audit_flow_baseline_vs_enriched_on_s3(deepface_home, seaweed, monkeypatch):
    import facelift.flows.audit_diversity as mod

    events = []
    real_emit = mod.emit_event
    monkeypatch.setattr(mod, "emit_event", lambda **kw: (events.append(kw), real_emit(**kw))[1])
    root = _s3_root(seaweed)
    base = make_synthetic_dataset(root, "base", n_pairs=3, size=48, shard_size=2, prompt_mode="baseline")
    enr = make_synthetic_dataset(root, "enr", n_pairs=3, size=48, shard_size=2, seed=7)
    result = mod.audit_diversity([base.uri, enr.uri], detector="skip", endpoint_url=seaweed.endpoint,
                                 run_id="audit-test")
    out = root.child("runs/audit-test")
    assert result["run_uri"] == out.url()
    for name in ("report.json", "table1.md", "table1.csv", "failures.csv", "tsne.parquet", "tsne_race.png",
                 "tsne_gender.png", "tsne_prompt.png"):
        assert out.exists(name), name
    for name in ("tsne_race.png", "tsne_gender.png"):
        assert out.read_bytes(name).startswith(PNG_MAGIC)
    report = json.loads(out.read_bytes("report.json"))
    assert set(report["audits"]) == {"baseline", "enriched"} and report["tsne"]["points"] == 6
    assert report["audits"]["enriched"]["faces"] == 3
    assert "| statistic | baseline | enriched |" in out.read_bytes("table1.md").decode()
    assert base.store.exists(audit_key("skip", 1)) and enr.store.exists(audit_key("skip", 0))
    assert events == [{"event": "facelift.audit.completed",
                       "resource": {"prefect.resource.id": "facelift.run.audit-test"},
                       "payload": {"run_uri": out.url(), "dataset_uris": [base.uri, enr.uri]}}]
