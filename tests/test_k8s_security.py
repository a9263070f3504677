"""Static checks of the cluster manifests: every pod that touches S3 or Ray receives the S3 secret, the config and
the Ray token; every Prefect client the auth string; the server asks for it; nothing turns auth off; the Ray
dashboard is not exposed; a NetworkPolicy admits only facelift pods; the VM cluster uses least-privilege profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "infra" / "k8s"
S3_SECRET, CONFIG = "facelift-s3", "facelift-env"
RAY_SECRET, AUTH_SECRET = "facelift-ray-token", "facelift-prefect-auth"


def _docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def _pods() -> dict[str, dict[str, Any]]:
    """name -> pod template (metadata + spec) of every pod the manifests create."""
    pods = {}
    for doc in _docs():
        name = doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            pods[name] = doc["spec"]["template"]
        elif doc["kind"] in ("RayCluster", "RayService"):  # the service's cluster: facelift serve
            spec, prefix = ((doc["spec"], "ray") if doc["kind"] == "RayCluster"
                            else (doc["spec"]["rayClusterConfig"], "serve"))
            pods[f"{prefix}-head"] = spec["headGroupSpec"]["template"]
            for group in spec["workerGroupSpecs"]:
                pods[f"{prefix}-{group['groupName']}"] = group["template"]
    template = json.loads((K8S / "base-job-template.json").read_text())
    pods["flow-run"] = template["job_configuration"]["job_manifest"]["spec"]["template"]
    return pods


def _env(container: dict[str, Any]) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
    sources = {("secret", s["secretRef"]["name"]) if "secretRef" in s else ("config", s["configMapRef"]["name"])
               for s in container.get("envFrom", [])}
    return env, sources


def _secret_ref(value: Any, secret: str) -> bool:
    return isinstance(value, dict) and value.get("secretKeyRef", {}).get("name") == secret


PODS = _pods()
RAY_NODES = {"ray-head", "ray-gpu", "serve-head", "serve-gpu"}  # RayCluster (build, train) and RayService (serve)
TOUCH_S3 = {"prefect-worker", "flow-run"} | RAY_NODES   # read or write the bucket
TOUCH_RAY = {"prefect-worker", "flow-run"} | RAY_NODES  # Ray clients or nodes
PREFECT_CLIENTS = {"prefect-worker", "flow-run"}
CONFIG_USERS = {"prefect-worker", "flow-run"}                      # PREFECT_API_URL, RAY_ADDRESS, storage root


def test_every_pod_is_known_and_labelled_for_the_network_policy():
    assert set(PODS) == {"prefect-server", "prefect-worker", "flow-run"} | RAY_NODES
    for name, pod in PODS.items():
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "facelift", name


@pytest.mark.parametrize("name", sorted(PODS))
def test_pods_receive_the_secrets_and_config_they_need(name):
    for container in PODS[name]["spec"]["containers"]:
        env, sources = _env(container)
        if name in TOUCH_S3:
            assert ("secret", S3_SECRET) in sources, name
        if name in CONFIG_USERS:
            assert ("config", CONFIG) in sources, name
        if name in TOUCH_RAY:
            assert env.get("RAY_AUTH_MODE") == "token" and _secret_ref(env.get("RAY_AUTH_TOKEN"), RAY_SECRET), name
        if name in PREFECT_CLIENTS:
            assert _secret_ref(env.get("PREFECT_API_AUTH_STRING"), AUTH_SECRET), name


def test_the_prefect_server_asks_for_credentials():
    [server] = PODS["prefect-server"]["spec"]["containers"]
    env, _ = _env(server)
    assert _secret_ref(env["PREFECT_SERVER_API_AUTH_STRING"], AUTH_SECRET)
    assert env["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"
    assert env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] not in ("*", "")


def test_no_secret_in_plain_text_and_no_auth_switched_off():
    for path in [*K8S.glob("*"), REPO / "infra" / "ray" / "cluster.yaml", REPO / "infra" / "docker" / "Dockerfile",
                 REPO / "deployments" / "prefect.yaml"]:
        text = path.read_text()
        assert "RAY_AUTH_MODE=disabled" not in text and "RAY_AUTH_MODE, value: disabled" not in text, path
        assert 'RAY_AUTH_MODE: "disabled"' not in text and '"disabled"}' not in text, path
    for name, pod in PODS.items():
        for container in pod["spec"]["containers"]:
            for e in container.get("env", []):
                if any(word in e["name"] for word in ("SECRET", "TOKEN", "AUTH_STRING", "PASSWORD")):
                    assert "valueFrom" in e, (name, e["name"])


def test_ray_dashboard_is_bound_to_the_pod_and_a_network_policy_guards_the_namespace():
    clusters = [d["spec"] if d["kind"] == "RayCluster" else d["spec"]["rayClusterConfig"]
                for d in _docs() if d["kind"] in ("RayCluster", "RayService")]
    assert len(clusters) == 2
    for cluster in clusters:
        assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    policies = [d for d in _docs() if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]  # default: no ingress
    allow = [p for p in policies if p["spec"].get("ingress")]
    for policy in allow:
        for rule in policy["spec"]["ingress"]:
            if "from" in rule:  # from facelift pods only
                assert all(src["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "facelift"}
                           for src in rule["from"]), policy["metadata"]["name"]
            else:  # from anywhere: only the Serve HTTP port of the serve head (applications call it)
                assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "serve-head"
                assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}], policy["metadata"]["name"]


def test_ray_vm_cluster_uses_token_auth_and_least_privilege_profiles():
    cluster = yaml.safe_load((REPO / "infra" / "ray" / "cluster.yaml").read_text())
    options = " ".join(cluster["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in options and "RAY_AUTH_TOKEN_PATH=" in options
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])
    for name, node in cluster["available_node_types"].items():
        assert "facelift-ray" in node["node_config"]["IamInstanceProfile"]["Arn"], name
    for path in (REPO / "infra" / "ray" / "iam").glob("*.json"):
        for stmt in json.loads(path.read_text())["Statement"]:
            actions = [stmt["Action"]] if isinstance(stmt["Action"], str) else stmt["Action"]
            assert not [a for a in actions if a.endswith(":*") or a == "*"], (path.name, actions)
            if any(a.startswith("s3:") for a in actions):  # bucket-scoped, never every bucket
                assert stmt["Resource"] in ("arn:aws:s3:::facelift", "arn:aws:s3:::facelift/*"), path.name
