"""Shared fixtures: a real SeaweedFS S3 server, a local Ray, Prefect's test harness, tiny FLUX cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# s3fs needs some credentials to sign requests; SeaweedFS runs without auth in tests.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "facelift-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "facelift-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny-model cache for the whole session (FACELIFT_CACHE)."""
    path = tmp_path_factory.mktemp("facelift-cache")
    os.environ["FACELIFT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real SeaweedFS S3 server on free loopback ports with a bucket named ``facelift``."""
    from facelift.testing import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        server.make_bucket("facelift")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def deepface_home(tmp_path_factory: pytest.TempPathFactory):
    """Random-weight DeepFace files (compact form) in a temporary DEEPFACE_HOME, made once."""
    from facelift.models.deepface_weights import build_random_weights

    home = tmp_path_factory.mktemp("deepface-home")
    old = os.environ.get("DEEPFACE_HOME")
    os.environ["DEEPFACE_HOME"] = str(home)
    build_random_weights(home)
    yield home
    if old is None:
        os.environ.pop("DEEPFACE_HOME", None)
    else:
        os.environ["DEEPFACE_HOME"] = old


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray (2 CPUs) shared by the session."""
    import tempfile

    import ray

    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short socket paths
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        yield None
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect flows in tests run against a temporary local API (SQLite)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield None


@pytest.fixture(scope="session")
def deploy_stack(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator:
    """A real Prefect server + SeaweedFS + process worker with the project deployed (tests/deploy_stack.py),
    one for the session, stopped by pid."""
    from deploy_stack import DeployStack

    stack = DeployStack(tmp_path_factory.mktemp("deploy-stack"), cache_dir).start()
    yield stack
    stack.stop()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``make test`` (pytest-xdist, ``--dist loadgroup``) the tests that share the deploy stack (a Prefect
    server, worker and SeaweedFS) run on one worker, so the stack starts once, and they come first: the
    longest unit starts at once while the other worker takes the rest."""
    stack = [item for item in items if "deploy_stack" in getattr(item, "fixturenames", ())]
    for item in stack:
        item.add_marker(pytest.mark.xdist_group("deploy_stack"))
    items[:] = stack + [item for item in items if item not in stack]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test: on a shared 2-core machine OpenMP's spinning threads (and compiled
    CPU kernels' own pool) make tiny steps ~10x slower and stall some for seconds; numerics are unaffected."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
