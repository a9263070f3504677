"""Deployment and cluster files parse and agree: deployments/prefect.yaml against the flows' code, and the
Dockerfile, KubeRay, Prefect worker and `ray up` files against each other and the flux profile config."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from facelift.config import PROFILES
from facelift.stack.local import POOL, QUEUES

REPO = Path(__file__).resolve().parents[1]
FLUX_RAY = PROFILES["flux"]["ray"]
RAY_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001}


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())


def _flows() -> dict[str, dict[str, Any]]:
    """module file -> {function: (flow name, parameter names)} for every @flow in flows/."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((REPO / "flows").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "flow":
                    name = next((k.value.value for k in dec.keywords if k.arg == "name"), node.name)
                    params = [a.arg for a in node.args.args + node.args.kwonlyargs]
                    found.setdefault(f"flows/{path.name}", {})[node.name] = (name, params)
    return found


def _emitted_events() -> set[str]:
    text = "\n".join(p.read_text() for p in (REPO / "flows").glob("*.py"))
    emitted = set(re.findall(r'emit_event\(\s*event="([\w.]+)"', text))
    emitted |= set(re.findall(r'^EVENT = "([\w.]+)"', text, re.M))
    return emitted


def test_every_flow_is_deployed_and_entrypoints_resolve(prefect_yaml):
    flows = _flows()
    deployed = {d["entrypoint"] for d in prefect_yaml["deployments"]}
    for module, funcs in flows.items():
        for func in funcs:
            assert f"{module}:{func}" in deployed, f"flow {module}:{func} has no deployment in prefect.yaml"
    for dep in prefect_yaml["deployments"]:
        module, func = dep["entrypoint"].split(":")
        assert (REPO / module).is_file() and func in flows[module], dep["entrypoint"]
        assert dep["enforce_parameter_schema"] is True, dep["name"]
        assert dep["work_pool"]["name"] == POOL and dep["work_pool"]["work_queue_name"] in QUEUES
        params = flows[module][func][1]
        assert set(dep.get("parameters") or {}) <= set(params), dep["name"]
    names = [d["name"] for d in prefect_yaml["deployments"]]
    assert len(names) == len(set(names)) and "pipeline" in names


def test_triggers_chain_on_emitted_events_with_valid_parameters(prefect_yaml):
    flows = _flows()
    emitted = _emitted_events()
    chained = {}
    for dep in prefect_yaml["deployments"]:
        module, func = dep["entrypoint"].split(":")
        for trig in dep.get("triggers", []):
            assert trig["type"] == "event" and trig["enabled"] is True
            for event in trig["expect"]:
                assert event in emitted, f"{dep['name']} waits for {event}, which no flow emits"
                chained[event] = chained.get(event, []) + [dep["name"]]
            assert trig["match_related"] == {"prefect.resource.role": "deployment"}
            assert set(trig["parameters"]) <= set(flows[module][func][1]), dep["name"]
            if set(trig["expect"]) & {"facelift.dataset.built", "facelift.curation.completed"}:  # a repeat: no rerun
                assert trig["parameters"].get("skip_completed") is True, dep["name"]
            for value in (v for k, v in trig["parameters"].items() if k != "skip_completed"):
                for item in value if isinstance(value, list) else [value]:
                    assert re.fullmatch(r"\{\{ event\.payload\.\w+ \}\}", item), item
    assert sorted(chained["facelift.dataset.built"]) == ["audit", "curate"]  # build -> curate -> train
    assert chained["facelift.curation.completed"] == ["train"]
    assert chained["facelift.head.trained"] == ["evaluate"]


def test_schedule_inactive_and_gpu_concurrency(prefect_yaml):
    deps = {d["name"]: d for d in prefect_yaml["deployments"]}
    [sched] = deps["build"]["schedules"]
    assert sched["active"] is False and sched["cron"] and sched["parameters"]["profile"] == "flux"
    for name in ("build", "train", "evaluate", "sweep", "enhance", "pipeline"):
        assert deps[name]["work_pool"]["work_queue_name"] == "gpu", name
    assert QUEUES["gpu"] == 1 and deps["build"]["concurrency_limit"]["limit"] == 1
    env = deps["build"]["work_pool"]["job_variables"]["env"]
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "remote-file-system/facelift-results"
    assert env["PREFECT_RESULTS_DEFAULT_SERIALIZER"] == "json"  # never pickles from the store
    assert prefect_yaml["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == \
        "{{ $DEPLOY_REPO_DIR }}"


# -- cluster infrastructure ----------------------------------------------------------------------------------
def _dockerfile() -> tuple[set[int], str]:
    text = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    ports = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    workdir = re.findall(r"^WORKDIR (\S+)$", text, re.M)[-1]
    return ports, workdir


def _images(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "image" and isinstance(v, str)] + \
            [i for v in obj.values() for i in _images(v)]
    if isinstance(obj, list):
        return [i for v in obj for i in _images(v)]
    return []


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict[str, Any]]]:
    return {p.name: _yaml_docs(p) for p in sorted((REPO / "infra" / "k8s").glob("*.yaml"))}


@pytest.fixture(scope="module")
def ray_up() -> dict[str, Any]:
    return yaml.safe_load((REPO / "infra" / "ray" / "cluster.yaml").read_text())


def test_one_image_everywhere(k8s, ray_up):
    images = {i for docs in k8s.values() for i in _images(docs)} | {ray_up["docker"]["image"]}
    assert len(images) == 1, images
    [image] = images
    assert re.fullmatch(r"[\w.\-/]+:\d+\.\d+\.\d+", image)  # pinned, never :latest
    assert f"-t {image}" in (REPO / "infra" / "docker" / "Dockerfile").read_text()


def test_ports_agree(k8s, ray_up):
    exposed, _ = _dockerfile()
    assert set(RAY_PORTS.values()) <= exposed
    [cluster] = k8s["raycluster.yaml"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == RAY_PORTS
    cm = next(d for d in k8s["prefect-worker.yaml"] if d["kind"] == "ConfigMap")["data"]
    assert cm["RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc.facelift.svc:{RAY_PORTS['client']}"
    server = next(d for d in k8s["prefect-server.yaml"] if d["kind"] == "Service")
    port = server["spec"]["ports"][0]["port"]
    assert cm["PREFECT_API_URL"] == f"http://{server['metadata']['name']}.facelift.svc:{port}/api"
    head_cmd = " ".join(ray_up["head_start_ray_commands"])
    for flag, port in (("--port", "gcs"), ("--dashboard-port", "dashboard"), ("--ray-client-server-port", "client")):
        assert f"{flag}={RAY_PORTS[port]}" in head_cmd
    assert f":{RAY_PORTS['gcs']}" in " ".join(ray_up["worker_start_ray_commands"])


def test_gpu_resources_match_flux_profile(k8s, ray_up):
    [cluster] = k8s["raycluster.yaml"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    [gpu] = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    res = gpu["template"]["spec"]["containers"][0]["resources"]
    n_gpu = int(res["limits"]["nvidia.com/gpu"])
    assert res["requests"] == res["limits"]  # guaranteed QoS: Ray sees exactly what it gets
    assert int(gpu["rayStartParams"]["num-gpus"]) == n_gpu
    actors = n_gpu / FLUX_RAY["num_gpus_per_worker"]
    cpus = actors * FLUX_RAY["num_cpus_per_worker"]
    assert int(gpu["rayStartParams"]["num-cpus"]) == int(res["limits"]["cpu"]) == cpus
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    node = ray_up["available_node_types"]["gpu_worker"]["resources"]
    assert node["CPU"] == node["GPU"] / FLUX_RAY["num_gpus_per_worker"] * FLUX_RAY["num_cpus_per_worker"]
    assert ray_up["available_node_types"][ray_up["head_node_type"]]["resources"]["CPU"] == 0


def test_worker_manifest_serves_the_pool_from_the_image_workdir(k8s):
    dep = next(d for d in k8s["prefect-worker.yaml"] if d["kind"] == "Deployment")
    cmd = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--pool") + 1] == POOL and cmd[cmd.index("--type") + 1] == "kubernetes"
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"
    role = next(d for d in k8s["prefect-worker.yaml"] if d["kind"] == "Role")
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    _, workdir = _dockerfile()
    assert workdir == "/opt/facelift"  # deploy with DEPLOY_REPO_DIR=/opt/facelift on a cluster
    assert "DEPLOY_REPO_DIR=/opt/facelift" in (REPO / "docs" / "deploy.md").read_text()


def test_flow_runs_send_heartbeats_wherever_they_run_and_the_zombie_automation_allows_two_missed_beats():
    import json

    from prefect.events.schemas.automations import AutomationCore

    from facelift.stack.local import AUTOMATIONS_FILE, BASE_ENV

    template = json.loads((REPO / "infra" / "k8s" / "base-job-template.json").read_text())
    [container] = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    k8s = {e["name"]: e.get("value") for e in container["env"]}
    for freq in (int(k8s["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]), int(BASE_ENV["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])):
        assert freq >= 30  # Prefect's minimum
    [zombie] = [AutomationCore.model_validate(a) for a in yaml.safe_load(AUTOMATIONS_FILE.read_text())["automations"]]
    trigger = zombie.trigger
    assert trigger.posture == "Proactive" and trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Crashed"} <= trigger.expect
    assert 2 * freq <= trigger.within.total_seconds() <= 120 - 30  # two missed beats; Crashed within 2 minutes
    assert zombie.actions[0].type == "change-flow-run-state" and zombie.actions[0].state == "CRASHED"
