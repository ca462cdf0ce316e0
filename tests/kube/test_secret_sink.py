"""The Kubernetes Secret sink against a real API server, as tokend's service account bound to
exactly the shipped Role: apply and re-apply, monotonic publish, other managers' fields, conflicts,
RBAC refusals as one line naming the verb, withdrawal, and `tokend check`'s access reviews."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import entra_identity, write_config
from tests.kube.conftest import Account
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.kube import KubeServer, require_kube
from tests.support.kube_api import check
from tests.support.processes import tokend
from tokend.errors import TokendError
from tokend.kube import KubernetesOptions
from tokend.resources import Resources
from tokend.sinks import SinkContext
from tokend.sinks.kubernetes import KubernetesSink, KubernetesSinkOptions
from tokend.token import Token

require_kube()

SECRET = "crm-token"
CANARY = "canary-secret-token-5e0c1b"
T = TypeVar("T")


def a_token(value: str = CANARY, *, expires_in: float = 3600, lifetime: float = 3600) -> Token:
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=expires_in)
    return Token(
        value=value,
        token_type="Bearer",
        expires_at=expires_at,
        obtained_at=expires_at - timedelta(seconds=lifetime),
        resource="https://crm.example",
    )


def resources_for(kube: KubeServer, account: Account, tmp_path: Path) -> Resources:
    kubeconfig = kube.write_kubeconfig(
        tmp_path / f"kubeconfig-{account.name}", token=account.token, namespace=account.namespace
    )
    return Resources({"kubernetes": KubernetesOptions(kubeconfig=kubeconfig)})


def run(resources: Resources, scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await scenario()
        finally:
            await resources.close()

    return asyncio.run(main())


def sink_for(resources: Resources, **options: Any) -> KubernetesSink:
    settings = KubernetesSinkOptions(
        type="kubernetes", secret=options.pop("secret", SECRET), **options
    )
    return KubernetesSink(settings, SinkContext("crm", "kubernetes", resources))


def stored(kube: KubeServer, namespace: str, name: str = SECRET) -> dict[str, Any]:
    secret = kube.get("v1", "Secret", name, namespace)
    assert secret is not None
    return secret


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def admin_apply(kube: KubeServer, namespace: str, manager: str, **body: Any) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, **body}
    check(
        kube.admin().patch(
            f"/api/v1/namespaces/{namespace}/secrets/{SECRET}",
            params={"fieldManager": manager, "force": "true"},
            json=manifest,
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
    )


def test_publish_applies_then_updates_and_never_goes_back(
    kube: KubeServer, tokend_account: Account, tmp_path: Path
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    first, second, older = a_token("first"), a_token(CANARY, expires_in=4000), a_token("older")

    async def scenario() -> None:
        sink = sink_for(resources, labels={"team": "crm"}, annotations={"owner": "crm-team"})
        await sink.publish(first)
        secret = stored(kube, ns)
        assert decoded(secret) == {
            "access_token": "first",
            "token_type": "Bearer",
            "expires_on": str(int(first.expires_at.timestamp())),
            "expires_at": first.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "resource": "https://crm.example",
        }
        assert secret["type"] == "Opaque"
        assert secret["metadata"]["labels"] == {"team": "crm"}
        annotations = secret["metadata"]["annotations"]
        assert annotations["owner"] == "crm-team"
        assert annotations["tokend.io/token"] == "crm"
        assert annotations["tokend.io/managed-by"] == "tokend"
        assert annotations["tokend.io/expires-on"] == str(int(first.expires_at.timestamp()))
        assert annotations["tokend.io/created"] == "true"
        assert {(e["manager"], e["operation"]) for e in secret["metadata"]["managedFields"]} == {
            ("tokend", "Apply")
        }
        await sink.publish(second)
        assert decoded(stored(kube, ns))["access_token"] == CANARY
        await sink_for(resources).publish(older)  # a fresh sink, as after a restart
        assert decoded(stored(kube, ns))["access_token"] == CANARY

    run(resources, scenario)


def test_only_chosen_fields_and_other_managers_keep_theirs(
    kube: KubeServer, tokend_account: Account, tmp_path: Path
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    extra = base64.b64encode(b"from another controller").decode()
    admin_apply(
        kube,
        ns,
        "other-controller",
        data={"ca.crt": extra},
        metadata={"name": SECRET, "labels": {"x": "y"}},
    )

    async def scenario() -> None:
        await sink_for(resources, fields=["access_token", "expires_on"]).publish(a_token())

    run(resources, scenario)
    secret = stored(kube, ns)
    assert set(decoded(secret)) == {"access_token", "expires_on", "ca.crt"}
    assert secret["metadata"]["labels"] == {"x": "y"}
    assert "tokend.io/created" not in secret["metadata"]["annotations"]  # it was there before


def test_a_conflict_with_another_manager_is_reported_until_forced(
    kube: KubeServer, tokend_account: Account, tmp_path: Path
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    theirs = base64.b64encode(b"theirs").decode()
    admin_apply(kube, ns, "other", data={"access_token": theirs})

    async def scenario() -> None:
        with pytest.raises(TokendError) as raised:
            await sink_for(resources).publish(a_token())
        error = raised.value
        assert error.code == "kube_conflict" and error.transient
        assert f"kubernetes secret {ns}/{SECRET}: conflict: " in str(error)
        assert 'conflict with "other"' in str(error)
        assert CANARY not in str(error) and tokend_account.token not in str(error)
        assert decoded(stored(kube, ns))["access_token"] == "theirs"
        await sink_for(resources, force=True).publish(a_token())

    run(resources, scenario)
    assert decoded(stored(kube, ns))["access_token"] == CANARY


def test_a_value_tokend_could_not_have_written_is_replaced_and_logged_once(
    kube: KubeServer, tokend_account: Account, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 30-day expiry where tokens live an hour: not one tokend wrote for this identity."""
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    caplog.set_level(logging.INFO, "tokend")

    async def scenario() -> None:
        await sink_for(resources).publish(
            a_token("far", expires_in=30 * 86400, lifetime=30 * 86400)
        )
        sink = sink_for(resources)
        await sink.publish(a_token("hourly-1"))
        assert decoded(stored(kube, ns))["access_token"] == "hourly-1"
        await sink.publish(a_token("hourly-2", expires_in=3700))

    run(resources, scenario)
    assert decoded(stored(kube, ns))["access_token"] == "hourly-2"
    warnings = [r.getMessage() for r in caplog.records if "did not write" in r.getMessage()]
    assert warnings == [
        f"sink kubernetes: kubernetes secret {ns}/{SECRET} holds a value tokend did not write (no tokend annotations, or an implausible expiry); replacing it"
    ]


def test_rbac_refusals_name_the_verb_and_the_secret(
    kube: KubeServer,
    namespace: str,
    tokend_account: Account,
    no_create_account: Account,
    tmp_path: Path,
) -> None:
    no_create = resources_for(kube, no_create_account, tmp_path)

    async def missing_create() -> TokendError:
        with pytest.raises(TokendError) as raised:
            await sink_for(no_create).publish(a_token())
        return raised.value

    error = run(no_create, missing_create)
    assert str(error) == (
        f"kubernetes secret {namespace}/{SECRET}: tokend's kubeconfig user "
        f"({tmp_path}/kubeconfig-no-create) cannot create secrets/{SECRET} in namespace {namespace} "
        "(its Role must allow this; a namespace that does not exist looks the same)"
    )
    assert (error.code, error.transient) == ("kube_forbidden", False)

    tokend_resources = resources_for(kube, tokend_account, tmp_path)

    async def outside_resource_names() -> list[str]:
        messages = []
        for options in ({"secret": "someone-elses"}, {"namespace": "default"}):
            with pytest.raises(TokendError) as raised:
                await sink_for(tokend_resources, **options).publish(a_token())
            messages.append(str(raised.value))
        return messages

    messages = run(tokend_resources, outside_resource_names)
    assert f"cannot get secrets/someone-elses in namespace {namespace} (" in messages[0]
    assert f"cannot get secrets/{SECRET} in namespace default (" in messages[1]
    for message in [*messages, str(error)]:
        assert CANARY not in message and tokend_account.token not in message
        assert "\n" not in message


def test_withdraw_removes_tokends_keys_only(
    kube: KubeServer, tokend_account: Account, tmp_path: Path
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace

    async def scenario() -> None:
        sink = sink_for(resources)
        await sink.publish(a_token())
        # The shipped Role has no `delete`: even a Secret tokend created keeps existing.
        await sink.withdraw()
        assert decoded(stored(kube, ns)) == {}
        await sink.publish(a_token(expires_in=3700))
        admin_apply(kube, ns, "other", data={"ca.crt": base64.b64encode(b"x").decode()})
        await sink.withdraw()

    run(resources, scenario)
    secret = stored(kube, ns)
    assert decoded(secret) == {"ca.crt": "x"}
    assert "tokend.io/expires-on" not in secret["metadata"]["annotations"]


def test_check_asks_the_api_server_and_names_missing_rules(
    kube: KubeServer, idp: FakeIdp, namespace: str, no_create_account: Account, tmp_path: Path
) -> None:
    kubeconfig = kube.write_kubeconfig(
        tmp_path / "kubeconfig", token=no_create_account.token, namespace=namespace
    )
    (tmp_path / "client-secret").write_text(CLIENT_SECRET)
    config = write_config(
        tmp_path / "config.yaml",
        {
            "identities": {"app": entra_identity(idp, {"file": str(tmp_path / "client-secret")})},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "kubernetes", "secret": SECRET}],
                }
            },
            "kubernetes": {"kubeconfig": str(kubeconfig)},
            "leader_election": {"name": "elsewhere"},
        },
    )
    result = tokend("check", "-c", str(config))
    assert result.returncode == 2, result.stderr
    who = f"tokend's kubeconfig user ({kubeconfig})"
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{config}: leader_election.name: lease {namespace}/elsewhere: {who} cannot get leases/elsewhere in namespace {namespace} (add it to the Role bound to it)",
        f"{config}: leader_election.name: lease {namespace}/elsewhere: {who} cannot update leases/elsewhere in namespace {namespace} (add it to the Role bound to it)",
        f"{config}: tokens.crm.sinks.0: kubernetes secret {namespace}/{SECRET}: {who} cannot create secrets/{SECRET} in namespace {namespace} (add it to the Role bound to it)",
    ]
    assert no_create_account.token not in result.stderr + result.stdout
