"""The Kubernetes Secret sink's finer decisions against the real API server: `tokend check`'s
access review run in-process, what is logged when a token is left as is or a foreign value
replaced, retries when another writer changes the Secret between read and apply, and what a
withdrawal deletes when the Role allows `delete`."""

from __future__ import annotations

import copy
import dataclasses
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.conftest import CENTRAL, Account, bind_account
from tests.kube.test_secret_sink import (
    CANARY,
    SECRET,
    a_token,
    admin_apply,
    decoded,
    resources_for,
    run,
    sink_for,
    stored,
)
from tests.support.kube import KubeServer, require_kube
from tests.support.kube_api import load_manifests
from tokend.kube import KUBERNETES, KubeError, KubernetesOptions
from tokend.resources import Resources
from tokend.sinks import SinkContext
from tokend.sinks import kubernetes as sink_module
from tokend.sinks.kubernetes import KubernetesSink, KubernetesSinkOptions

require_kube()


def _options(**options: Any) -> KubernetesSinkOptions:
    return KubernetesSinkOptions(type="kubernetes", secret=options.pop("secret", SECRET), **options)


def test_check_reviews_each_verb_in_process(
    kube: KubeServer, tokend_account: Account, no_create_account: Account, tmp_path: Path
) -> None:
    ns = tokend_account.namespace
    full = resources_for(kube, tokend_account, tmp_path)
    no_create = resources_for(kube, no_create_account, tmp_path)
    who_full = f"tokend's kubeconfig user ({tmp_path}/kubeconfig-tokend)"
    who = f"tokend's kubeconfig user ({tmp_path}/kubeconfig-no-create)"
    try:
        assert _options().preflight_remote(SinkContext("crm", "kubernetes", full)) == []
        assert _options().preflight_remote(SinkContext("crm", "kubernetes", no_create)) == [
            f"kubernetes secret {ns}/{SECRET}: {who} cannot create secrets/{SECRET} in namespace"
            f" {ns} (add it to the Role bound to it)"
        ]
        elsewhere = _options(namespace="default", secret="other")
        assert elsewhere.preflight_remote(SinkContext("crm", "kubernetes", full)) == [
            f"kubernetes secret default/other: {who_full} cannot {verb} secrets/other in"
            " namespace default (add it to the Role bound to it)"
            for verb in ("get", "patch", "create")
        ]
        assert _options().preflight_remote(SinkContext("crm", "kubernetes")) == []
    finally:
        full.close_sync()
        no_create.close_sync()


def test_a_sink_needs_the_shared_resources() -> None:
    with pytest.raises(ValueError, match=r"^a kubernetes sink needs the shared resources$"):
        KubernetesSink(_options(), SinkContext("crm", "kubernetes"))


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[tuple[str, str]]:
    return [(r.getMessage(), getattr(r, "token", "")) for r in caplog.records if r.levelno == level]


def test_a_token_left_as_is_is_logged_and_held(
    kube: KubeServer, tokend_account: Account, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    newer, same_expiry, older = a_token("newer", expires_in=4000), a_token("same"), a_token("old")
    caplog.set_level(logging.DEBUG, "tokend.sinks.kubernetes")
    line = f"sink kubernetes: kubernetes secret {ns}/{SECRET} already holds a token expiring no sooner; left as is"

    async def scenario() -> None:
        await sink_for(resources).publish(a_token("first"))
        sink = sink_for(resources)
        await sink.publish(same_expiry)  # the same expiry: nothing to gain
        assert decoded(stored(kube, ns))["access_token"] == "first"
        assert _messages(caplog, logging.DEBUG) == [(line, "crm")]
        await sink_for(resources).publish(newer)
        await sink.publish(older)
        assert _messages(caplog, logging.INFO) == [(line, "crm")]
        await sink.withdraw()  # it holds the older one: the newer token stays
        assert decoded(stored(kube, ns))["access_token"] == "newer"

    run(resources, scenario)


def test_withdraw_keeps_a_newer_token_another_writer_put_there(
    kube: KubeServer, tokend_account: Account, tmp_path: Path
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace

    async def scenario() -> None:
        mine = sink_for(resources)
        await mine.withdraw()  # nothing there yet: nothing to do, no error
        await mine.publish(a_token("mine"))
        await sink_for(resources).publish(a_token("theirs", expires_in=4000))  # another replica
        await mine.withdraw()
        assert decoded(stored(kube, ns))["access_token"] == "theirs"

    run(resources, scenario)


def test_the_writer_and_every_annotation(
    kube: KubeServer,
    tokend_account: Account,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    token = dataclasses.replace(a_token(), scopes=("api://crm/read", "api://crm/write"))

    async def scenario() -> None:
        monkeypatch.setenv("POD_NAME", "tokend-7f9c")
        await sink_for(resources, secret_type="tokend.io/token").publish(token)
        secret = stored(kube, ns)
        assert secret["type"] == "tokend.io/token"
        annotations = secret["metadata"]["annotations"]
        assert annotations["tokend.io/writer"] == "tokend-7f9c"
        expires_at = token.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert annotations["tokend.io/expires-at"] == expires_at
        assert decoded(secret)["scopes"] == "api://crm/read api://crm/write"
        monkeypatch.delenv("POD_NAME")
        later = a_token(expires_in=3700)
        await sink_for(resources, secret_type="tokend.io/token").publish(later)
        on_a_host = stored(kube, ns)["metadata"]["annotations"]
        assert on_a_host["tokend.io/writer"] == socket.gethostname()

    run(resources, scenario)


def test_a_foreign_value_is_logged_once_per_sink(
    kube: KubeServer, tokend_account: Account, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    caplog.set_level(logging.WARNING, "tokend.sinks.kubernetes")
    foreign = {"access_token": "Zm9yZWlnbg=="}  # "foreign", no tokend annotations

    async def scenario() -> None:
        sink = sink_for(resources, force=True)  # takes the key over from "someone"
        for expires_in in (3600, 3700):
            kube.admin().delete(f"/api/v1/namespaces/{ns}/secrets/{SECRET}")
            admin_apply(kube, ns, "someone", data=foreign)
            await sink.publish(a_token(expires_in=expires_in))
            assert decoded(stored(kube, ns))["access_token"] == CANARY

    run(resources, scenario)
    assert _messages(caplog, logging.WARNING) == [
        (
            f"sink kubernetes: kubernetes secret {ns}/{SECRET} holds a value tokend did not write"
            " (no tokend annotations, or an implausible expiry); replacing it",
            "crm",
        )
    ]


def test_a_secret_changed_between_read_and_apply_is_read_again(
    kube: KubeServer, tokend_account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    reads: list[str | None] = []
    real_read = sink_module.secrets.read

    async def read_then_someone_writes(*args: Any) -> Any:
        found = await real_read(*args)
        reads.append(found.resource_version if found else None)
        if len(reads) == 1:  # after tokend read it, another controller labels the Secret
            admin_apply(kube, ns, "labeller", metadata={"name": SECRET, "labels": {"n": "1"}})
        return found

    async def scenario() -> None:
        await sink_for(resources).publish(a_token("first"))
        monkeypatch.setattr(sink_module.secrets, "read", read_then_someone_writes)
        await sink_for(resources).publish(a_token("second", expires_in=3700))

    run(resources, scenario)
    assert len(reads) == 2  # the apply refused as "modified" once, then read again
    assert reads[0] != reads[1]
    assert decoded(stored(kube, ns))["access_token"] == "second"


def test_three_conflicts_in_a_row_are_a_transient_failure(
    kube: KubeServer, tokend_account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    applied: list[str] = []

    async def always_modified(client: Any, manifest: dict[str, Any], **kwargs: Any) -> None:
        applied.append(manifest["metadata"]["name"])
        raise KubeError(
            f"kubernetes secret {ns}/{SECRET}: conflict: the object has been modified; please"
            " apply your changes to the latest version and try again",
            code="kube_conflict",
            transient=True,
        )

    async def scenario() -> KubeError:
        await sink_for(resources).publish(a_token("first"))
        monkeypatch.setattr(sink_module.secrets, "apply", always_modified)
        with pytest.raises(KubeError) as raised:
            await sink_for(resources).publish(a_token("second", expires_in=3700))
        kube.admin().delete(f"/api/v1/namespaces/{ns}/secrets/{SECRET}")
        with pytest.raises(KubeError, match="has been modified"):  # creating: not retried
            await sink_for(resources).publish(a_token())
        return raised.value

    error = run(resources, scenario)
    assert str(error) == (
        f"kubernetes secret {ns}/{SECRET}: changed by other writers 3 times in a row; will try"
        " again"
    )
    assert (error.code, error.transient) == ("kube_conflict", True)
    assert applied == [SECRET] * 4


def _role(namespace: str, name: str, verbs: list[str]) -> list[dict[str, Any]]:
    """The shipped Role with these verbs on secrets, and a service account `name` bound to it."""
    (role,) = load_manifests(CENTRAL / "role.yaml")
    role = copy.deepcopy(role)
    role["metadata"]["name"] = name
    for rule in role["rules"]:
        if rule["resources"] == ["secrets"]:
            rule["verbs"] = verbs
    binding = yaml.safe_load((CENTRAL / "rolebinding.yaml").read_text())
    binding["metadata"]["name"] = name
    binding["roleRef"]["name"] = name
    binding["subjects"] = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
    return [account, role, binding]


def _role_with_delete(namespace: str) -> list[dict[str, Any]]:
    return _role(namespace, "may-delete", ["get", "create", "patch", "delete"])


def test_withdraw_deletes_only_a_secret_tokend_created_and_alone_manages(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    account = bind_account(kube, namespace, "may-delete", _role_with_delete(namespace))
    resources = resources_for(kube, account, tmp_path)

    async def scenario() -> None:
        alone = sink_for(resources)
        await alone.publish(a_token())
        await alone.withdraw()
        assert kube.get("v1", "Secret", SECRET, namespace) is None
        shared = sink_for(resources)
        await shared.publish(a_token())
        admin_apply(kube, namespace, "other", data={"ca.crt": "eA=="})
        await shared.withdraw()
        assert decoded(stored(kube, namespace)) == {"ca.crt": "x"}

    run(resources, scenario)
    account.client.close()


def test_withdrawing_from_a_secret_another_controller_created(
    kube: KubeServer, tokend_account: Account, tmp_path: Path
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    ns = tokend_account.namespace
    admin_apply(kube, ns, "other-controller", data={"ca.crt": "eA=="})

    async def scenario() -> None:
        sink = sink_for(resources)
        await sink.publish(a_token())
        await sink.withdraw()

    run(resources, scenario)
    secret = stored(kube, ns)
    assert decoded(secret) == {"ca.crt": "x"}
    assert "tokend.io/created" not in secret["metadata"]["annotations"]


def test_a_withdrawal_tokend_may_not_make_says_which_verb(
    kube: KubeServer, namespace: str, tokend_account: Account, tmp_path: Path
) -> None:
    resources = resources_for(kube, tokend_account, tmp_path)
    reader = bind_account(kube, namespace, "reader", _role(namespace, "reader", ["get"]))
    read_only = resources_for(kube, reader, tmp_path)

    async def publish() -> None:
        await sink_for(resources).publish(a_token())

    async def withdraw(where: Any, **options: Any) -> KubeError:
        with pytest.raises(KubeError) as raised:
            await sink_for(where, **options).withdraw()
        return raised.value

    run(resources, publish)
    refused = run(read_only, lambda: withdraw(read_only))
    assert f"cannot patch secrets/{SECRET} in namespace {namespace}" in str(refused)
    resources = resources_for(kube, tokend_account, tmp_path)
    outside = run(resources, lambda: withdraw(resources, namespace="default"))
    assert f"cannot get secrets/{SECRET} in namespace default" in str(outside)
    assert outside.code == refused.code == "kube_forbidden"
    reader.client.close()


def test_a_fresh_sink_withdraws_what_is_there(
    kube: KubeServer, tokend_account: Account, tmp_path: Path
) -> None:
    """After a restart nothing is held: the token there is tokend's own, and it goes."""
    resources = resources_for(kube, tokend_account, tmp_path)

    async def scenario() -> None:
        await sink_for(resources).publish(a_token())
        await sink_for(resources).withdraw()

    run(resources, scenario)
    assert decoded(stored(kube, tokend_account.namespace)) == {}


def test_check_with_a_kubeconfig_that_cannot_be_read(tmp_path: Path) -> None:
    resources = Resources({"kubernetes": KubernetesOptions(kubeconfig=tmp_path / "missing")})
    try:
        with pytest.raises(KubeError) as caught:
            resources.get(KUBERNETES).namespace  # noqa: B018 - reading it raises
        context = SinkContext("crm", "kubernetes", resources)
        assert _options().preflight_remote(context) == [str(caught.value)]
    finally:
        resources.close_sync()
