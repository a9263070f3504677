"""Auth that nothing on this machine turns off (issue 32): each test probes what a user runs, or the running
thing, as a neighbour would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from facelift.models.heads import build_head
from facelift.stack.local import REPO
from facelift.stack.procs import ProcRecord

# Run one facelift command with ``ray.init`` replaced by a probe that prints the RAY_AUTH_MODE Ray would see and
# exits; the probe also runs at exit, for a command that fails before it starts Ray.
PROBE = """
import atexit, os, sys
import ray
def seen(*_a, **_k):
    print("ray.init sees RAY_AUTH_MODE=" + os.environ.get("RAY_AUTH_MODE", "<unset>"), flush=True)
    os._exit(0)
ray.init = seen
atexit.register(lambda: print("at exit RAY_AUTH_MODE=" + os.environ.get("RAY_AUTH_MODE", "<unset>"), flush=True))
from facelift.cli.main import main
sys.argv = ["facelift", *sys.argv[1:]]
main()
"""


def _run_probe(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    return proc.stdout + proc.stderr


def test_no_facelift_command_turns_ray_auth_off(tmp_path: Path) -> None:
    """With RAY_AUTH_MODE unset, Ray 2.60 turns token auth on for a new local cluster; facelift leaves it unset:
    every command's setup (``build`` refusing a bad dataset id before Prefect starts) and ``serve``, which starts
    Ray itself."""
    out = _run_probe(["build", "--dataset-id", "../x", "--out", str(tmp_path)], tmp_path)
    assert "at exit RAY_AUTH_MODE=<unset>" in out, out[-2000:]
    head = tmp_path / "runs" / "r1" / "head"
    build_head("esa_cyclegan", "debug").save(str(head))
    out = _run_probe(["serve", "--head", str(head), "--device", "cpu"], tmp_path)
    assert "ray.init sees RAY_AUTH_MODE=<unset>" in out, out[-2000:]


def test_stack_down_stops_only_the_processes_it_recorded(tmp_path: Path) -> None:
    """``make stack-down`` (``infra/local/down.sh``) after a reboot: the recorded pids now belong to other
    processes. A pid file names a process by pid, start time and command line; down stops only a match."""
    stack_dir = tmp_path / "stack"
    stack_dir.mkdir()
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)  # someone's process, on a recorded pid
    ours = subprocess.Popen(["sleep", "301"], start_new_session=True)
    try:
        (stack_dir / "prefect.pid").write_text(f"{stranger.pid}\n")  # a bare pid, as older stacks wrote
        seen = ProcRecord.of(stranger.pid)
        assert seen is not None
        # recorded for the stack's SeaweedFS, which has since gone; its pid was reused
        ProcRecord(seen.pid, seen.start - 1, ("weed", "server")).write(stack_dir / "seaweed.pid")
        ProcRecord(seen.pid, seen.start, ("weed", "server")).write(stack_dir / "worker.pid")
        record = ProcRecord.of(ours.pid)
        assert record is not None
        record.write(stack_dir / "ray.pid")  # the stack's own process: stopped
        proc = subprocess.run(["bash", "infra/local/down.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "STACK_DIR": str(stack_dir), "PY": sys.executable})
        assert proc.returncode == 0, proc.stderr
        assert stranger.poll() is None, "down stopped a process the stack never started"
        assert ours.wait(timeout=30) is not None and f"ray ({ours.pid})" in proc.stdout, proc.stdout
        assert not list(stack_dir.glob("*.pid"))
    finally:
        for p in (stranger, ours):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_flow_run_job_rendered_by_the_worker_holds_no_secret_value(monkeypatch) -> None:
    """The Kubernetes worker (prefect-kubernetes, as the image installs it) re-exports its own settings into every
    flow-run Job; run with ``infra/k8s/prefect-worker.yaml``'s environment, the Job it submits names the auth
    string's Secret and holds no value of it, so ``kubectl get job -o yaml`` (the built-in ``view`` role) shows
    none. The Job is caught where the worker hands it to the Kubernetes API."""
    import asyncio
    import json
    import uuid

    import prefect_kubernetes.worker as kw
    import yaml
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    k8s = REPO / "infra" / "k8s"
    deployment = [d for d in yaml.safe_load_all((k8s / "prefect-worker.yaml").read_text()) if d["kind"] == "Deployment"]
    [container] = deployment[0]["spec"]["template"]["spec"]["containers"]
    for entry in container["env"]:
        if "value" in entry:
            monkeypatch.setenv(entry["name"], entry["value"])
    secret = "admin:" + uuid.uuid4().hex  # what the kubelet injects from the facelift-prefect-auth Secret
    template = json.loads((k8s / "base-job-template.json").read_text())
    submitted: list[dict] = []

    class BatchApi:  # the Kubernetes API the worker would call
        def __init__(self, _client: object) -> None:
            pass

        async def create_namespaced_job(self, namespace: str, body: dict) -> object:
            submitted.append(body)
            return body

    monkeypatch.setattr(kw, "BatchV1Api", BatchApi)

    async def render() -> None:
        config = await kw.KubernetesWorkerJobConfiguration.from_template_and_values(
            template, {"image": "ghcr.io/facelift/facelift-worker:0.1.0"})
        config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="a-run"))
        worker = kw.KubernetesWorker(work_pool_name="facelift")
        await worker._create_job(config, client=None)

    with temporary_settings({PREFECT_API_URL: "http://prefect-server.facelift.svc:4200/api",
                             PREFECT_API_AUTH_STRING: secret}):
        asyncio.run(render())
    [job] = submitted
    assert secret not in json.dumps(job), "the auth string's value is in the Job"
    [env] = [c["env"] for c in job["spec"]["template"]["spec"]["containers"]]
    refs = [e for e in env if e["name"] == "PREFECT_API_AUTH_STRING"]
    assert refs and all(e.get("valueFrom") == {"secretKeyRef": {"name": "facelift-prefect-auth",
                                                                "key": "auth-string"}} for e in refs), refs


def test_the_stack_hands_its_services_none_of_the_operators_credentials(tmp_path, monkeypatch) -> None:
    """The worker, Ray and every flow run get the stack's environment: the operator's own tokens and keys stay
    in the operator's shell; the stack's own credentials and the operator's configuration keys pass."""
    from facelift.stack.local import Stack

    for key, value in {"HF_TOKEN": "hf_operator", "AWS_SECRET_ACCESS_KEY": "operator-aws-secret",
                       "GITHUB_TOKEN": "ghp_operator", "PREFECT_API_KEY": "pnu_operator",
                       "FACELIFT_STORAGE__ROOT": "s3://ignored", "FACELIFT_RAY__NUM_WORKERS": "3"}.items():
        monkeypatch.setenv(key, value)
    for auth in ("on", "off"):
        env = Stack(tmp_path / auth, auth=auth == "on").env()
        leaked = [k for k in ("HF_TOKEN", "GITHUB_TOKEN", "PREFECT_API_KEY") if k in env]
        assert not leaked and "operator" not in env["AWS_SECRET_ACCESS_KEY"], (auth, leaked)
        assert env["FACELIFT_RAY__NUM_WORKERS"] == "3" and env["PATH"] == os.environ["PATH"]
        assert env["FACELIFT_STORAGE__ROOT"] == "s3://facelift"  # the stack's own
