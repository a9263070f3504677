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
                if e["name"].endswith(("_SECRET_NAME", "_SECRET_KEY")):  # names a Secret, holds none
                    continue
                if any(word in e["name"] for word in ("SECRET", "TOKEN", "AUTH_STRING", "PASSWORD")):
                    assert "valueFrom" in e, (name, e["name"])


def test_ray_dashboard_is_bound_to_the_pod_and_a_network_policy_guards_the_namespace():
    [build] = [d["spec"] for d in _docs() if d["kind"] == "RayCluster"]
    [serve] = [d["spec"]["rayClusterConfig"] for d in _docs() if d["kind"] == "RayService"]
    assert build["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    # the KubeRay operator deploys the Serve config through the serve head's dashboard, with the token
    assert serve["authOptions"] == {"mode": "token", "secretName": RAY_SECRET}
    deny = [p for p in POLICIES if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]]
    assert deny and not deny[0]["spec"].get("ingress")  # default: no ingress
    for policy in POLICIES:
        for rule in policy["spec"].get("ingress", []):
            for src in rule.get("from", []):  # facelift pods, or the operator's namespace to the serve dashboard
                if "namespaceSelector" in src:
                    assert rule["ports"] == [{"port": 8265, "protocol": "TCP"}], policy["metadata"]["name"]
                    assert set(_selected(policy)) == {"serve-head"}, policy["metadata"]["name"]
                else:
                    assert src["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "facelift"}
            if "from" not in rule:  # from anywhere: only the Serve HTTP port, on every pod that runs a proxy
                assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}], policy["metadata"]["name"]
                assert set(_selected(policy)) == {"serve-head", "serve-gpu"}, policy["metadata"]["name"]


POLICIES = [d for d in _docs() if d["kind"] == "NetworkPolicy"]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In / NotIn / Exists) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) or \
                (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def _selected(policy: dict[str, Any]) -> list[str]:
    return [name for name, pod in PODS.items() if _matches(policy["spec"]["podSelector"], pod["metadata"]["labels"])]


NEEDS_API_TOKEN = {"prefect-worker", "ray-head", "serve-head"}  # creates Jobs; KubeRay's autoscaler sidecar


@pytest.mark.parametrize("name", sorted(PODS))
def test_every_pod_meets_the_restricted_pod_security_standard(name):
    spec = PODS[name]["spec"]
    ctx = spec.get("securityContext", {})
    assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, name
    assert ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, name
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
    assert not [v for v in spec.get("volumes", []) if "hostPath" in v], name
    for container in spec["containers"]:
        c = container.get("securityContext", {})
        assert c.get("allowPrivilegeEscalation") is False and not c.get("privileged"), (name, container["name"])
        assert c.get("capabilities") == {"drop": ["ALL"]} and c.get("runAsUser", 1) != 0, (name, container["name"])
    if name not in NEEDS_API_TOKEN:  # no Kubernetes API credentials where nothing calls the API
        assert spec.get("automountServiceAccountToken") is False, name


def test_the_namespace_enforces_restricted_and_autoscalers_meet_it():
    [namespace] = [d for d in _docs() if d["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
    for doc in _docs():
        if doc["kind"] in ("RayCluster", "RayService"):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]
            if spec.get("enableInTreeAutoscaling"):  # KubeRay injects the autoscaler into the head pod
                ctx = spec["autoscalerOptions"]["securityContext"]
                assert ctx == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_no_pod_reaches_the_instance_metadata():
    egress = [p for p in POLICIES if "Egress" in p["spec"]["policyTypes"]]
    covered = {name for p in egress for name in _selected(p)}
    assert covered == set(PODS)
    for policy in egress:
        for rule in policy["spec"]["egress"]:
            for dest in rule.get("to", [{}]):
                block = dest.get("ipBlock")
                assert block, policy["metadata"]["name"]  # no open pod/namespace rule that skips the exception
                if block["cidr"] == "0.0.0.0/0":
                    assert "169.254.169.254/32" in block["except"]
                if block["cidr"] == "::/0":
                    assert "fd00:ec2::254/128" in block["except"]


def test_flow_run_jobs_take_the_auth_string_from_the_secret():
    """The worker re-exports its own settings into each flow-run Job; told the Secret's name and key, it writes a
    secretKeyRef there instead of the value (tests/test_neighbours.py renders one through prefect-kubernetes)."""
    [worker] = PODS["prefect-worker"]["spec"]["containers"]
    env, _ = _env(worker)
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"] == AUTH_SECRET
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"] == "auth-string"


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


def test_ray_vm_nodes_use_imdsv2_and_the_head_touches_only_its_own_instances():
    cluster = yaml.safe_load((REPO / "infra" / "ray" / "cluster.yaml").read_text())
    for name, node in cluster["available_node_types"].items():
        assert node["node_config"]["MetadataOptions"]["HttpTokens"] == "required", name
    head = json.loads((REPO / "infra" / "ray" / "iam" / "head-policy.json").read_text())
    for stmt in head["Statement"]:
        actions = [stmt["Action"]] if isinstance(stmt["Action"], str) else stmt["Action"]
        cond = stmt.get("Condition", {}).get("StringEquals", {})
        if {"ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"} & set(actions):
            assert cond.get("aws:ResourceTag/ray-cluster-name") == cluster["cluster_name"], stmt["Sid"]
        if "ec2:RunInstances" in actions and "instance/" in json.dumps(stmt["Resource"]):
            assert cond.get("aws:RequestTag/ray-cluster-name") == cluster["cluster_name"], stmt["Sid"]
            assert cond.get("ec2:MetadataHttpTokens") == "required", stmt["Sid"]
        if "ec2:CreateTags" in actions:
            assert cond.get("ec2:CreateAction") == "RunInstances" or \
                cond.get("aws:ResourceTag/ray-cluster-name") == cluster["cluster_name"], stmt["Sid"]
        if not actions[0].startswith(("ec2:Describe", "s3:")):
            assert stmt["Resource"] != "*", stmt["Sid"]
