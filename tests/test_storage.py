from __future__ import annotations

import time
import uuid

import pytest

from facelift.storage import StorageError, Store


def test_local_writes_are_atomic_and_listing_skips_temp_files(tmp_path):
    store = Store(str(tmp_path / "root"))
    store.check()
    store.write_bytes("shards/00000.parquet", b"abc")
    (tmp_path / "root" / "shards" / ".00001.parquet.tmp-x").write_bytes(b"partial")
    assert store.read_bytes("shards/00000.parquet") == b"abc"
    assert [n for n in store.list("shards") if not n.startswith(".")] == ["00000.parquet"]
    assert store.list("nothing-here") == []
    store.write_bytes("shards/00000.parquet", b"new")  # replace is atomic too
    assert store.read_bytes("shards/00000.parquet") == b"new"


def test_s3_round_trip(seaweed):
    store = Store(f"s3://facelift/{uuid.uuid4().hex}", seaweed.endpoint)
    store.check()
    store.write_bytes("a/b.bin", b"x" * 1000)
    assert store.exists("a/b.bin") and store.list("a") == ["b.bin"]
    assert store.read_bytes("a/b.bin") == b"x" * 1000 and store.size("a/b.bin") == 1000
    assert store.url("a/b.bin").startswith("s3://facelift/")


def test_unreachable_store_fails_fast_with_a_clear_error():
    store = Store("s3://facelift/x", "http://127.0.0.1:9", connect_timeout_s=1, max_attempts=1)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"unreachable.*127\.0\.0\.1:9"):
        store.check()
    assert time.monotonic() - t0 < 30


def test_missing_bucket_is_named(seaweed):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Store("s3://no-such-bucket/p", seaweed.endpoint).check()


def test_errors_never_contain_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key-123")
    with pytest.raises(StorageError) as err:
        Store("s3://facelift/x", "http://127.0.0.1:9", connect_timeout_s=1, max_attempts=1).check()
    assert "very-secret-key-123" not in str(err.value)
