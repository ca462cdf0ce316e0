"""The shipped RBAC (deploy/k8s/central/role.yaml) against a real API server, in plain REST, as
the service account bound to it: what the Kubernetes Secret sink and leader election rely on.

Server-side apply (`PATCH application/apply-patch+yaml`, field manager `tokend`) creates and
updates the Secret, leaves other managers' fields alone and reports conflicts; the Role allows
exactly tokend's Secrets and Lease; SelfSubjectAccessReview (what `tokend check` asks) agrees.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
import yaml

from tests.kube.conftest import CENTRAL, Account, allowed
from tests.support.kube import SERVICE_ACCOUNT_ISSUER, KubeServer, require_kube
from tests.support.kube_api import APPLY, check, load_manifests

require_kube()

SECRET = "crm-token"  # in the shipped Role's resourceNames
LEASE = "tokend"
CANARY = "canary-access-token-4f1d9a"


def secret_manifest(name: str = SECRET, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "annotations": {"tokend.io/token": "crm"}},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


def apply(
    client: httpx2.Client,
    namespace: str,
    manifest: dict[str, Any],
    *,
    manager: str = "tokend",
    force: bool = False,
) -> httpx2.Response:
    params = {"fieldManager": manager} | ({"force": "true"} if force else {})
    name = manifest["metadata"]["name"]
    return client.patch(
        f"/api/v1/namespaces/{namespace}/secrets/{name}",
        params=params,
        content=json.dumps(manifest),
        headers={"Content-Type": APPLY},
    )


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def managers(secret: dict[str, Any]) -> dict[str, str]:
    return {entry["manager"]: entry["operation"] for entry in secret["metadata"]["managedFields"]}


def test_the_role_under_test_is_the_shipped_file(tokend_account: Account, kube: KubeServer) -> None:
    role = kube.get("rbac.authorization.k8s.io/v1", "Role", "tokend", tokend_account.namespace)
    (shipped,) = load_manifests(CENTRAL / "role.yaml")
    assert role is not None
    assert role["rules"] == [
        {
            key: rule[key]
            for key in ("verbs", "apiGroups", "resources", "resourceNames")
            if key in rule
        }
        for rule in shipped["rules"]
    ]


def test_apply_creates_the_secret_then_updates_it(tokend_account: Account) -> None:
    client, namespace = tokend_account.client, tokend_account.namespace
    created = apply(client, namespace, secret_manifest(access_token="first", token_type="Bearer"))
    assert created.status_code == 201, created.text
    assert managers(created.json()) == {"tokend": "Apply"}

    updated = apply(client, namespace, secret_manifest(access_token="second", token_type="Bearer"))
    assert updated.status_code == 200, updated.text
    assert decoded(updated.json()) == {"access_token": "second", "token_type": "Bearer"}
    assert updated.json()["metadata"]["annotations"] == {"tokend.io/token": "crm"}


def test_fields_of_another_manager_are_kept(tokend_account: Account, kube: KubeServer) -> None:
    client, namespace = tokend_account.client, tokend_account.namespace
    theirs = secret_manifest(extra="from another controller")
    theirs["metadata"] = {"name": SECRET, "labels": {"team": "crm"}}
    check(apply(kube.admin(), namespace, theirs, manager="other-controller"))

    ours = check(apply(client, namespace, secret_manifest(access_token="ours")))
    assert decoded(ours) == {"access_token": "ours", "extra": "from another controller"}
    assert ours["metadata"]["labels"] == {"team": "crm"}
    assert managers(ours) == {"other-controller": "Apply", "tokend": "Apply"}

    # Applying without a field tokend owned removes that field only.
    check(apply(client, namespace, secret_manifest(token_type="Bearer")))
    stored = kube.get("v1", "Secret", SECRET, namespace)
    assert stored is not None
    assert decoded(stored) == {"token_type": "Bearer", "extra": "from another controller"}


def test_a_conflicting_apply_gets_409_unless_forced(
    tokend_account: Account, kube: KubeServer
) -> None:
    client, namespace = tokend_account.client, tokend_account.namespace
    check(apply(kube.admin(), namespace, secret_manifest(access_token="theirs"), manager="other"))

    refused = apply(client, namespace, secret_manifest(access_token=CANARY))
    assert refused.status_code == 409
    status = refused.json()
    assert status["reason"] == "Conflict"
    assert 'conflict with "other"' in status["message"]
    assert ".data.access_token" in status["message"]
    assert CANARY not in refused.text  # the API never echoes the value

    forced = check(apply(client, namespace, secret_manifest(access_token=CANARY), force=True))
    assert decoded(forced) == {"access_token": CANARY}
    owned = {e["manager"]: e.get("fieldsV1", {}) for e in forced["metadata"]["managedFields"]}
    assert "f:access_token" in owned["tokend"]["f:data"]


def test_secrets_outside_resource_names_are_forbidden(tokend_account: Account) -> None:
    client, namespace = tokend_account.client, tokend_account.namespace
    refused = apply(client, namespace, secret_manifest("someone-elses", access_token=CANARY))
    assert refused.status_code == 403
    assert refused.json()["reason"] == "Forbidden"
    message = refused.json()["message"]
    assert f"system:serviceaccount:{namespace}:tokend" in message
    assert 'cannot patch resource "secrets"' in message
    assert client.get(f"/api/v1/namespaces/{namespace}/secrets").status_code == 403
    assert client.get(f"/api/v1/namespaces/default/secrets/{SECRET}").status_code == 403
    with pytest.raises(AssertionError) as raised:
        check(refused)
    assert tokend_account.token not in str(raised.value)


def test_applying_a_missing_secret_needs_create(
    kube: KubeServer, namespace: str, no_create_account: Account
) -> None:
    account = no_create_account
    refused = apply(account.client, namespace, secret_manifest(access_token="x"))
    assert refused.status_code == 403
    status = refused.json()
    assert (status["reason"], status["details"]) == (
        "Forbidden",
        {"name": SECRET, "kind": "secrets"},
    )
    # The create check inside an apply names no verb (unlike a refused patch): a client that
    # wants to say "cannot create" must know the Secret was missing, or ask an access review.
    assert status["message"] == f'secrets "{SECRET}" is forbidden: '
    assert not allowed(
        account.client, namespace=namespace, verb="create", resource="secrets", name=SECRET
    )

    check(apply(kube.admin(), namespace, secret_manifest(other="x"), manager="admin"))
    assert apply(account.client, namespace, secret_manifest(access_token="x")).status_code == 200


def test_access_reviews_answer_as_the_role_says(
    tokend_account: Account, no_create_account: Account
) -> None:
    client, ns = tokend_account.client, tokend_account.namespace
    for verb in ("get", "patch", "create"):
        assert allowed(client, namespace=ns, verb=verb, resource="secrets", name=SECRET)
        assert allowed(client, namespace=ns, verb=verb, resource="secrets", name="graph-token")
        assert not allowed(client, namespace=ns, verb=verb, resource="secrets", name="other")
    assert not allowed(client, namespace=ns, verb="delete", resource="secrets", name=SECRET)
    assert not allowed(client, namespace=ns, verb="list", resource="secrets")
    assert not allowed(client, namespace="default", verb="patch", resource="secrets", name=SECRET)
    lease = {"namespace": ns, "group": "coordination.k8s.io", "resource": "leases"}
    assert allowed(client, verb="update", name=LEASE, **lease)
    assert allowed(client, verb="create", **lease)
    assert not allowed(client, verb="update", name="someone-elses", **lease)

    no_create = no_create_account
    assert allowed(no_create.client, namespace=ns, verb="patch", resource="secrets", name=SECRET)
    assert not allowed(
        no_create.client, namespace=ns, verb="create", resource="secrets", name=SECRET
    )


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_lease_create_renew_and_stale_update(tokend_account: Account) -> None:
    client, namespace = tokend_account.client, tokend_account.namespace
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    spec = {"holderIdentity": "pod-a", "leaseDurationSeconds": 15, "leaseTransitions": 0}
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE},
        "spec": spec | {"acquireTime": micro_time(), "renewTime": micro_time()},
    }
    created = client.post(leases, json=lease)
    assert created.status_code == 201, created.text
    assert client.post(leases, json=lease).status_code == 409  # AlreadyExists: someone was first

    current = check(client.get(f"{leases}/{LEASE}"))
    current["spec"]["renewTime"] = micro_time()
    renewed = check(client.put(f"{leases}/{LEASE}", json=current))
    assert renewed["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]

    stale = copy.deepcopy(current)  # pod-b read before pod-a renewed: its take-over must fail
    stale["spec"] |= {"holderIdentity": "pod-b", "leaseTransitions": 1}
    conflict = client.put(f"{leases}/{LEASE}", json=stale)
    assert conflict.status_code == 409
    assert conflict.json()["reason"] == "Conflict"
    assert check(client.get(f"{leases}/{LEASE}"))["spec"]["holderIdentity"] == "pod-a"

    other = client.put(
        f"{leases}/someone-elses", json=lease | {"metadata": {"name": "someone-elses"}}
    )
    assert other.status_code == 403


def test_token_request_kubeconfig_and_service_account_dir(
    tokend_account: Account, kube: KubeServer, tmp_path: Path
) -> None:
    token = kube.token(tokend_account.namespace, "tokend", expiration_seconds=900)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    assert claims["aud"] == [SERVICE_ACCOUNT_ISSUER]
    assert claims["sub"] == f"system:serviceaccount:{tokend_account.namespace}:tokend"

    config = yaml.safe_load(
        kube.write_kubeconfig(tmp_path / "kubeconfig", token=token, current_context="x").read_text()
    )
    assert config["current-context"] == "x"
    (context,) = config["contexts"]
    (cluster,) = config["clusters"]
    (user,) = config["users"]
    with kube.client(user["user"]["token"]) as client:
        assert str(client.base_url).rstrip("/") == cluster["cluster"]["server"]
        assert (
            allowed(
                client, namespace=context["context"]["namespace"], verb="list", resource="secrets"
            )
            is False
        )

    directory = kube.write_service_account_dir(tmp_path / "sa", tokend_account.namespace, token)
    assert (directory / "token").read_text() == token
    assert (directory / "token").stat().st_mode & 0o777 == 0o600
    assert (directory / "namespace").read_text() == tokend_account.namespace
    assert kube.in_cluster_env()["KUBERNETES_SERVICE_PORT"] == str(kube.port)


def test_restarting_the_api_server_keeps_what_etcd_holds(
    tokend_account: Account, kube: KubeServer
) -> None:
    client, namespace = tokend_account.client, tokend_account.namespace
    check(apply(client, namespace, secret_manifest(access_token="before")))
    with kube.apiserver_down(), pytest.raises(httpx2.TransportError):
        client.get(f"/api/v1/namespaces/{namespace}/secrets/{SECRET}")
    after = client.get(f"/api/v1/namespaces/{namespace}/secrets/{SECRET}")
    assert after.status_code == 200  # the same token: the signing key survives the restart
    assert decoded(after.json()) == {"access_token": "before"}
