"""Object-store access through fsspec: one root URI (local path, ``file://`` or ``s3://bucket/prefix``).

Writes are atomic: a local object is written to a temporary name and renamed; an S3 object is one PUT.
Credentials are never read here: s3fs/botocore take them from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, profiles) and nothing in this module logs or stores them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from facelift.config import StorageConfig

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """The object store cannot be reached or an object cannot be read/written."""


class PermanentStorageError(StorageError):
    """The store refused the request for a reason waiting will not fix (credentials denied, expired or revoked;
    no such bucket): fail fast instead of retrying. ``code`` is the S3 error code."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


# S3 error codes that no retry fixes (wrong, expired or revoked credentials; a missing bucket)
PERMANENT_CODES = frozenset({
    "AccessDenied", "AccountProblem", "AllAccessDisabled", "ExpiredToken", "InvalidAccessKeyId", "InvalidToken",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "NoSuchBucket", "InvalidBucketName", "TokenRefreshRequired",
    "NotSignedUp", "NoCredentials",
})


def error_code(exc: BaseException) -> str | None:
    """The S3 error code behind ``exc`` (s3fs keeps botocore's ClientError as the cause), if any."""
    seen = 0
    while exc is not None and seen < 5:
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return "NoCredentials"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


@dataclass(frozen=True)
class Store:
    """A filesystem plus a root path; every key is relative to the root."""

    uri: str
    endpoint_url: str | None = None
    connect_timeout_s: float = 5.0
    max_attempts: int = 3

    @classmethod
    def from_config(cls, cfg: StorageConfig, root: str | None = None) -> Store:
        return cls(root or cfg.root, cfg.endpoint_url, cfg.connect_timeout_s, cfg.max_attempts)

    @property
    def protocol(self) -> str:
        return self.uri.split("://", 1)[0] if "://" in self.uri else "file"

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    @property
    def root(self) -> str:
        if self.is_local:
            path = self.uri.split("://", 1)[1] if "://" in self.uri else self.uri
            return str(Path(path).expanduser().resolve())
        return self.uri.split("://", 1)[1].rstrip("/")

    @property
    def bucket(self) -> str:
        return self.root.split("/", 1)[0] if self.protocol == "s3" else "-"

    def storage_options(self) -> dict[str, Any]:
        """Options for fsspec/pandas/pyarrow/datasets readers (no credentials: those come from env)."""
        if self.protocol != "s3":
            return {}
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        opts: dict[str, Any] = {
            "config_kwargs": {
                "connect_timeout": self.connect_timeout_s,
                "read_timeout": 60,
                "retries": {"max_attempts": self.max_attempts, "mode": "standard"},
            },
        }
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem(self.protocol, **self.storage_options())

    def where(self) -> str:
        """Human description of the store, for errors and logs (no secrets)."""
        if self.protocol == "s3":
            endpoint = self.storage_options().get("client_kwargs", {}).get("endpoint_url", "AWS default")
            return f"{self.uri} (endpoint {endpoint})"
        return self.uri

    def path(self, key: str = "") -> str:
        return posixpath.join(self.root, key) if key else self.root

    def url(self, key: str = "") -> str:
        """Full URI of a key, usable by any fsspec-aware reader with :meth:`storage_options`."""
        return self.path(key) if self.is_local else f"{self.protocol}://{self.path(key)}"

    def child(self, key: str) -> Store:
        return Store(self.url(key), self.endpoint_url, self.connect_timeout_s, self.max_attempts)

    # -- checks -----------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail fast with one clear error if the store cannot be reached or written."""
        try:
            if self.is_local:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            else:
                bucket = self.root.split("/", 1)[0]
                try:
                    self.fs.ls(bucket, detail=False)  # raises on network errors, unlike exists()
                except FileNotFoundError:
                    raise StorageError(f"bucket {bucket!r} does not exist at {self.where()}") from None
            probe = f".probe-{uuid.uuid4().hex}"
            self.write_bytes(probe, b"")
            self.delete(probe)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - network/credential errors of any client
            raise StorageError(f"object store unreachable or not writable at {self.where()}: "
                               f"{_describe(exc)}") from None

    # -- objects ----------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            return self.fs.exists(self.path(key))
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot stat {key} in {self.where()}: {_describe(exc)}") from None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot read {key} from {self.where()}: {_describe(exc)}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomic write: readers see the whole object or nothing."""
        target = self.path(key)
        tmp = None
        try:
            if self.is_local:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                tmp = f"{posixpath.dirname(target)}/.{posixpath.basename(target)}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            else:
                self.fs.pipe_file(target, data)
        except Exception as exc:  # noqa: BLE001
            if tmp is not None:  # a failed rename must not leave the temp file behind
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            code = error_code(exc)
            if code in PERMANENT_CODES:
                raise PermanentStorageError(f"cannot write {key} to {self.where()}, bucket {self.bucket}: {code} "
                                            f"(permanent: check the credentials and the bucket)", code) from None
            raise StorageError(f"cannot write {key} to {self.where()}: {_describe(exc)}") from None

    # -- conditional writes (leases) --------------------------------------------------------------
    # Locally every conditional operation runs under an exclusive ``flock`` on a sidecar lock file and writes by
    # rename, so the object never vanishes between versions (a waiter cannot slip into a gap); on S3 they are
    # single conditional requests (``If-None-Match: *``, ``If-Match``).

    @contextlib.contextmanager
    def _locked(self, key: str) -> Any:
        import fcntl

        target = Path(self.path(key))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield target
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    @staticmethod
    def _local_tag(st: os.stat_result) -> str:
        return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"

    def _local_put(self, target: Path, data: bytes) -> None:
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    def _local_tag_of(self, target: Path) -> str | None:
        try:
            return self._local_tag(os.stat(target))
        except FileNotFoundError:
            return None

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist (locally under the lock; on S3 a conditional PUT,
        ``If-None-Match: *``). False if it exists. (A store that ignores the header overwrites:
        :mod:`facelift.lease` reads the object back to catch that.)"""
        try:
            if self.is_local:
                with self._locked(key) as target:
                    if target.exists():
                        return False
                    self._local_put(target, data)
                    return True
            self.fs.pipe_file(self.path(key), data, IfNoneMatch="*")
            return True
        except FileExistsError:  # s3fs's translation of a failed If-None-Match
            return False
        except Exception as exc:  # noqa: BLE001
            if _precondition_failed(exc):
                return False
            raise StorageError(f"cannot create {key} in {self.where()}: {_describe(exc)}") from None

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The object and its version tag (S3: the ETag of the same GET; local: inode, mtime and size of the
        same open file), for :meth:`replace_if`."""
        try:
            if self.is_local:
                with open(self.path(key), "rb") as fh:
                    return fh.read(), self._local_tag(os.fstat(fh.fileno()))
            return _get_with_etag(self.fs, self.path(key))
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot read {key} from {self.where()}: {_describe(exc)}") from None

    def tag(self, key: str) -> str:
        """The version tag of ``key`` without reading it (S3: a HEAD's ETag; local: inode, mtime and size), as
        :meth:`read_tagged` gives it. FileNotFoundError if it is absent."""
        try:
            if self.is_local:
                return self._local_tag(os.stat(self.path(key)))
            return str(self.fs.info(self.path(key), refresh=True)["ETag"])
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot read the version of {key} in {self.where()}: {_describe(exc)}") from None

    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        """Overwrite ``key`` only if it is still the version ``tag`` (S3 ``If-Match``; locally compare and
        rename under the lock). False if it changed or is gone."""
        try:
            if self.is_local:
                with self._locked(key) as target:
                    if self._local_tag_of(target) != tag:
                        return False
                    self._local_put(target, data)
                    return True
            self.fs.pipe_file(self.path(key), data, IfMatch=tag)
            return True
        except FileNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001
            if _precondition_failed(exc):
                return False
            raise StorageError(f"cannot replace {key} in {self.where()}: {_describe(exc)}") from None

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot delete {key} in {self.where()}: {_describe(exc)}") from None

    def list(self, prefix: str) -> list[str]:
        """Names (not paths) of the objects directly under ``prefix``; empty if it does not exist."""
        fs = self.fs
        try:
            fs.invalidate_cache()
            entries = fs.ls(self.path(prefix), detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot list {prefix} in {self.where()}: {_describe(exc)}") from None
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def open(self, key: str, mode: str = "rb", **kwargs: Any) -> Any:
        """``kwargs`` go to fsspec (e.g. ``cache_type="none"``: each read is one ranged GET on S3)."""
        return self.fs.open(self.path(key), mode, **({} if self.is_local else kwargs))



def _get_with_etag(fs: Any, path: str) -> tuple[bytes, str]:
    """Body and ETag of one S3 GET (a HEAD then a GET could see two different versions)."""
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)

    async def get() -> tuple[bytes, str]:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return await resp["Body"].read(), resp["ETag"]
        finally:
            resp["Body"].close()

    return sync(fs.loop, get)


def _precondition_failed(exc: BaseException) -> bool:
    """S3's 412 (``PreconditionFailed``), however s3fs/botocore wrap it."""
    return error_code(exc) in ("PreconditionFailed", "412")


def absolute_uri(uri: str) -> str:
    """``uri`` with a local path (plain or ``file://``) made absolute against this process's working directory;
    object-store URIs unchanged. Resolve at the door: Ray workers (Ray Train changes their working directory),
    Serve replicas and Prefect flow-run processes do not share the caller's."""
    if "://" in uri and not uri.startswith(("file://", "local://")):
        return uri
    return Store(uri).root


def open_uri(uri: str, endpoint_url: str | None = None, mode: str = "rb") -> Any:
    """Open one file given by a full URI or local path (names files, config files)."""
    store = Store(uri, endpoint_url)
    try:
        return fsspec.open(store.url(), mode, compression="infer", **store.storage_options()).open()
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {uri}") from None
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"cannot open {uri}: {_describe(exc)}") from None
