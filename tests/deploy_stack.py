"""A real Prefect server + process worker + SeaweedFS, deployed from deployments/prefect.yaml, shared by
tests/test_prefect_server.py and tests/test_ui.py (one instance per session, reference counted).

The deployments are the production file with test parameter defaults (tiny/debug models, random metric
weights, few steps) laid over each deployment's ``parameters``; entrypoints, triggers, pull steps, queues
and schemas are unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelift.stack.local import (
    REPO,
    PrefectServer,
    deploy_all,
    overlay_prefect_file,
    setup_pool,
    setup_results_block,
    start_worker,
    stop_worker,
)
from facelift.testing import SeaweedS3

BUCKET = "facelift"
COUNT = 24  # tiny profile: 3 shards of 8
AUTH: dict[str, str] = {}  # api url -> the server's basic-auth string (every API call needs it)


def test_parameters(fid_weights: str, clip_model: str) -> dict[str, dict[str, Any]]:
    """Per-deployment parameter defaults for CPU-only, offline runs."""
    tiny_splits = {"splits.test": 0.34, "splits.val": 0.16}  # 24 pairs: enough test pairs for two halves
    return {
        "build": {"overrides": tiny_splits},
        "pipeline": {"overrides": tiny_splits},
        "train": {"head": "esa_cyclegan", "flavor": "debug", "max_steps": 2, "batch_size": 2, "resolution": 32,
                  "checkpoint_every": 2},
        "audit": {"detector": "skip", "enforce_detection": False, "perplexity": 4.0},
        "evaluate": {"inception_weights": fid_weights, "clip_model": clip_model, "lpips_random_backbone": True,
                     "n_images": 3, "n_boot": 2, "device": "cpu", "batch_size": 4, "resolution": 32},
    }


def _background(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str) -> str:
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {err[-2000:]}")
    return out


@dataclass
class DeployStack:
    tmp: Path
    cache: Path  # FACELIFT_CACHE: tiny FLUX, random FID/CLIP weights (the session's, shared with other tests)
    server: PrefectServer | None = None
    weed: SeaweedS3 | None = None
    worker: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    deploy_output: str = ""
    build_runs: dict[str, Any] = field(default_factory=dict)  # memo: label -> completed FlowRun
    ray_tmp: str = ""
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # test parameter defaults per deployment
    timings: dict[str, float] = field(default_factory=dict)  # seconds since start, per setup step

    @property
    def api_url(self) -> str:
        return self.server.api_url

    @property
    def root(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"

    def start(self) -> DeployStack:
        deepface = self.tmp / "deepface"
        # random DeepFace / FID / CLIP weights: built in subprocesses while the server starts
        weights = _background("import sys; from models.deepface_weights import build_random_weights as b; "
                              "b(sys.argv[1])", str(deepface))
        metrics = _background("import sys, json; from models.tiny_metrics import ensure_random_fid_weights as f, "
                              "ensure_tiny_clip as c; print(json.dumps([str(f(sys.argv[1])), str(c(sys.argv[1]))]))",
                              str(self.cache))
        t0 = time.monotonic()
        try:
            self.server = PrefectServer(self.tmp / "prefect-home", auth_string=f"admin:{uuid.uuid4().hex}").start()
            AUTH[self.api_url] = self.server.auth_string
            self.timings["server"] = time.monotonic() - t0
            self.weed = SeaweedS3(self.tmp / "seaweed").start()
            self.weed.make_bucket(BUCKET)
            self.prefix = f"deploy-{uuid.uuid4().hex[:6]}"
            self.ray_tmp = tempfile.mkdtemp(prefix="fl-ray-", dir="/tmp")  # AF_UNIX paths: <= 107 bytes
            env = self.server.env()
            env.update(AWS_ENDPOINT_URL_S3=self.weed.endpoint, FACELIFT_CACHE=str(self.cache),
                       DEEPFACE_HOME=str(deepface), RAY_TMPDIR=self.ray_tmp, TF_CPP_MIN_LOG_LEVEL="3")
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
                env[key] = os.environ[key]
            self.env = env
            setup_pool(self.api_url, auth_string=self.server.auth_string)
            setup_results_block(self.api_url, f"{self.root}/prefect-results", self.weed.endpoint,
                                auth_string=self.server.auth_string)
            self.timings["pool+block"] = time.monotonic() - t0
            fid, clip = json.loads(_finish(metrics, "building random FID/CLIP weights").strip().splitlines()[-1])
            self.params = test_parameters(fid, clip)
            prefect_file = overlay_prefect_file(self.tmp / "prefect.yaml", self.params)
            self.timings["test-params"] = time.monotonic() - t0
            self.deploy_output = deploy_all(env, prefect_file)
            self.timings["deploy"] = time.monotonic() - t0
            _, err = weights.communicate(timeout=300)
            self.timings["deepface"] = time.monotonic() - t0
            if weights.returncode != 0:
                raise RuntimeError(f"building DeepFace random weights failed: {err.decode()[-2000:]}")
            self.worker = start_worker(env, self.tmp / "worker.log")
        except BaseException:
            weights.kill()
            metrics.kill()
            self.stop()
            raise
        return self

    def worker_log(self) -> str:
        path = self.tmp / "worker.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop(self) -> None:
        if self.worker is not None:
            stop_worker(self.worker.pid)
            self.worker = None
        if self.weed is not None:
            self.weed.stop()
        if self.server is not None:
            self.server.stop()
        if self.ray_tmp:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


# -- Prefect API helpers (all through the client, against the stack's server) ---------------------------------
def client(api_url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=api_url, auth_string=AUTH.get(api_url))


def settings(api_url: str) -> dict[Any, Any]:
    """``temporary_settings(updates=...)`` for an in-process client of the stack's server (URL + auth)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    return {PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: AUTH.get(api_url)}


def wait_run(api_url: str, run_id: Any, timeout_s: float, stack: DeployStack | None = None) -> Any:
    """``facelift rebuild --wait``'s poll against ``api_url``; a timeout also shows the worker's log."""
    from prefect.settings import temporary_settings

    from facelift.cli.ops import wait_for_run

    try:
        with temporary_settings(updates=settings(api_url)):
            return wait_for_run(run_id, timeout_s=timeout_s)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{stack.worker_log() if stack else ''}") from None


def events(api_url: str, name: str, resource_id: str | None = None) -> list[Any]:
    """Events called ``name`` (of one resource, if given) the server has recorded."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    resource = EventResourceFilter(id=[resource_id]) if resource_id else None
    with client(api_url) as c:
        return c.read_events(EventFilter(event=EventNameFilter(name=[name]), resource=resource), limit=50).events


def runs_of(api_url: str, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with client(api_url) as c:
        dep = c.read_deployment_by_name(deployment)
        return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def wait_for_runs(api_url: str, deployment: str, predicate, timeout_s: float, stack: DeployStack | None = None
                  ) -> list[Any]:
    """Runs of ``deployment`` matching ``predicate(run)``, once at least one exists."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r for r in runs_of(api_url, deployment) if predicate(r)]
        if found:
            return found
        if time.monotonic() > deadline:
            log = stack.worker_log() if stack else ""
            raise TimeoutError(f"no run of {deployment} was created within {timeout_s:.0f}s\n{log}")
        time.sleep(1.0)


def run_build(stack: DeployStack, label: str, timeout_s: float = 240.0, **params: Any) -> Any:
    """Run build-dataset/build through `facelift rebuild`'s code path and wait (memoized per label)."""
    from prefect.settings import temporary_settings

    from facelift.cli.ops import build_parameters, run_deployment_now

    if label in stack.build_runs:
        return stack.build_runs[label]
    with temporary_settings(updates=settings(stack.api_url)):
        run = run_deployment_now("build-dataset/build", build_parameters(**params), tags=[label])
    run = wait_run(stack.api_url, run.id, timeout_s, stack)
    stack.build_runs[label] = run
    return run
