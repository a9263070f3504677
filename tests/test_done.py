"""The completed-run index behind idempotent triggered runs: same (content, config) -> same key; a record
written on completion is found by the next run with that key."""

from __future__ import annotations

from facelift import done
from facelift.storage import Store
from facelift.tasks.train.loop import TrainConfig
from facelift.testing import make_synthetic_dataset


def test_train_key_follows_content_and_config_not_where_the_run_goes(tmp_path):
    ds = make_synthetic_dataset(Store(str(tmp_path)), "done", n_pairs=8, size=32, shard_size=8, seed=1)
    base = TrainConfig(dataset_uri=ds.uri, head="unet_cbam", flavor="debug", max_steps=4)
    root, key = done.train_key(base)
    assert done.train_key(base.model_copy(update={"run_id": "elsewhere", "run_uri": str(tmp_path / "x")}))[1] == key
    assert done.train_key(base.model_copy(update={"max_steps": 5}))[1] != key  # another config: another run
    assert done.run_key("train", ["other-content"], {}) != key
    assert done.find_completed(root, key) is None
    done.record_completed(root, key, {"run_id": "r1", "run_uri": "u", "result": {"run_id": "r1"}})
    record = done.find_completed(root, key)
    assert record["run_id"] == "r1" and record["result"] == {"run_id": "r1"}
    line = done.skip_line("training", "head unet_cbam", record)
    assert "would repeat run r1" in line and "\n" not in line
