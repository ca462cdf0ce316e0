"""A real Kubernetes API server (etcd + kube-apiserver 1.20.2 on loopback) for the whole session,
and per test a fresh namespace with tokend's service account bound to the shipped Role
(deploy/k8s/central/role.yaml: exactly those rights, no more).

The binaries come from `scripts/kube-apiserver` (run by `scripts/setup --test`). A test module
that needs them calls `require_kube()` at its top: without them it is skipped with one line,
except under CI=true, where it fails.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.support.kube import KubeServer, require_kube, session_kube
from tests.support.kube_api import check, load_manifests
from tests.support.processes import wait_for

CENTRAL = Path(__file__).parents[2] / "deploy" / "k8s" / "central"
RBAC_FILES = [CENTRAL / name for name in ("serviceaccount.yaml", "role.yaml", "rolebinding.yaml")]
SERVICE_ACCOUNT = "tokend"  # the name in deploy/k8s/central/serviceaccount.yaml


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeServer]:
    require_kube()
    with session_kube(tmp_path_factory.mktemp("kube")) as server:
        yield server


@pytest.fixture
def namespace(kube: KubeServer) -> str:
    """A namespace of its own for each test (never deleted: no controller manager runs)."""
    return kube.create_namespace(f"t-{uuid.uuid4().hex[:12]}")


@dataclass
class Account:
    """A service account on the test server, its token and an API client acting as it."""

    namespace: str
    name: str
    token: str
    client: httpx2.Client


def allowed(client: httpx2.Client, **attributes: str) -> bool:
    """SelfSubjectAccessReview: may the client's identity do this? (verb, resource, name, ...)"""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    answer = check(
        client.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", json=review)
    )
    return bool(answer["status"].get("allowed"))


def bind_account(kube: KubeServer, namespace: str, name: str, *manifests: object) -> Account:
    """Token and client for service account `name`, once the API server's RBAC cache has the
    binding that `manifests` (applied into `namespace`) give it."""
    kube.apply(*manifests, namespace=namespace)  # type: ignore[arg-type]
    token = kube.token(namespace, name)
    client = kube.client(token)
    wait_for(
        lambda: allowed(
            client, namespace=namespace, verb="get", resource="secrets", name="crm-token"
        ),
        timeout=10,
        what="the role binding to take effect",
    )
    return Account(namespace=namespace, name=name, token=token, client=client)


@pytest.fixture
def tokend_account(kube: KubeServer, namespace: str) -> Iterator[Account]:
    """tokend's service account with the shipped ServiceAccount, Role and RoleBinding."""
    account = bind_account(kube, namespace, SERVICE_ACCOUNT, *RBAC_FILES)
    yield account
    account.client.close()


def role_without_create(namespace: str) -> list[dict[str, Any]]:
    """The shipped Role minus `create` on secrets, and a service account bound to it."""
    (role,) = load_manifests(CENTRAL / "role.yaml")
    role = copy.deepcopy(role)
    role["metadata"]["name"] = "no-create"
    for rule in role["rules"]:
        if rule["resources"] == ["secrets"]:
            rule["verbs"].remove("create")
    binding = yaml.safe_load((CENTRAL / "rolebinding.yaml").read_text())
    binding["metadata"]["name"] = "no-create"
    binding["roleRef"]["name"] = "no-create"
    binding["subjects"] = [{"kind": "ServiceAccount", "name": "no-create", "namespace": namespace}]
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "no-create"}}
    return [account, role, binding]


@pytest.fixture
def no_create_account(kube: KubeServer, namespace: str) -> Iterator[Account]:
    """A service account bound to the shipped Role minus `create` on secrets."""
    account = bind_account(kube, namespace, "no-create", role_without_create(namespace))
    yield account
    account.client.close()
