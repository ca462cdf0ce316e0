"""REST helpers for a test Kubernetes API server (`tests.support.kube.KubeServer` has them):
set-up as the cluster admin (namespaces, service accounts, manifests applied server-side),
service-account tokens from the TokenRequest API, and the files a client of a real cluster
reads (a kubeconfig; the in-cluster service-account directory and environment).

Plain REST over httpx2 on purpose: the set-up must not depend on the client under test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx2
import yaml

Manifest = dict[str, Any]
APPLY = "application/apply-patch+yaml"
TEST_MANAGER = "tokend-tests"


def load_manifests(path: Path) -> list[Manifest]:
    """Every document of a (multi-document) YAML file, empty ones skipped."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def check(response: httpx2.Response) -> Any:
    """The JSON body of a 2xx answer; otherwise an AssertionError with the API's own message
    (a Status object names the verb, resource and reason; it never holds a token)."""
    if response.is_success:
        return response.json()
    try:
        message = response.json().get("message", "")
    except ValueError:
        message = response.text[:300]
    request = response.request
    raise AssertionError(
        f"{request.method} {request.url.path}: {response.status_code} {message}".strip()
    )


class KubeApi:
    """Mixed into `KubeServer`, which provides these attributes and `admin()`."""

    url: str
    ca_file: Path
    port: int
    _kinds: dict[tuple[str, str], tuple[str, bool]]  # (apiVersion, kind) -> (plural, namespaced)

    def admin(self) -> httpx2.Client:
        raise NotImplementedError

    # --- paths ----------------------------------------------------------------------------------

    def path(self, api_version: str, kind: str, name: str = "", namespace: str = "") -> str:
        """The REST path of a kind (its collection, or one object with `name`), found by
        discovery: `path("v1", "Secret", "crm", "apps")` -> /api/v1/namespaces/apps/secrets/crm."""
        plural, namespaced = self._resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespaced:
            base += f"/namespaces/{namespace or 'default'}"
        return f"{base}/{plural}" + (f"/{name}" if name else "")

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        if (api_version, kind) not in self._kinds:
            prefix = "/api" if "/" not in api_version else "/apis"
            listing = check(self.admin().get(f"{prefix}/{api_version}"))
            for resource in listing["resources"]:
                if "/" not in resource["name"]:
                    key = (api_version, resource["kind"])
                    self._kinds[key] = (resource["name"], resource["namespaced"])
        if (api_version, kind) not in self._kinds:
            raise AssertionError(f"the API server serves no {kind} in {api_version}")
        return self._kinds[(api_version, kind)]

    # --- set-up as the admin --------------------------------------------------------------------

    def apply(
        self,
        *manifests: Manifest | Path | Iterable[Manifest],
        namespace: str | None = None,
        field_manager: str = TEST_MANAGER,
    ) -> list[Manifest]:
        """Server-side apply (forced) of manifests, dicts or YAML files, as the admin. With
        `namespace`, namespaced objects go there, and so do the ServiceAccount subjects of role
        bindings (as kustomize's `namespace:` does). Returns the objects as stored."""
        applied = []
        for manifest in _flatten(manifests):
            document = json.loads(json.dumps(manifest))  # a copy; files stay as shipped
            metadata = document.setdefault("metadata", {})
            if namespace is not None:
                metadata["namespace"] = namespace
                for subject in document.get("subjects", []):
                    if subject.get("kind") == "ServiceAccount":
                        subject["namespace"] = namespace
            path = self.path(
                document["apiVersion"],
                document["kind"],
                metadata["name"],
                metadata.get("namespace", ""),
            )
            if not self._resource(document["apiVersion"], document["kind"])[1]:
                metadata.pop("namespace", None)
            response = self.admin().patch(
                path,
                params={"fieldManager": field_manager, "force": "true"},
                content=json.dumps(document),
                headers={"Content-Type": APPLY},
            )
            applied.append(check(response))
        return applied

    def create_namespace(self, name: str) -> str:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    def create_service_account(self, namespace: str, name: str) -> str:
        self.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            namespace=namespace,
        )
        return name

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> Manifest | None:
        """An object as the admin sees it, None if there is none."""
        response = self.admin().get(self.path(api_version, kind, name, namespace))
        return None if response.status_code == 404 else check(response)

    # --- credentials ----------------------------------------------------------------------------

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        expiration_seconds: int = 600,
        audiences: tuple[str, ...] = (),
    ) -> str:
        """A service-account token from the TokenRequest API (what the kubelet projects into
        pods). 600 s is the shortest lifetime the API server accepts. Default audience: the
        API server's own."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
        token: str = check(self.admin().post(path, json=body))["status"]["token"]
        return token

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        namespace: str = "default",
        context: str = "tokend-test",
        current_context: str | None = None,
    ) -> Path:
        """A kubeconfig for this server with one context `context` (user: the token, or
        `tokenFile` when `token_file` is given). `current_context` defaults to `context`; give
        another name to check that a client picks the context it is told to."""
        user: dict[str, str] = {"tokenFile": str(token_file)} if token_file else {}
        if token is not None:
            user["token"] = token
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tokend-test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": context, "user": user}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": "tokend-test", "user": context, "namespace": namespace},
                }
            ],
            "current-context": current_context or context,
        }
        _write_private(path, yaml.safe_dump(document, sort_keys=False))
        return path

    def write_service_account_dir(self, directory: Path, namespace: str, token: str) -> Path:
        """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount: `token`,
        `ca.crt`, `namespace`. Call again with a new token to rotate it (atomic replace)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(self.ca_file.read_bytes())
        (directory / "namespace").write_text(namespace)
        _write_private(directory / "token", token)
        return directory

    def in_cluster_env(self) -> dict[str, str]:
        """The environment a pod gets for the API server (`KUBERNETES_SERVICE_HOST/PORT`)."""
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}


def _flatten(items: Iterable[Manifest | Path | Iterable[Manifest]]) -> Iterable[Manifest]:
    for item in items:
        if isinstance(item, Path):
            yield from load_manifests(item)
        elif isinstance(item, dict):
            yield item
        else:
            yield from item


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with mode 0600 (a reader never sees half a token)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o600)
    os.replace(temporary, path)
