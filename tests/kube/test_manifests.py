"""deploy/k8s/: every manifest valid for current Kubernetes (kubernetes-validate's schemas,
strict: an unknown or misplaced field fails), and every variant consistent with itself and with
tokend: the sidecar's paths, port and probes match tokend's defaults and the config it mounts,
which `tokend check` accepts; the central writer's Role covers exactly what its config writes,
and `tokend check` accepts that config as the service account bound to that Role on a real API
server (the one test here that needs it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.kube.conftest import Account
from tests.support.kube import KubeServer
from tests.support.kube_api import load_manifests
from tests.support.processes import tokend
from tokend.config import DEFAULT_LISTEN
from tokend.configfile import load_config
from tokend.server import create_app
from tokend.transport import split_listen

DEPLOY = Path(__file__).parents[2] / "deploy" / "k8s"
SIDECAR, CENTRAL = DEPLOY / "sidecar", DEPLOY / "central"
TOKEND_CONFIGS = {SIDECAR / "config.yaml", CENTRAL / "config.yaml"}
MANIFESTS = sorted(
    path
    for path in DEPLOY.rglob("*.yaml")
    if path not in TOKEND_CONFIGS and path.name != "kustomization.yaml"
)
# Kinds from operators' CRDs, which kubernetes-validate has no schema for: checked below.
_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
POD_MONITOR_SCHEMA = {  # the part of the Prometheus Operator's PodMonitor CRD used here
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object"}},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": _DURATION},
                        },
                    },
                },
            },
        },
    },
}


def one(path: Path, kind: str) -> dict[str, Any]:
    (document,) = [doc for doc in load_manifests(path) if doc["kind"] == kind]
    return document


def pod_spec(variant: Path) -> dict[str, Any]:
    spec: dict[str, Any] = one(variant / "deployment.yaml", "Deployment")["spec"]["template"][
        "spec"
    ]
    return spec


def container(variant: Path, name: str) -> dict[str, Any]:
    spec = pod_spec(variant)
    (found,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return found


def mount_path(variant: Path, container_name: str, volume: str) -> str:
    (mount,) = [
        m for m in container(variant, container_name)["volumeMounts"] if m["name"] == volume
    ]
    path: str = mount["mountPath"]
    return path


def volume(variant: Path, name: str) -> dict[str, Any]:
    (found,) = [v for v in pod_spec(variant)["volumes"] if v["name"] == name]
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_for_current_kubernetes(path: Path) -> None:
    documents = load_manifests(path)
    assert documents
    for document in documents:
        if document["kind"] == "PodMonitor":
            jsonschema.validate(document, POD_MONITOR_SCHEMA)
        else:
            latest = kubernetes_validate.latest_version()
            kubernetes_validate.validate(document, latest, strict=True)


@pytest.mark.parametrize("variant", [SIDECAR, CENTRAL], ids=lambda p: p.name)
def test_kustomization_lists_every_manifest_and_the_config(variant: Path) -> None:
    kustomization = yaml.safe_load((variant / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in MANIFESTS if p.parent == variant
    )
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["config.yaml"]
    assert volume(variant, "config")["configMap"]["name"] == generator["name"]
    (image,) = kustomization["images"]
    assert container(variant, "tokend")["image"] == image["name"]


@pytest.mark.parametrize("variant", [SIDECAR, CENTRAL], ids=lambda p: p.name)
def test_every_pod_is_locked_down_with_resources(variant: Path) -> None:
    spec = pod_spec(variant)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for each in spec.get("initContainers", []) + spec["containers"]:
        context = each["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, each["name"]
        assert context["allowPrivilegeEscalation"] is False, each["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, each["name"]
        assert set(each["resources"]) == {"requests", "limits"}, each["name"]
        for bound in ("requests", "limits"):
            assert set(each["resources"][bound]) == {"cpu", "memory"}, each["name"]
    containerfile = (DEPLOY / "Containerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", containerfile, re.MULTILINE)
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (
        int(user[0]),
        int(user[1]),
    )
    assert 'ENTRYPOINT ["tokend", "run"]' in containerfile
    args = container(variant, "tokend")["args"]
    assert args == ["--config", f"{mount_path(variant, 'tokend', 'config')}/config.yaml"]
    assert f"TOKEND_CONFIG={args[1]}" in containerfile


@pytest.mark.parametrize("variant", [SIDECAR, CENTRAL], ids=lambda p: p.name)
def test_listener_port_and_probes_match_tokend(variant: Path) -> None:
    config = yaml.safe_load((variant / "config.yaml").read_text())
    host, port = split_listen(config["listen"])
    assert host in {"0.0.0.0", "::"}  # noqa: S104  # the kubelet probes the pod IP, not loopback
    assert port == split_listen(DEFAULT_LISTEN)[1]
    sidecar = container(variant, "tokend")
    (declared,) = sidecar["ports"]
    assert (declared["name"], declared["containerPort"]) == ("metrics", port)
    served = {route.path for route in create_app(None, None, None).routes}  # type: ignore[arg-type]
    probes = {key: sidecar[key]["httpGet"] for key in sidecar if key.endswith("Probe")}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "metrics"}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "metrics"}
    assert {probe["path"] for probe in probes.values()} <= served


def test_sidecar_is_native_and_gates_the_app_on_readyz() -> None:
    spec = pod_spec(SIDECAR)
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    # A native sidecar's startupProbe must pass before the app container starts.
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    tokens = volume(SIDECAR, "tokens")["emptyDir"]
    assert tokens["medium"] == "Memory"
    assert "fsGroup" in spec["securityContext"]


def test_sidecar_paths_match_the_config_it_mounts() -> None:
    config = load_config(SIDECAR / "config.yaml").config
    tokens_dir = mount_path(SIDECAR, "tokend", "tokens")
    assert tokens_dir == "/var/run/tokend"
    assert mount_path(SIDECAR, "app", "tokens") == tokens_dir
    sinks = [sink for token in config.tokens.values() for sink in token.sinks]
    for sink in sinks:
        assert sink.type == "file"
        assert Path(sink.path).parent == Path(tokens_dir)  # type: ignore[attr-defined]
        assert sink.mode & 0o040  # type: ignore[attr-defined]  # group-readable: via fsGroup
    (app_env,) = container(SIDECAR, "app")["env"]
    assert app_env["value"] in {sink.path for sink in sinks}  # type: ignore[attr-defined]

    secret_mount = mount_path(SIDECAR, "tokend", "client-secret")
    (item,) = volume(SIDECAR, "client-secret")["secret"]["items"]
    secret_file = config.identities["crm-app"].credential.secret.file  # type: ignore[union-attr]
    assert secret_file == Path(secret_mount) / item["path"]


def test_tokend_check_accepts_the_shipped_sidecar_config(tmp_path: Path) -> None:
    """The file as shipped, with the pod's mount points moved into a temp dir (they cannot be
    created outside a pod), and nothing else changed."""
    text = (SIDECAR / "config.yaml").read_text()
    mounts = {
        mount_path(SIDECAR, "tokend", "tokens"): tmp_path / "tokens",
        mount_path(SIDECAR, "tokend", "client-secret"): tmp_path / "secrets",
    }
    for pod_path, local in mounts.items():
        assert pod_path in text
        text = text.replace(pod_path, str(local))
        local.mkdir()
    (tmp_path / "secrets" / "client-secret").write_text("not-a-real-secret\n")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = tokend("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "OK: 1 identities, 1 tokens, 1 sinks" in result.stdout


def test_central_role_covers_exactly_what_the_config_writes() -> None:
    config = yaml.safe_load((CENTRAL / "config.yaml").read_text())
    load_config(CENTRAL / "config.yaml")  # valid as it is
    role = one(CENTRAL / "role.yaml", "Role")
    secrets = {
        sink["secret"]
        for token in config["tokens"].values()
        for sink in token["sinks"]
        if sink["type"] == "kubernetes"
    }
    (secret_rule,) = [rule for rule in role["rules"] if rule["resources"] == ["secrets"]]
    assert set(secret_rule["resourceNames"]) == secrets
    assert set(secret_rule["verbs"]) == {"get", "patch", "create"}
    lease_rules = [rule for rule in role["rules"] if rule["resources"] == ["leases"]]
    assert {name for rule in lease_rules for name in rule.get("resourceNames", [])} == {
        config["leader_election"]["name"]
    }
    assert all("resourceNames" in rule or rule["verbs"] == ["create"] for rule in lease_rules)


def test_tokend_check_accepts_the_shipped_central_config(
    kube: KubeServer, tokend_account: Account, tmp_path: Path
) -> None:
    """As the service account bound to exactly the shipped Role, in-cluster: the file as shipped,
    with the client-secret mount and the service-account directory moved into a temp dir."""
    text = (CENTRAL / "config.yaml").read_text()
    secret_dir = mount_path(CENTRAL, "tokend", "client-secret")
    assert secret_dir in text
    text = text.replace(secret_dir, str(tmp_path / "secrets"))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "client-secret").write_text("not-a-real-secret\n")
    account_dir = kube.write_service_account_dir(
        tmp_path / "sa", tokend_account.namespace, tokend_account.token
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"{text}\nkubernetes: {{service_account_dir: {account_dir}}}\n")
    result = tokend("check", "-c", str(config), env=kube.in_cluster_env())
    assert result.returncode == 0, result.stderr
    assert "OK: 1 identities, 2 tokens, 2 sinks" in result.stdout
    assert tokend_account.token not in result.stdout + result.stderr


def test_central_objects_refer_to_each_other() -> None:
    kustomization = yaml.safe_load((CENTRAL / "kustomization.yaml").read_text())
    account = one(CENTRAL / "serviceaccount.yaml", "ServiceAccount")
    binding = one(CENTRAL / "rolebinding.yaml", "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": one(CENTRAL / "role.yaml", "Role")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": kustomization["namespace"],
        }
    ]
    deployment = one(CENTRAL / "deployment.yaml", "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert pod_spec(CENTRAL)["serviceAccountName"] == account["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = one(CENTRAL / "podmonitor.yaml", "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    policy = one(CENTRAL / "networkpolicy.yaml", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    kinds = {doc["kind"] for path in MANIFESTS for doc in load_manifests(path)}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}  # nothing cluster-wide
