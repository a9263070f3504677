"""The completed-run index behind idempotent triggered runs: same (content, config) -> same key; a record
written on completion is found by the next run with that key."""

from __future__ import annotations

import shutil
import threading
import time

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


def test_a_dataset_deleted_and_rebuilt_at_the_same_uri_is_trained_again(tmp_path):
    """The same build parameters give the same fingerprint; the key follows the build itself (its manifest's
    version), so a triggered training of the rebuilt dataset does not find the old run's record."""
    store = Store(str(tmp_path))
    ds = make_synthetic_dataset(store, "again", n_pairs=8, size=32, shard_size=8, seed=1)
    cfg = TrainConfig(dataset_uri=ds.uri, head="unet_cbam", flavor="debug", max_steps=4)
    root, key = done.train_key(cfg)
    done.record_completed(root, key, {"run_id": "r1", "run_uri": "u", "result": {"run_id": "r1"}})
    assert done.train_key(cfg)[1] == key  # the same build: found
    shutil.rmtree(ds.uri)
    rebuilt = make_synthetic_dataset(store, "again", n_pairs=8, size=32, shard_size=8, seed=1)
    assert rebuilt.uri == ds.uri and rebuilt.info() == ds.info()  # the same parameters, the same dataset.json
    _, again = done.train_key(cfg)
    assert again != key and done.find_completed(root, again) is None


def test_two_runs_that_start_together_compute_a_key_once(tmp_path):
    """The claim is exclusive: of 8 threads that check for a record and claim the key at the same moment, one
    computes it; the others are told who holds it. Once released (or completed), it can be claimed again."""
    root = Store(str(tmp_path))
    start, got = threading.Barrier(8), []

    def run(i: int) -> None:
        start.wait()
        with done.claim(root, "train-abc", "training x") as busy:
            got.append((i, busy))
            if busy is None:
                time.sleep(1.0)  # computing, while the others try

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [i for i, busy in got if busy is None]
    assert len(got) == 8 and len(winners) == 1, got
    assert all("training x is being written by" in busy for _, busy in got if busy), got
    with done.claim(root, "train-abc", "training x") as busy:  # released: free again
        assert busy is None


def test_unless_done_computes_once_and_says_why_it_skips_in_one_line(tmp_path):
    """The flows' skip logic: compute (None) the first time and hold the claim meanwhile; then the recorded
    result, with one 'skipped:' line; while another run holds the claim, ``{}`` and who holds it."""
    import logging

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    # a logger of its own, outside logging's registry: no logging config another test (or Prefect) applies can
    # disable or redirect it, and no other logger's lines reach it
    log, got = logging.Logger("unless-done", logging.INFO), Lines()
    log.addHandler(got)

    def lines() -> list[str]:
        out, got.lines = got.lines, []
        return out

    root = Store(str(tmp_path))
    with done.unless_done(root, "curate-k", "curation", "dataset d", True, log) as prior:
        assert prior is None
        with done.unless_done(root, "curate-k", "curation", "dataset d", True, log) as other:
            assert other == {}  # the first run holds the claim
        [busy] = lines()
        assert busy.startswith("skipped: curation of dataset d is being written by"), busy
        done.record_completed(root, "curate-k", {"run_id": "c1", "result": {"curation_id": "c1"}})
    with done.unless_done(root, "curate-k", "curation", "dataset d", True, log) as prior:
        assert prior == {"curation_id": "c1"}
    [skip] = lines()
    assert skip.startswith("skipped: this curation would repeat run c1"), skip
    with done.unless_done(root, "curate-k", "curation", "dataset d", False, log) as prior:
        assert prior is None  # an explicit run always computes
    assert lines() == []
    assert "skipped: skipped" not in busy + skip
