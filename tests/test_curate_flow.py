"""The curate-pairs flow and `facelift curate` on SeaweedFS: files and artifacts, a rerun that does nothing, new
thresholds that score nothing again, and train's --curation at the door."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from facelift.storage import Store
from facelift.testing import make_synthetic_dataset

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _scores(ds) -> list[str]:
    return sorted(k for k in ds.store.list("curation") if k.startswith("scores-"))


@pytest.mark.slow  # two minutes of flow runs: `make test-slow` (CI runs both suites)
def test_curate_on_s3_writes_keep_and_artifacts_then_reruns_nothing(seaweed, deepface_home, cache_dir,
                                                                     monkeypatch):
    from prefect.client.orchestration import get_client

    from facelift.cli.main import app
    from facelift.flows.curate_pairs import curate_pairs
    from facelift.models.tiny_metrics import ensure_tiny_clip

    monkeypatch.setenv("FACELIFT_CACHE", str(cache_dir))
    clip = str(ensure_tiny_clip(cache_dir))
    root = Store(f"s3://facelift/curate-{uuid.uuid4().hex[:8]}", seaweed.endpoint)
    ds = make_synthetic_dataset(root, "cur", n_pairs=16, size=32, shard_size=8, seed=2)
    common = dict(clip_model=clip, iqa_model=clip, detector="opencv", endpoint_url=seaweed.endpoint,
                  report_only=["no_face", "multi_face", "identity_changed", "scene_changed", "off_prompt",
                               "no_improvement"])
    first = curate_pairs(ds.uri, skip_completed=True, **common)
    assert first["pairs"] == 16 and first["kept"] == 16 and first["kept_by_split"]
    cur = ds.store.child(f"curation/{first['curation_id']}")
    info = json.loads(cur.read_bytes("curation.json"))
    assert info["counts"][0]["reason"] == "corrupt" and info["models"]["clip"].startswith(clip)
    assert "## Reasons" in cur.read_bytes("report.md").decode() and cur.exists("histograms.png")
    assert json.loads(ds.store.read_bytes("curation/latest.json"))["curation_id"] == first["curation_id"]
    [scores] = _scores(ds)
    objects = sorted(ds.store.child(f"curation/{scores}").list(""))
    assert len(objects) == 2  # one per shard

    again = curate_pairs(ds.uri, skip_completed=True, **common)  # the trigger's rerun: nothing to do
    assert again["skipped"] is True and again["curation_id"] == first["curation_id"]

    # new thresholds: a new curation, decided from the stored scores
    stricter = curate_pairs(ds.uri, thresholds={"no_change_ratio": 0.99}, min_kept_fraction=0.0, **common)
    assert stricter["curation_id"] != first["curation_id"] and stricter["kept"] < 16
    assert _scores(ds) == [scores] and sorted(ds.store.child(f"curation/{scores}").list("")) == objects

    async def artifacts():
        async with get_client() as client:
            return {a.key: a for a in await client.read_artifacts() if a.key and first["curation_id"] in a.key}

    import asyncio

    arts = asyncio.run(artifacts())
    table = next(a for k, a in arts.items() if not k.endswith(("-workers", "-report")))
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["reason"] for r in rows][:2] == ["corrupt", "no_change"] and "anchor" in rows[0]
    assert any(k.endswith("-report") for k in arts) and any(k.endswith("-workers") for k in arts)

    # the CLI: the summary lines, and one-line errors for a bad threshold and a missing curation
    res = CliRunner().invoke(app, ["curate", ds.uri, "--endpoint-url", seaweed.endpoint, "--clip-model", clip,
                                   "--iqa-model", clip, "--detector", "opencv", "--report-only", "off_prompt",
                                   "--report-only", "no_improvement", "--report-only", "scene_changed",
                                   "--report-only", "no_face", "--report-only", "multi_face",
                                   "--report-only", "identity_changed"])
    assert res.exit_code == 0, res.output
    assert f"curation {first['curation_id']}: kept 16 of 16 pairs" in res.output
    bad = CliRunner().invoke(app, ["curate", ds.uri, "--endpoint-url", seaweed.endpoint, "--set", "clip_img=0.5"])
    assert bad.exit_code == 2 and "clip_img" in bad.output and "Traceback" not in bad.output
    missing = CliRunner().invoke(app, ["train", ds.uri, "--endpoint-url", seaweed.endpoint, "--curation",
                                       "c-000000000000", "--flavor", "debug"])
    assert missing.exit_code == 2 and "has no curation 'c-000000000000'" in missing.output


def test_train_refuses_latest_when_nothing_was_curated(tmp_path):
    from facelift.cli.main import app

    ds = make_synthetic_dataset(Store(str(tmp_path)), "plain", n_pairs=8, size=16, shard_size=8)
    res = CliRunner().invoke(app, ["train", ds.uri, "--curation", "latest", "--flavor", "debug"])
    assert res.exit_code == 2 and "has no curation yet: run `facelift curate" in res.output
    assert len(res.output.strip().splitlines()) == 1
