"""Permanent store errors fail fast, in one line naming the store, the bucket and the S3 error code (never a
secret); transient ones keep the backoff. Against a real SeaweedFS whose S3 gateway has two identities: a writer
and a read-only one (a credential whose write permission was revoked mid-build)."""

from __future__ import annotations

import json
import logging

import pytest

from facelift.config import StorageConfig
from facelift.dataset import Dataset
from facelift.storage import PermanentStorageError, Store
from facelift.tasks.build.commit import PermanentCommitError, commit_with_retry
from facelift.testing import SeaweedS3

WRITER = ("writer-key", "writer-secret-0123456789")
READER = ("reader-key", "reader-secret-9876543210")


@pytest.fixture(scope="module")
def secured_s3(tmp_path_factory):
    work = tmp_path_factory.mktemp("secured-seaweed")
    config = work / "s3.json"
    config.write_text(json.dumps({"identities": [
        {"name": "writer", "credentials": [{"accessKey": WRITER[0], "secretKey": WRITER[1]}],
         "actions": ["Admin", "Read", "List", "Write"]},
        {"name": "reader", "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
         "actions": ["Read", "List"]}]}))
    server = SeaweedS3(work / "data", s3_config=config).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", WRITER[0])
        mp.setenv("AWS_SECRET_ACCESS_KEY", WRITER[1])
        server.make_bucket("secured")
    try:
        yield server
    finally:
        server.stop()


def _store(server: SeaweedS3, monkeypatch, creds: tuple[str, str], max_attempts: int = 1) -> Store:
    import fsspec

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds[1])
    fsspec.filesystem("s3").clear_instance_cache()  # the credentials come from the environment
    return Store("s3://secured/ds/datasets/d", server.endpoint, 2.0, max_attempts)


@pytest.mark.parametrize(("creds", "codes"), [
    (READER, {"AccessDenied"}),                                   # write permission revoked
    ((READER[0], "not-the-secret"), {"SignatureDoesNotMatch"}),   # wrong or rotated secret
    (("unknown-key", "x"), {"InvalidAccessKeyId", "AccessDenied"}),
])
def test_permanent_refusals_are_one_line_with_store_bucket_and_code(secured_s3, monkeypatch, creds, codes):
    store = _store(secured_s3, monkeypatch, creds)
    with pytest.raises(PermanentStorageError) as err:
        store.write_bytes("shards/00000.parquet", b"x")
    message = str(err.value)
    assert err.value.code in codes and err.value.code in message
    assert "bucket secured" in message and secured_s3.endpoint in message and "\n" not in message
    assert creds[1] not in message and WRITER[1] not in message


def test_commit_fails_fast_on_a_revoked_credential_and_keeps_the_render(secured_s3, monkeypatch, caplog, tmp_path):
    writer = _store(secured_s3, monkeypatch, WRITER)
    writer.write_bytes("shards/probe", b"ok")  # the writer may write: the refusal below is the credential's
    ds = Dataset(_store(secured_s3, monkeypatch, READER, max_attempts=3))
    slept = []
    with caplog.at_level(logging.WARNING, logger="facelift.tasks.build.commit"), \
            pytest.raises(PermanentCommitError, match=r"shard 00004: .*bucket secured: AccessDenied.*kept at") as err:
        commit_with_retry(ds, 4, b"parquet", StorageConfig(commit_retry_s=600), sleep=slept.append,
                          kept_at=tmp_path / "spool" / "00004.parquet")
    assert slept == [] and not caplog.records  # not retried: no backoff, no retry lines
    assert "\n" not in str(err.value) and READER[1] not in str(err.value)


@pytest.mark.usefixtures("prefect_harness")
def test_the_dispatcher_sees_a_permanent_refusal_through_a_failed_shard_task():
    """The dispatcher (not Prefect) retries shards; it must read the refusal from a failed, unpersisted task run
    to stop starting shards instead of moving this one."""
    from prefect import flow, task

    from facelift.tasks.build.schedule import _exception, generate_shard

    @task(persist_result=False, retries=0)
    def refused() -> None:
        raise PermanentCommitError("shard 00001: ... AccessDenied")

    @flow
    def one_shard() -> object:
        future = refused.submit()
        future.wait()
        return _exception(future.state)

    assert isinstance(one_shard(), PermanentCommitError)
    assert generate_shard.retries == 0 and generate_shard.persist_result is False
