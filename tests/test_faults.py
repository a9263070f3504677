"""Faults cost no GPU work: commit retries over the rendered table, outages ridden out, kills survived."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from facelift.config import StorageConfig
from facelift.dataset import Dataset, shard_schema
from facelift.flows.build_dataset import build_dataset
from facelift.lease import LEASE_FILE, read_record
from facelift.storage import StorageError, Store
from facelift.tasks.build.commit import CommitError, Spool, backoff_delays, commit_with_retry, encode_shard
from facelift.testing import SeaweedS3, stop_pid

SMALL = {"plan.shard_size": 4}


class FlakyDataset:
    """A dataset whose first ``failures`` commits fail like an unreachable store."""

    def __init__(self, failures: int, where: str = "s3://bucket/prefix at http://127.0.0.1:1"):
        self.failures, self.calls, self.written = failures, 0, None
        self.store = type("S", (), {"where": staticmethod(lambda: where)})()

    def commit_shard_bytes(self, shard: int, data: bytes) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageError(f"cannot write shards/{shard:05d}.parquet: Connection refused\n(details)")
        self.written = data
        return len(data)


def _table(pair_ids: list[str]) -> pa.Table:
    rows = [{f.name: None for f in shard_schema()} | {"pair_id": p, "shard": 0, "seed": 1} for p in pair_ids]
    return pa.Table.from_pylist(rows, schema=shard_schema())


def test_commit_retries_over_the_same_bytes_with_growing_jittered_delays(caplog):
    ds, delays = FlakyDataset(failures=5), []
    policy = StorageConfig(commit_retry_s=600, commit_backoff_s=1, commit_backoff_max_s=8)
    with caplog.at_level(logging.WARNING, logger="facelift.tasks.build.commit"):
        size = commit_with_retry(ds, 3, b"parquet-bytes", policy, sleep=delays.append)
    assert size == len(b"parquet-bytes") and ds.written == b"parquet-bytes" and ds.calls == 6
    caps = [1, 2, 4, 8, 8]  # base * 2**k, capped
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True)), delays
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 5  # one line per failed attempt, naming the store and the shard
    assert all("shard 00003" in m and "s3://bucket/prefix at http://127.0.0.1:1" in m for m in retries)
    assert all("\n" not in m for m in retries)


def test_commit_gives_up_after_its_budget_and_says_where_the_render_is():
    now = [0.0]
    ds = FlakyDataset(failures=10**6)
    policy = StorageConfig(commit_retry_s=60, commit_backoff_s=1, commit_backoff_max_s=30)
    with pytest.raises(CommitError, match=r"shard 00007: commit to .* failed for \d+s .*kept at /spool/x") as err:
        commit_with_retry(ds, 7, b"x", policy, sleep=lambda d: now.__setitem__(0, now[0] + d),
                          clock=lambda: now[0], kept_at=Path("/spool/x"))
    assert now[0] <= 60 and ds.calls >= 5
    assert "\n" not in str(err.value)


def test_default_budget_rides_out_five_minutes():
    policy = StorageConfig()
    assert policy.commit_retry_s >= 300
    gen = backoff_delays(policy, random.Random(0))
    waited = sum(next(gen) for _ in range(20))
    assert waited < policy.commit_retry_s  # 20 attempts fit in the budget: no attempt is wasted on a long sleep


def test_spool_keeps_only_a_render_that_matches_the_plan(tmp_path):
    spool = Spool(tmp_path, "s3://bucket/datasets/a")
    data = encode_shard(_table(["p1", "p2"]))
    spool.save(4, data)
    loaded = spool.load(4, ["p1", "p2"])
    assert loaded is not None and loaded[0] == data and loaded[1].num_rows == 2
    assert spool.load(4, ["p2", "p1"]) is None and not spool.path(4).exists()  # stale: removed
    spool.path(5).write_bytes(b"half a parquet")
    assert spool.load(5, ["p1"]) is None and not spool.path(5).exists()  # corrupt: removed
    assert Spool(tmp_path, "s3://bucket/datasets/b").path(4) != spool.path(4)  # per dataset


pytestmark_build = pytest.mark.usefixtures("prefect_harness", "ray_local", "cache_dir")


@pytestmark_build
def test_worker_killed_while_committing_loses_no_render(tmp_path):
    marker = tmp_path / "killed-once"
    result = build_dataset(count=12, root=str(tmp_path / "data"), overrides={
        **SMALL, "ray.chaos.kill_on_shard": 1, "ray.chaos.kill_during": "commit", "ray.chaos.marker": str(marker)})
    killed = marker.read_text()  # the worker really died, after rendering shard 1, before its upload
    ds = Dataset.open(result["dataset_uri"])
    manifest = ds.manifest()
    assert len(manifest) == 12 and manifest["pair_id"].is_unique
    # shard 1 was committed from the killed worker's spooled render: its provenance names the dead process,
    # which had rendered shard 0 before; the restarted actor (a new process) rendered shard 2
    workers = manifest.groupby("shard")["worker"].agg(set).to_dict()
    assert workers[0] == workers[1] == {killed} and workers[2] != {killed}
    assert result["spooled_shards_committed"] == [1]
    assert result["rendered_pairs"] == 12 - 4  # + the 4 the killed worker rendered once = the plan, none twice


@pytest.mark.slow  # a 60 s outage ridden out: make test-slow
@pytestmark_build
def test_build_rides_out_an_object_store_outage(tmp_path):
    """SeaweedFS stopped for 30 s mid-build, then restarted on the same ports and data: the build completes,
    the manifest equals the plan, and every pair was rendered exactly once."""
    server = SeaweedS3(tmp_path / "weed").start()
    server.make_bucket("facelift")
    root = f"s3://facelift/outage-{uuid.uuid4().hex[:8]}"
    events: dict[str, object] = {}

    def outage() -> None:
        try:
            store, shards = Store(root, server.endpoint), []
            deadline = time.monotonic() + 300
            while len(shards) < 3 and time.monotonic() < deadline:
                ids = store.list("datasets") if store.exists("datasets") else []
                shards = Dataset.at(store, ids[0]).committed_shards() if ids else []
                time.sleep(0.2)
            server.stop()
            events["down"] = time.monotonic()
            time.sleep(30)
            events["up_at"] = time.monotonic()
        finally:
            server.start()
        events["committed_before_stop_began"] = len(shards)

    thread = threading.Thread(target=outage, daemon=True)
    try:
        thread.start()
        result = build_dataset(count=32, root=root, endpoint_url=server.endpoint, overrides={
            **SMALL, "ray.chaos.shard_delay_s": 1.0, "storage.commit_backoff_max_s": 4})
        finished = time.monotonic()
        thread.join(timeout=60)
        assert "up_at" in events, "the outage never happened"
        assert 3 <= events["committed_before_stop_began"] < 8 and finished > events["up_at"]  # mid-build
        ds = Dataset.open(result["dataset_uri"], server.endpoint)
        manifest, plan = ds.manifest(), ds.plan()
        assert sorted(manifest["pair_id"]) == sorted(plan["pair_id"]) and manifest["pair_id"].is_unique
        assert result["rendered_pairs"] == 32 and result["spooled_shards_committed"] == []
    finally:
        thread.join(timeout=120)
        server.stop()


def _cli(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facelift.cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def _client_env(tmp_path: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "RAY_TMPDIR": ray_tmp}


@pytest.mark.slow  # two builds with Ray: make test-slow
@pytestmark_build
def test_flow_process_killed_mid_build_resumes_only_the_missing_shards(tmp_path):
    root = tmp_path / "data"
    args = ["build", "--count", "12", "--out", str(root), "--set", "plan.shard_size=4"]
    # its lease expires 5 s after the kill (the rerun waits for that, then takes it over)
    proc = _cli([*args, "--set", "ray.chaos.shard_delay_s=3", "--set", "storage.lease_ttl_s=5"], _client_env(tmp_path))
    try:
        deadline = time.monotonic() + 240
        while not list(root.glob("datasets/*/shards/*.parquet")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the flow-run process and what it started (its own group)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    before = {p.name: p.stat().st_mtime_ns for p in root.glob("datasets/*/shards/*.parquet")}
    assert 1 <= len(before) < 3
    result = build_dataset(count=12, root=str(root), overrides=SMALL)
    assert result["generated_shards"] == 3 - len(before)
    after = {p.name: p.stat().st_mtime_ns for p in root.glob("datasets/*/shards/*.parquet")}
    assert all(after[name] == mtime for name, mtime in before.items())  # committed shards untouched
    manifest = Dataset.open(result["dataset_uri"]).manifest()
    assert len(manifest) == 12 and manifest["pair_id"].is_unique


@pytestmark_build
def test_failed_build_ends_in_one_line_naming_cause_kept_and_next(tmp_path):
    root = tmp_path / "data"
    args = ["build", "--count", "12", "--out", str(root), "--set", "plan.shard_size=4", "--set",
            "ray.chaos.kill_on_shard=1", "--set", f"ray.chaos.marker={tmp_path / 'k'}", "--set", "ray.max_restarts=0",
            "--set", "ray.shard_retries=0"]
    proc = _cli(args, _client_env(tmp_path))
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid)
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = lines[-1]
    assert last.startswith("error: 1 of 3 shard(s) failed (00001)")
    assert "Kept: 2 committed shard(s)" in last and "run the same build again" in last


def test_unexpected_errors_end_in_one_line_unless_verbose(monkeypatch, capsys):
    import facelift.cli.main as cli

    def boom(*_a, **_k):
        raise ValueError("the thing broke\nsecond line of detail")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setattr(sys, "argv", ["facelift", "info", "x"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1
    assert err[0].startswith("error: ValueError: the thing broke") and "--verbose" in err[0]
    monkeypatch.setattr(sys, "argv", ["facelift", "info", "x", "--verbose"])
    with pytest.raises(ValueError, match="the thing broke"):
        cli.main()


def test_first_line_is_the_first_non_blank_line_cut_to_its_limit():
    from facelift.errors import first_line

    assert first_line(ValueError("\n  \n  disk full \nat /x")) == "disk full"
    assert first_line("x" * 900) == "x" * 500 and first_line("abc", limit=2) == "ab"
    assert first_line(RuntimeError()) == "" and first_line(" \n\t") == ""


def _wait_for_shards(root: Path, n: int, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while len(list(root.glob("datasets/*/shards/*.parquet"))) < n:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.1)


@pytest.mark.slow  # waits out a shard timeout: make test-slow
@pytestmark_build
def test_a_hung_gpu_costs_one_shard_not_the_build(tmp_path):
    """A worker that hangs on shard 1 (a hung GPU) is killed at the shard timeout; shard 1 moves to the other
    worker and the build completes through the CLI, each pair committed once and shard 1 not by the hung worker."""
    root, marker = tmp_path / "data", tmp_path / "hung-once"
    args = ["build", "--count", "24", "--out", str(root), "--set", "plan.shard_size=4", "--set", "ray.num_workers=2",
            "--set", "ray.chaos.hang_on_shard=1", "--set", f"ray.chaos.marker={marker}",
            "--set", "ray.shard_timeout_s=15"]
    proc = _cli(args, _client_env(tmp_path))
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid)
    assert proc.returncode == 0, out[-3000:]
    hung = marker.read_text()  # the worker really hung on shard 1
    assert "the worker is hung" in out, out[-3000:]
    ds = Dataset.open(str(next(root.glob("datasets/*"))))
    manifest = ds.manifest()
    assert len(manifest) == 24 and manifest["pair_id"].is_unique
    assert set(manifest["pair_id"]) == set(ds.plan()["pair_id"])
    by_shard = manifest.groupby("shard")["worker"].agg(set).to_dict()
    assert by_shard[1] != {hung} and len(by_shard) == 6


@pytestmark_build
def test_a_lease_taken_over_mid_build_stops_the_old_writer_within_ttl(tmp_path):
    """Another writer takes the dataset's lease (generation + 1) while the build runs: the old writer commits no
    shard after the takeover, publishes no manifest, leaves the new holder's record alone, and fails in one line
    naming the new holder, within the lease's ttl."""
    root, ttl = tmp_path / "data", 20
    args = ["build", "--count", "48", "--out", str(root), "--set", "plan.shard_size=4",
            "--set", "ray.chaos.shard_delay_s=1", "--set", f"storage.lease_ttl_s={ttl}"]
    proc = _cli(args, _client_env(tmp_path))
    try:
        _wait_for_shards(root, 2, proc)
        store = Store(str(next(root.glob("datasets/*"))))
        record, tag = read_record(store)
        intruder = {**record, "holder": "other-host:1:intruder", "generation": record["generation"] + 1,
                    "heartbeat": time.time()}
        assert store.replace_if(LEASE_FILE, json.dumps(intruder).encode(), tag)
        taken = time.time()
        out, _ = proc.communicate(timeout=ttl + 60)
        exited = time.time()
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid)
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert "lease" in lines[-1] and "other-host:1:intruder (generation 2" in lines[-1], lines[-1]
    assert exited - taken < ttl, f"the old writer ran {exited - taken:.1f}s after the takeover"
    late = [p.name for p in root.glob("datasets/*/shards/*.parquet") if p.stat().st_mtime > taken + 0.5]
    assert not late, f"shards committed after the takeover: {late}"
    assert not store.exists("manifest.parquet") and read_record(store)[0]["holder"] == "other-host:1:intruder"
