"""The Kubernetes pieces that need no API server: config validation of the kubernetes sink, the
kubernetes: block and leader_election; kubeconfig problems as one line; errors classified
without carrying the request; lightkube never loaded by configs without Kubernetes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tokend.config import ConfigError, validate_config
from tokend.kube import KubeClient, KubeError, KubernetesOptions
from tokend.kube.errors import Attempt, classify

ATTEMPT = Attempt(
    "tokend's service account",
    "patch",
    "secrets",
    "crm-token",
    "apps",
    "kubernetes secret apps/crm-token",
)


def document(sink: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "identities": {
            "app": {
                "tenant": "t",
                "client_id": "c",
                "credential": {"type": "client_secret", "secret": {"env": "S"}},
            }
        },
        "tokens": {"crm": {"identity": "app", "resource": "https://crm.example", "sinks": [sink]}},
        **extra,
    }


def problems(sink: dict[str, Any], **extra: Any) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        validate_config(document(sink, **extra))
    return raised.value.lines


def test_a_kubernetes_sink_needs_no_section_and_defaults_to_all_fields() -> None:
    config = validate_config(document({"type": "kubernetes", "secret": "crm-token"}))
    (sink,) = config.tokens["crm"].sinks
    assert sink.target() == "kubernetes secret (default namespace)/crm-token"
    assert sink.fields == [
        "access_token",
        "token_type",
        "expires_on",
        "expires_at",
        "resource",
        "scopes",
    ]  # type: ignore[attr-defined]
    assert config.sections == {}


@pytest.mark.parametrize(
    ("sink", "extra", "line"),
    [
        (
            {"secret": "Crm_Token"},
            {},
            "config: tokens.crm.sinks.0.secret: 'Crm_Token' is not a Kubernetes name (lowercase letters, digits, '-', '.')",
        ),
        (
            {"secret": "crm", "fields": ["expires_on"]},
            {},
            "config: tokens.crm.sinks.0.fields: must include access_token (consumers need the token)",
        ),
        (
            {"secret": "crm", "annotations": {"tokend.io/token": "x"}},
            {},
            "config: tokens.crm.sinks.0.annotations: tokend.io/token: keys under tokend.io/ are tokend's",
        ),
        (
            {"secret": "crm", "name": "x", "namespace": "Apps"},
            {},
            "config: tokens.crm.sinks.0.namespace: 'Apps' is not a namespace name (lowercase letters, digits, '-')",
        ),
        (
            {"secret": "crm"},
            {"kubernetes": {"context": "prod"}},
            "config: kubernetes: context applies only with kubeconfig",
        ),
        (
            {"secret": "crm"},
            {"leader_election": {"renew_deadline": "15s"}},
            "config: leader_election: renew_deadline must be shorter than lease_duration",
        ),
        (
            {"secret": "crm"},
            {"leader_election": {"retry_period": "9s"}},
            "config: leader_election: renew_deadline must be longer than 1.2 x retry_period",
        ),
        (
            {"secret": "crm"},
            {"leader_election": {"lease": "x"}},
            "config: leader_election.lease: unknown key",
        ),
    ],
)
def test_config_problems_are_one_line_each(
    sink: dict[str, Any], extra: dict[str, Any], line: str
) -> None:
    (found,) = problems({"type": "kubernetes", **sink}, **extra)
    assert found.startswith(line), found


def write_kubeconfig(
    path: Path, cluster: dict[str, Any], user: dict[str, Any] | None = None
) -> Path:
    context: dict[str, Any] = {"cluster": "c"} | ({"user": "u"} if user is not None else {})
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user or {}}],
                "contexts": [{"name": "prod", "context": context}],
                "current-context": "prod",
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("cluster", "user", "context", "message"),
    [
        (
            {"server": "https://k.example"},
            {"token": "t"},
            "dev",
            "kubernetes: Context 'dev' not found",
        ),
        (
            {"server": "https://k.example", "insecure-skip-tls-verify": True},
            {"token": "t"},
            None,
            "kubernetes: context prod: insecure-skip-tls-verify is not allowed; give the cluster's certificate-authority",
        ),
        (
            {"server": "http://k.example"},
            {"token": "t"},
            None,
            "kubernetes: 'http://k.example' uses plain http; https is required except for loopback addresses",
        ),
        ({"server": "https://k.example"}, None, None, "kubernetes: context prod names no user"),
    ],
)
def test_kubeconfig_problems(
    tmp_path: Path,
    cluster: dict[str, Any],
    user: dict[str, Any] | None,
    context: str | None,
    message: str,
) -> None:
    path = write_kubeconfig(tmp_path / "kubeconfig", cluster, user)
    client = KubeClient(KubernetesOptions(kubeconfig=path, context=context))
    with pytest.raises(KubeError) as raised:
        client.config()
    assert str(raised.value) == message
    assert raised.value.code == "kube_config"


def test_in_cluster_outside_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError) as raised:
        KubeClient(KubernetesOptions(service_account_dir=tmp_path)).config()
    assert str(raised.value).startswith(
        "kubernetes: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT"
    )
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeError) as raised:
        KubeClient(KubernetesOptions(service_account_dir=tmp_path)).config()
    assert "No such file or directory" in str(raised.value)


def api_error(code: int, status: dict[str, Any]) -> Exception:
    from lightkube import ApiError

    request = httpx2.Request(
        "PATCH",
        "https://k.example/api/v1/x",
        headers={"Authorization": "Bearer sa-token-canary-1234"},
    )
    response = httpx2.Response(
        code, json={"kind": "Status", "code": code, **status}, request=request
    )
    return ApiError(request=request, response=response)


@pytest.mark.parametrize(
    ("code", "status", "text", "error_code", "transient"),
    [
        (
            403,
            {
                "reason": "Forbidden",
                "message": 'secrets "crm-token" is forbidden: User "system:serviceaccount:apps:tokend" cannot patch resource "secrets" in API group "" in the namespace "apps"',
            },
            "kubernetes secret apps/crm-token: tokend's service account cannot patch secrets/crm-token in namespace apps (its Role must allow this; a namespace that does not exist looks the same)",
            "kube_forbidden",
            False,
        ),
        (
            403,
            {"reason": "Forbidden", "message": 'secrets "crm-token" is forbidden: '},
            "kubernetes secret apps/crm-token: tokend's service account cannot patch secrets/crm-token in namespace apps (its Role must allow this; a namespace that does not exist looks the same)",
            "kube_forbidden",
            False,
        ),
        (
            404,
            {
                "reason": "NotFound",
                "message": 'namespaces "apps" not found',
                "details": {"name": "apps", "kind": "namespaces"},
            },
            "kubernetes secret apps/crm-token: namespace apps does not exist",
            "kube_no_namespace",
            False,
        ),
        (
            409,
            {"reason": "Conflict", "message": "the object has been modified"},
            "kubernetes secret apps/crm-token: conflict: the object has been modified",
            "kube_conflict",
            True,
        ),
        (
            422,
            {
                "reason": "Invalid",
                "message": 'Secret "crm-token" is invalid: data[a b]: Invalid value',
            },
            'kubernetes secret apps/crm-token: the API server refused it as invalid: Secret "crm-token" is invalid: data[a b]: Invalid value',
            "kube_invalid",
            False,
        ),
        (
            429,
            {"reason": "TooManyRequests", "message": "slow down"},
            "kubernetes secret apps/crm-token: the API server answered HTTP 429: slow down",
            "kube_unavailable",
            True,
        ),
        (
            500,
            {
                "reason": "InternalError",
                "message": "etcd: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            },
            "kubernetes secret apps/crm-token: the API server answered HTTP 500: etcd: Bearer ***",
            "kube_unavailable",
            True,
        ),
        (
            401,
            {"reason": "Unauthorized", "message": "Unauthorized"},
            "kubernetes secret apps/crm-token: the API server does not accept tokend's credentials (HTTP 401): check the service-account token or the kubeconfig user",
            "kube_unauthorized",
            False,
        ),
    ],
)
def test_api_errors_are_classified_without_the_request(
    code: int, status: dict[str, Any], text: str, error_code: str, transient: bool
) -> None:
    error = classify(api_error(code, status), ATTEMPT)
    assert (str(error), error.code, error.transient) == (text, error_code, transient)
    assert "sa-token-canary" not in repr(error) + str(error.__dict__)


def test_transport_errors_are_transient() -> None:
    request = httpx2.Request("GET", "https://k.example")
    error = classify(httpx2.ConnectError("refused", request=request), ATTEMPT)
    assert (
        str(error)
        == "kubernetes secret apps/crm-token: cannot connect to the API server (ConnectError)"
    )
    assert error.transient
    timeout = classify(httpx2.ReadTimeout("slow", request=request), ATTEMPT)
    assert timeout.transient and "no answer from the API server in time (ReadTimeout)" in str(
        timeout
    )


def test_lightkube_is_not_loaded_without_kubernetes(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    sink = {"type": "file", "path": str(tmp_path / "t")}
    config.write_text(yaml.safe_dump(document(sink)))
    script = (
        "import sys; from tokend.cli import main; "
        f"main(['check', '-c', {str(config)!r}]); main(['version']); "
        "print('lightkube' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={"S": "x", "PATH": "/usr/bin"},
    )
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr
