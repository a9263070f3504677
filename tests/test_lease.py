"""One writer per dataset and per run: the lease object, on local disk and on SeaweedFS (whose S3 gateway
honours ``If-None-Match: *`` and ``If-Match``, checked here), and two concurrent identical builds."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid

import pandas as pd
import pytest

from facelift.dataset import Dataset
from facelift.lease import LEASE_FILE, Lease, LeaseHeld, LeaseLost, is_free, read_record
from facelift.storage import Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "datasets" / "d1"))
    seaweed = request.getfixturevalue("seaweed")
    return Store(f"s3://facelift/lease-{uuid.uuid4().hex[:6]}/datasets/d1", seaweed.endpoint)


def test_conditional_create_and_replace(store):
    assert store.create_exclusive("x.json", b"1") and not store.create_exclusive("x.json", b"2")
    assert store.read_bytes("x.json") == b"1"
    _, tag = store.read_tagged("x.json")
    assert store.replace_if("x.json", b"3", tag) and not store.replace_if("x.json", b"4", tag)
    assert store.read_bytes("x.json") == b"3"


def test_second_writer_exits_naming_the_holder_then_gets_it_after_release(store):
    first = Lease(store, "dataset d1", ttl_s=30, settle_s=0).acquire()
    try:
        held = rf"dataset d1 is being written by {first.holder} \(generation 1, since .*ttl 30s"
        with pytest.raises(LeaseHeld, match=held):
            Lease(store, "dataset d1", ttl_s=30, wait_s=0, settle_s=0).acquire()
    finally:
        first.release()
    assert is_free(store)
    with Lease(store, "dataset d1", wait_s=0, settle_s=0) as second:
        assert not is_free(store) and second.acquired_at and second.generation == first.generation + 1


def test_a_waiting_writer_gets_the_lease_when_the_holder_releases(store):
    first = Lease(store, "dataset d1", ttl_s=30, settle_s=0).acquire()
    threading.Timer(1.5, first.release).start()
    t0 = time.monotonic()
    with Lease(store, "dataset d1", wait_s=30, poll_s=0.2, settle_s=0):
        assert time.monotonic() - t0 >= 1.0


def test_a_crashed_holders_lease_expires_and_is_taken_over_while_a_live_one_is_renewed(store):
    live = Lease(store, "dataset d1", ttl_s=1.2, settle_s=0).acquire()
    time.sleep(2.0)  # three heartbeats: still held
    with pytest.raises(LeaseHeld):
        Lease(store, "dataset d1", wait_s=0, settle_s=0).acquire()
    live._stop.set()  # the holder "crashes": no more heartbeats, no release
    live._thread.join()
    taker = Lease(store, "dataset d1", ttl_s=30, wait_s=5, poll_s=0.2, settle_s=0).acquire()
    try:
        assert taker.holder != live.holder
        live._start_heartbeat()  # the old holder wakes up: its next beat finds the lease lost
        time.sleep(0.8)
        with pytest.raises(LeaseLost, match=rf"lost \(now held by {taker.holder} \(generation 2"):
            live.check()
    finally:
        live.release()  # not its lease any more: left alone
        assert read_record(store)[0]["holder"] == taker.holder
        taker.release()


def test_a_reader_whose_clock_runs_ahead_cannot_take_a_live_lease(store):
    live = Lease(store, "dataset d1", ttl_s=2.0, settle_s=0).acquire()
    try:
        ahead = Lease(store, "dataset d1", wait_s=4.0, poll_s=0.1, settle_s=0, clock=lambda: time.time() + 100)
        with pytest.raises(LeaseHeld, match=f"being written by {live.holder}"):
            ahead.acquire()  # 4 s of waiting: two ttls, during which the holder keeps renewing
        live.check()
    finally:
        live.release()


def test_a_waiter_during_renewals_never_wins_a_live_local_lease(tmp_path):
    store = Store(str(tmp_path / "d1"))
    live = Lease(store, "dataset d1", ttl_s=0.2, settle_s=0).acquire()
    live._stop.set()  # its renewals now come from a tight loop: the more replacements, the more chances to slip in
    live._thread.join()
    stop, renewals = threading.Event(), [0]

    def renew() -> None:
        while not stop.is_set():
            record, tag = read_record(store)
            record["heartbeat"] = time.time()
            renewals[0] += store.replace_if(LEASE_FILE, json.dumps(record).encode(), tag)

    thread = threading.Thread(target=renew)
    thread.start()
    try:
        wins = 0
        for _ in range(1000):
            wins += store.create_exclusive(LEASE_FILE, b'{"holder": "intruder"}')
            with contextlib.suppress(LeaseHeld):
                Lease(store, "dataset d1", ttl_s=30, wait_s=0, settle_s=0).acquire().release()
                wins += 1
    finally:
        stop.set()
        thread.join()
    assert wins == 0 and renewals[0] > 100
    assert read_record(store)[0]["holder"] == live.holder
    live.release()
    assert is_free(store)


class _Outage(Store):
    """A store whose writes fail with a plain OSError (a dropped connection, a full disk) once ``down``."""

    down = False

    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        if _Outage.down:
            raise OSError("connection reset by peer")
        return super().replace_if(key, data, tag)


def test_a_heartbeat_that_cannot_renew_for_ttl_marks_the_lease_lost(tmp_path):
    lease = Lease(_Outage(str(tmp_path / "d1")), "dataset d1", ttl_s=0.8, settle_s=0).acquire()
    seen: list[str] = []
    lease.on_lost = seen.append
    try:
        _Outage.down = True
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.8 - lease.margin_s - 0.1:
            lease.check()  # still trusted while the last renewal is fresh enough
            time.sleep(0.02)
        time.sleep(0.25)
        with pytest.raises(LeaseLost, match="last renewed"):  # stale before any waiter may take it over
            lease.check()
        time.sleep(0.8)
        with pytest.raises(LeaseLost, match="not renewed for .*OSError: connection reset"):
            lease.check()
        assert seen and "OSError" in seen[0]
    finally:
        _Outage.down = False
        lease.release()


def test_the_fence_refuses_once_another_generation_holds_the_lease(store):
    first = Lease(store, "dataset d1", ttl_s=0.6, settle_s=0).acquire()
    fence = first.fence
    fence.check()
    first._stop.set()  # the holder hangs: no renewals
    first._thread.join()
    second = Lease(store, "dataset d1", ttl_s=30, wait_s=5, poll_s=0.1, settle_s=0).acquire()
    try:
        with pytest.raises(LeaseLost, match=rf"generation 1\) is now held by {second.holder} \(generation 2"):
            fence.check()
        second.fence.check()
    finally:
        second.release()
    with pytest.raises(LeaseLost, match="nobody"):
        second.fence.check()
    first.release()


@pytest.mark.usefixtures("prefect_harness", "ray_local", "cache_dir")
def test_two_concurrent_identical_builds_render_each_pair_once(tmp_path):
    from facelift.flows.build_dataset import build_dataset

    results, errors = [], []

    def run() -> None:
        try:
            results.append(build_dataset(count=16, root=str(tmp_path), overrides={"plan.shard_size": 4,
                                                                                   "storage.lease_ttl_s": 20}))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    threads[0].start()
    time.sleep(2)
    threads[1].start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(results) == 2 and results[0]["dataset_id"] == results[1]["dataset_id"]
    assert sorted(r["rendered_pairs"] for r in results) == [0, 16]  # every pair rendered once
    assert sorted(r["changed"] for r in results) == [False, True]  # and announced once
    ds = Dataset.open(results[0]["dataset_uri"])
    manifest, plan = ds.manifest(), ds.plan()
    assert sorted(manifest["pair_id"]) == sorted(plan["pair_id"]) and not manifest["pair_id"].duplicated().any()
    assert isinstance(manifest, pd.DataFrame) and is_free(ds.store)


def test_a_second_trainer_of_one_run_id_exits_naming_the_holder(tmp_path):
    from facelift.tasks.train.loop import TrainConfig, resolve_run, train
    from facelift.testing import make_synthetic_dataset

    ds = make_synthetic_dataset(Store(str(tmp_path)), "lease-train", n_pairs=8, size=32, shard_size=8, seed=1)
    cfg = resolve_run(TrainConfig(dataset_uri=ds.uri, head="unet_cbam", flavor="debug", run_id="r1", max_steps=1,
                                  resolution=32))
    first = Lease(Store(cfg.run_uri), "run r1", settle_s=0).acquire()  # a trainer of r1 is running
    try:
        with pytest.raises(LeaseHeld, match=rf"run r1 is being written by {first.holder}"):
            train(cfg)  # refused before Ray starts: it would resume from the first one's checkpoints
    finally:
        first.release()
