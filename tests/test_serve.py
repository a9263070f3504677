"""facelift serve on Ray Serve (tiny models, CPU), started as users start it (`facelift serve` in a subprocess, with
an API key file): health and readiness, POST /generate, dynamic batching past Ray's default cap of 5, a burst
beyond the queue (503 + Retry-After, no accepted request lost), one bad prompt among 8 failing only itself,
/readyz answering 200 while the queue overflows, the API key (401s), random returned seeds and reproducible ones,
several outputs and formats, the capped 422, and the web page in headless Debian Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facelift.cli.serve import TINY_NOTICE
from facelift.models.heads import build_head
from facelift.tasks.generate import read_provenance
from facelift.tasks.serve import ServeConfig
from facelift.testing import stop_pid

CHROMIUM = Path("/usr/bin/chromium")
SERVER_PIDS: dict[str, int] = {}  # url -> the `facelift serve` process
BATCH, QUEUE = 8, 12  # the queue holds a batch of simultaneous arrivals (ServeConfig refuses less)
AUTH: dict[str, str] = {}  # the bearer header, set by the server fixture
LOGS: dict[str, Path] = {}  # url -> the server's log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root: Path, env: dict[str, str], log) -> tuple[subprocess.Popen, str]:
    """`facelift serve` on a free port, as users start it; (process, url) once /readyz answers 200. A port taken
    between the pick and Serve's bind (another test's server, on a shared machine) gives a fresh port and a retry."""
    for attempt in range(3):
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "facelift.cli.main", "serve", "--head",
                                 str(root / "runs" / "run-serve1"), "--port", str(port), "--size", "32",
                                 "--max-batch-size", str(BATCH), "--batch-wait-s", "0.3",
                                 "--max-queued-requests", str(QUEUE), "--api-key-file", str(root / "secrets" / "key")],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600  # Ray + Serve + the model replica: ~40 s here, minutes on a loaded machine
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=30).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(1)
        text = (root / "serve.log").read_text()
        stop_pid(proc.pid, 60, sig=signal.SIGINT)
        if "Failed to bind to address" not in text or attempt == 2:
            raise RuntimeError(f"facelift serve did not become ready:\n{text[-3000:]}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    build_head("esa_cyclegan", "debug").save(str(root / "runs" / "run-serve1" / "head"))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's AF_UNIX socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled",
           "FACELIFT_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    log = open(root / "serve.log", "w")  # noqa: SIM115 - closed at teardown
    try:
        proc, url = _start(root, env, log)
        SERVER_PIDS[url] = proc.pid
        AUTH["Authorization"] = "Bearer " + (root / "secrets" / "key").read_text().strip()
        LOGS[url] = root / "serve.log"
        try:
            yield url
        finally:
            stop_pid(proc.pid, 60, sig=signal.SIGINT)
    finally:
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def test_model_replica_runs_at_normal_priority(server: str) -> None:
    """Ray starts its workers at nice 15; beside two CPU-bound processes the replica then took over 10 minutes to
    start. `facelift serve` starts its local Ray with RAY_worker_niceness=0 (tasks/serve/run.py)."""
    replicas = []
    for pid in _descendants(SERVER_PIDS[server]):
        try:
            if b"ServeReplica:facelift:ModelServer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                replicas.append(pid)
        except OSError:
            continue
    assert replicas, "no model replica among the server's processes"
    assert all(os.getpriority(os.PRIO_PROCESS, pid) == 0 for pid in replicas), [
        (pid, os.getpriority(os.PRIO_PROCESS, pid)) for pid in replicas]


def test_config_refuses_a_batch_cap() -> None:
    with pytest.raises(ValueError, match="every batch would be capped at 5"):
        ServeConfig(head="x", max_batch_size=8, max_ongoing_requests=5)
    assert ServeConfig(head="x", max_batch_size=8).max_ongoing_requests == 16


def test_config_refuses_a_queue_smaller_than_a_batch() -> None:
    """Ray Serve counts every request as queued until a replica takes it, so requests that arrive together all
    count at once: with a queue smaller than a batch, one batch of arrivals at an idle server got 503s (CI)."""
    with pytest.raises(ValueError, match="max_queued_requests \\(6\\) < max_batch_size \\(8\\)"):
        ServeConfig(head="x", max_batch_size=8, max_queued_requests=6)
    assert ServeConfig(head="x", max_batch_size=8, max_queued_requests=8).max_queued_requests == 8


def test_flux_replicas_hold_a_gpu_by_default() -> None:
    """The RayService's app_builder builds ServeConfig from its args alone: a flux profile without num_gpus must
    still ask Ray for a GPU per replica (the CLI once set the default on its own)."""
    assert ServeConfig(head="h", profile="flux").num_gpus == 1
    assert ServeConfig(head="h").num_gpus == 0
    assert ServeConfig(head="h", profile="flux", num_gpus=0.5).num_gpus == 0.5


def test_request_needs_a_prompt_with_a_word() -> None:
    """An empty or blank prompt is a 422 of its own request: batched, the generator would fail its neighbours."""
    from pydantic import ValidationError

    from facelift.tasks.serve.app import GenerateRequest

    assert GenerateRequest(prompt=" Ada Lovelace ", seed=1).prompt == " Ada Lovelace "
    for prompt in ("", " ", "\t\n", "\u3000"):
        with pytest.raises(ValidationError, match="prompt"):
            GenerateRequest(prompt=prompt, seed=1)


def test_cli_bad_head_is_one_line(tmp_path: Path) -> None:
    from facelift.cli.main import app

    res = CliRunner().invoke(app, ["serve", "--head", str(tmp_path / "nohead")])
    assert res.exit_code == 2 and "no head at" in res.output and "Traceback" not in res.output


@pytest.mark.slow  # starts Ray + facelift serve (~2 min on 2 cores): make test-slow
def test_health_generate_and_provenance(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz").json()
    assert ready == {"ready": True, "schnell": "tiny://schnell", "head_run_id": "run-serve1"}
    ada = {"prompt": "A professional portrait of Ada Lovelace", "seed": 4}
    res = httpx.post(f"{server}/generate", headers=AUTH, json=ada, timeout=60)
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(res.content)) as img:
        assert img.size == (32, 32)
    prov = read_provenance(res.content)
    assert prov["prompt"] == "A professional portrait of Ada Lovelace" and prov["seed"] == 4
    again = httpx.post(f"{server}/generate", headers=AUTH, json=ada, timeout=60)
    a = torch.from_numpy(__import__("numpy").asarray(Image.open(io.BytesIO(res.content))).astype("int16"))
    b = torch.from_numpy(__import__("numpy").asarray(Image.open(io.BytesIO(again.content))).astype("int16"))
    assert (a - b).abs().max() <= 1  # same prompt and seed, same image
    for prompt in ("", "  \t\n"):  # refused before it joins a batch (the generator would fail the whole batch)
        bad = httpx.post(f"{server}/generate", headers=AUTH, json={"prompt": prompt, "seed": 1})
        assert bad.status_code == 422, (prompt, bad.text)


@pytest.mark.slow  # starts Ray + facelift serve (~2 min on 2 cores): make test-slow
def test_batches_beyond_five_and_burst_beyond_queue(server: str) -> None:
    def call(i: int) -> httpx.Response:
        return httpx.post(f"{server}/generate", headers=AUTH, json={"prompt": f"portrait {i}", "seed": i}, timeout=120)

    with ThreadPoolExecutor(BATCH) as pool:  # a full batch at once: Ray's default max_ongoing_requests=5 caps at 5
        first = list(pool.map(call, range(BATCH)))
    assert all(r.status_code == 200 for r in first), [(r.status_code, r.text[:200]) for r in first]
    assert max(int(r.headers["x-batch-size"]) for r in first) > 5, [r.headers["x-batch-size"] for r in first]

    n = 60  # far more than max_ongoing_requests (16) + the queue (12)
    with ThreadPoolExecutor(n) as pool:
        burst = list(pool.map(call, range(n)))
    codes = [r.status_code for r in burst]
    assert set(codes) <= {200, 503}, codes
    rejected = [r for r in burst if r.status_code == 503]
    assert rejected and all(r.headers.get("retry-after") == "2" and "queue is full" in r.json()["error"]
                            for r in rejected)
    accepted = [r for r in burst if r.status_code == 200]
    assert len(accepted) >= 2 * BATCH  # every accepted request got its image
    assert all(r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG" for r in accepted)
    assert httpx.get(f"{server}/readyz").status_code == 200  # still serving


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (/usr/bin/chromium)")
def test_page_in_chromium(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = ctx.new_page()
            page.goto(server + "/", wait_until="networkidle")
            assert page.title() == "facelift: schnell vs schnell + head"
            page.fill("#key", AUTH["Authorization"].split(" ", 1)[1])
            page.fill("#prompt", "A professional portrait of Grace Hopper")
            page.fill("#seed", "11")
            page.click("#go")
            page.wait_for_function("document.getElementById('enhanced').naturalWidth > 0 && "
                                   "document.getElementById('schnell').naturalWidth > 0", timeout=60_000)
            sizes = page.evaluate("[...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight])")
            assert sizes == [["schnell", 32, 32], ["schnell + head", 32, 32]]
            assert "per image" in page.inner_text("#status") and "seed 11" in page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "page.png"))
            page.fill("#prompt", "")
            page.evaluate("document.getElementById('prompt').removeAttribute('required')")
            page.click("#go")
            page.wait_for_function("document.getElementById('status').className === 'error'", timeout=30_000)
            assert "error" in page.inner_text("#status")
        finally:
            ctx.close()


def test_rayservice_manifest_builds_a_valid_app() -> None:
    """The KubeRay RayService: its serve config validates as a ServeConfig, its import path resolves, the
    batch is not capped, replicas stay warm, one GPU per model replica matches the gpu group, image pinned."""
    import importlib

    import yaml

    repo = Path(__file__).resolve().parents[1]
    [svc] = list(yaml.safe_load_all((repo / "infra" / "k8s" / "rayservice.yaml").read_text()))
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    [app] = serve_cfg["applications"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    from facelift.tasks.serve.app import require_key

    cfg = ServeConfig(**require_key(app["args"]))  # the builder's own check: the manifest names the key file
    assert cfg.max_ongoing_requests >= cfg.max_batch_size > 5 and cfg.min_replicas >= 1
    assert cfg.profile == "flux" and cfg.num_gpus == 1
    assert serve_cfg["http_options"]["request_timeout_s"] > cfg.timeout_s
    [gpu] = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert int(gpu["rayStartParams"]["num-gpus"]) == 1 and gpu["maxReplicas"] >= cfg.max_replicas
    head = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": serve_cfg["http_options"]["port"], "name": "serve"} in head["ports"]
    assert "8000" in (repo / "infra" / "docker" / "Dockerfile").read_text()
    assert "secretKeyRef" not in svc["spec"]["serveConfigV2"] and "aws_secret" not in str(svc).lower()
    # the API key: a file from the facelift-serve-api-key secret, mounted on every pod (the ingress may run anywhere)
    key_dir, key_name = cfg.api_key_file.rsplit("/", 1)
    for pod in (svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"], gpu["template"]["spec"]):
        [volume] = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "facelift-serve-api-key"]
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["mountPath"] == key_dir and mount["readOnly"] and volume["secret"]["defaultMode"] & 0o007 == 0
    assert key_name == "api_key" and "api_key=" in (repo / "infra" / "k8s" / "rayservice.yaml").read_text()


@pytest.mark.slow
def test_one_bad_prompt_fails_only_its_own_request(server: str) -> None:
    """8 concurrent requests, one of them blank by Python's reckoning (U+001F passes a regex `\\S` but
    `str.strip()` removes it, and the generator refuses it): the other 7 get their image, the bad one a 4xx with
    a JSON body (Ray sets a batch's exception on every request of the batch, so it must not reach the batch)."""
    prompts = [f"A professional portrait of person {i}" for i in range(8)]
    prompts[3] = "\x1f \x1e"

    def call(i: int) -> httpx.Response:
        return httpx.post(f"{server}/generate", headers=AUTH, json={"prompt": prompts[i], "seed": i}, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(call, range(8)))
    codes = [r.status_code for r in out]
    assert [c for i, c in enumerate(codes) if i != 3] == [200] * 7, [(r.status_code, r.text[:200]) for r in out]
    assert 400 <= codes[3] < 500 and "prompt" in out[3].json()["error"], out[3].text[:300]


@pytest.mark.slow
def test_readyz_answers_200_during_a_burst(server: str) -> None:
    """/readyz comes from the Serve controller's view of the application, not through the model's queue: 40
    clients keep the queue overflowing (each resends at once), and a poll made right after each 503 answers 200."""
    stop, cond, rejected = threading.Event(), threading.Condition(), [0]

    def client(i: int) -> None:
        while not stop.is_set():
            res = httpx.post(f"{server}/generate", headers=AUTH, json={"prompt": f"portrait {i}", "seed": i},
                             timeout=120)
            assert res.status_code in (200, 503), res.text[:200]
            if res.status_code == 503:
                with cond:
                    rejected[0] += 1
                    cond.notify_all()

    polls: list[int] = []
    with ThreadPoolExecutor(40) as pool:
        clients = [pool.submit(client, i) for i in range(40)]
        try:
            for _ in range(8):  # each poll right after a fresh 503: the queue is full at that moment
                with cond:
                    seen = rejected[0]
                    assert cond.wait_for(lambda seen=seen: rejected[0] > seen, timeout=300), "no 503 came"
                polls.append(httpx.get(f"{server}/readyz", timeout=30).status_code)
        finally:
            stop.set()
        for f in clients:
            f.result()
    assert polls == [200] * 8, polls


@pytest.mark.slow
def test_api_key_is_required(server: str) -> None:
    body = {"prompt": "A professional portrait of Ada Lovelace", "seed": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": AUTH["Authorization"].replace(
            "Bearer", "Basic")}):
        res = httpx.post(f"{server}/generate", json=body, headers=headers, timeout=60)
        assert res.status_code == 401 and "unauthorized" in res.json()["error"], (headers, res.text[:200])
        assert res.headers["www-authenticate"] == "Bearer"
    bad_body = httpx.post(f"{server}/compare", json={"prompt": " "}, timeout=60)
    assert bad_body.status_code == 401  # the key is checked before the body is read
    assert httpx.post(f"{server}/generate", json=body, headers=AUTH, timeout=60).status_code == 200
    assert httpx.get(f"{server}/readyz").status_code == 200 and httpx.get(f"{server}/").status_code == 200
    assert TINY_NOTICE in LOGS[server].read_text()  # and `facelift serve` said it serves the tiny test models
    assert AUTH["Authorization"].split(" ", 1)[1] not in LOGS[server].read_text()  # never the key


@pytest.mark.slow
def test_seed_is_random_when_absent_and_returned(server: str) -> None:
    """No seed: two identical requests give different pictures and each returns its seed (header and
    provenance); the returned seed given back gives identical bytes."""
    body = {"prompt": "A professional portrait of Ada Lovelace"}
    a, b = (httpx.post(f"{server}/generate", headers=AUTH, json=body, timeout=60) for _ in range(2))
    assert a.status_code == b.status_code == 200, (a.text[:200], b.text[:200])
    seed_a, seed_b = int(a.headers["x-seed"]), int(b.headers["x-seed"])
    assert seed_a != seed_b and a.content != b.content
    assert json.loads(a.headers["x-provenance"])["seed"] == seed_a == read_provenance(a.content)["seed"]
    again = httpx.post(f"{server}/generate", headers=AUTH, json={**body, "seed": seed_a}, timeout=60)
    assert again.headers["x-seed"] == str(seed_a) and again.content == a.content


@pytest.mark.slow
def test_several_outputs_formats_and_refusals(server: str) -> None:
    res = httpx.post(f"{server}/generate", headers=AUTH, timeout=60, json={
        "prompt": "A professional portrait of Ada Lovelace", "seed": 5, "num_outputs": 3, "output_format": "webp",
        "output_quality": 70})
    assert res.status_code == 200, res.text[:300]
    out = res.json()
    assert out["seeds"] == [5, 6, 7] and [p["seed"] for p in out["provenance"]] == [5, 6, 7]
    assert all(p["head_run_id"] == "run-serve1" for p in out["provenance"])
    for url, seed in zip(out["images"], [5, 6, 7], strict=True):
        assert url.startswith("data:image/webp;base64,")
        data = base64.b64decode(url.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "WEBP" and img.size == (32, 32)
        assert read_provenance(data)["seed"] == seed  # XMP inside the WebP file
    jpeg = httpx.post(f"{server}/generate", headers=AUTH, timeout=60,
                      json={"prompt": "Ada", "seed": 5, "output_format": "jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    assert read_provenance(jpeg.content)["seed"] == 5 and jpeg.headers["x-seed"] == "5"
    big = httpx.post(f"{server}/generate", headers=AUTH, timeout=60,
                     json={"prompt": "x" * 50_000, "width": 512, "num_outputs": 9})
    assert big.status_code == 422 and len(big.content) < 3000 and "xxxxxxxxxx" not in big.text, big.text[:300]
    assert all(word in big.json()["error"] for word in ("prompt", "width", "num_outputs"))
