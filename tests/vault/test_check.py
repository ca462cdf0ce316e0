"""What `tokend check` (and the log) says about a Vault set-up that cannot work: each message names
what is wrong and where to fix it, once. Against a real OpenBao."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tests.support.openbao import Bao, dev_server
from tests.support.vault import H, config_document, config_for, run, stored, writer_policy
from tokend.check import preflight
from tokend.config import Config
from tokend.configfile import LoadedConfig

SOURCE = Path("config.yaml")


def check(document: dict[str, Any]) -> list[str]:
    return preflight(LoadedConfig(Config.model_validate(document), SOURCE, []))


def test_a_missing_mount_is_named_with_the_mounts_the_token_can_see(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    """The policy is written for `secret`, the sink says `sekret`: Vault answers 'permission
    denied' for both a missing mount and a hidden one; tokend says which mounts it can see."""
    auth = role(bao, tmp_path, writer_policy(bao, kvpath))
    sinks = [{"type": "vault", "path": kvpath, "mount": "sekret"}]
    document = config_document(idp, bao, sinks, auth)
    expected = (
        f"vault sekret/{kvpath}: tokend's token can see no secrets engine at 'sekret' (KV mounts "
        f"it can see: secret): check the mount, or the policy if it should allow "
        f"sekret/data/{kvpath}"
    )
    assert check(document) == [f"{SOURCE}: tokens.crm.sinks.0: {expected}"]

    async def scenario(h: Harness) -> None:  # and the same when running
        await h.start()
        await h.run_for(timedelta(0))
        assert str(h.slot("vault").last_error) == (
            f"{bao.url}/v1/sekret/data/{kvpath}: {expected.split(': ', 1)[1]}"
        )

    run(Config.model_validate(document), scenario)


def test_a_vault_reference_without_data_gets_the_kv2_path(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    app = uuid.uuid4().hex[:8]
    bao.client().secrets.kv.v2.create_or_update_secret(f"apps/{app}", {"client_secret": "s3"})
    reader = f"reader-{app}"
    bao.client().sys.create_or_update_policy(
        reader, f'path "secret/data/apps/{app}" {{ capabilities = ["read"] }}'
    )
    auth = role(bao, tmp_path, reader)
    hint = f"secret is KV version 2: write {{vault: secret/data/apps/{app}#client_secret}}"
    answers = {"permission denied, and ": auth, "": {"method": "token", "token": bao.root_token}}
    for vault_said, given in answers.items():
        document = config_document(
            idp, bao, [{"type": "file", "path": str(tmp_path / "t")}], given,
            secret={"vault": f"secret/apps/{app}#client_secret"},
        )  # fmt: skip
        assert check(document) == [
            f"{SOURCE}: identities.app.credential.secret: {bao.url}/v1/secret/apps/{app}: "
            f"{vault_said}{hint}"
        ]


def test_plain_http_to_an_https_port_says_so(tmp_path: Path) -> None:
    with dev_server(tmp_path, tls=True) as bao:
        address = bao.url.replace("https://", "http://")
        (tmp_path / "secret_id").write_text("x")
        document = {
            "identities": {"app": {"token_endpoint": "https://idp.example/token",
                                   "client_id": "c", "credential": {"type": "client_secret",
                                                                    "secret": "s3cret"}}},
            "tokens": {"crm": {"identity": "app", "sinks": [{"type": "vault", "path": "crm"}]}},
            "vault": {"address": address, "allow_insecure_http": True,
                      "auth": {"method": "approle", "role_id": "r",
                               "secret_id": {"file": str(tmp_path / "secret_id")}}},
        }  # fmt: skip
        assert check(document) == [
            f"{SOURCE}: vault.auth: {address}/v1/auth/approle/login: this address speaks HTTPS: "
            "write vault.address with https://"
        ]


def test_a_wrong_auth_mount_is_named(idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str) -> None:
    auth = role(bao, tmp_path, writer_policy(bao, kvpath)) | {"mount": "app-role"}
    document = config_document(idp, bao, [{"type": "vault", "path": kvpath}], auth)
    assert check(document) == [
        f"{SOURCE}: vault.auth: {bao.url}/v1/auth/app-role/login: no AppRole auth method answers "
        "at auth/app-role (Vault says permission denied): check vault.auth.mount"
    ]


def test_a_missing_secret_id_file_is_reported_once(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    auth = role(bao, tmp_path, writer_policy(bao, kvpath))
    (tmp_path / "secret_id").unlink()
    document = config_document(idp, bao, [{"type": "vault", "path": kvpath}], auth)
    assert check(document) == [
        f"{SOURCE}: vault.auth.secret_id: secret file {tmp_path / 'secret_id'} does not exist"
    ]


def role(bao: Bao, directory: Path, *policies: str, **options: Any) -> dict[str, Any]:
    """An AppRole with these policies, its IDs in files in `directory`."""
    name = f"tokend-{uuid.uuid4().hex[:8]}"
    root = bao.client()
    root.auth.approle.create_or_update_approle(name, token_policies=list(policies), **options)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "role_id").write_text(root.auth.approle.read_role_id(name)["data"]["role_id"])
    secret_id = root.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    (directory / "secret_id").write_text(secret_id)
    return {
        "method": "approle",
        "role_id": {"file": str(directory / "role_id")},
        "secret_id": {"file": str(directory / "secret_id")},
    }


LEAST_POLICY = """
path "auth/token/lookup-self"  { capabilities = ["read"] }
path "auth/token/renew-self"   { capabilities = ["update"] }
path "auth/token/revoke-self"  { capabilities = ["update"] }
path "sys/capabilities-self"   { capabilities = ["update"] }
"""


def test_without_the_default_policy_check_names_the_missing_rules_and_run_says_it_once(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`token_no_default_policy`: renewing is denied, so tokend would log in again at every
    renewal without a word. `check` names each rule; `run` says it once and carries on. With
    the README's least policy added, `check` is content."""
    writer = writer_policy(bao, kvpath)
    sinks = [{"type": "vault", "path": kvpath}]
    bare = role(bao, tmp_path / "bare", writer, token_no_default_policy=True, token_ttl="30m")
    assert check(config_document(idp, bao, sinks, bare)) == [
        f"{SOURCE}: vault.auth: tokend's Vault policy lacks read on auth/token/lookup-self (to "
        "tell a revoked token from a refused request); update on auth/token/renew-self (else it "
        "logs in again at every renewal instead of renewing); update on sys/capabilities-self "
        "(for tokend check to see what each sink may do): add the rules from the README, or "
        "attach Vault's default policy"
    ]
    least = f"least-{uuid.uuid4().hex[:8]}"
    bao.client().sys.create_or_update_policy(least, LEAST_POLICY)
    complete = role(bao, tmp_path / "least", writer, least, token_no_default_policy=True)
    assert check(config_document(idp, bao, sinks, complete)) == []

    caplog.set_level(logging.INFO, logger="tokend")

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(3 * H)  # renewals every 20 min: each one denied
        assert stored(bao, kvpath)["access_token"] == h.job().token.value
        assert h.slot("vault").failures == 0

    run(config_for(idp, bao, sinks, auth=bare), scenario)
    said = [r for r in caplog.records if "does not allow it to renew its token" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert sum("vault: logged in" in r.getMessage() for r in caplog.records) >= 8
