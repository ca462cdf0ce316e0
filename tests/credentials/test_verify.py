"""The minted-token self-check (`verify:`): a new token is published only when its signature
verifies with the issuer's published keys and its claims are what was asked for."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.conftest import entra_identity
from tests.credentials.conftest import document, fake, run
from tests.support import idp as faults
from tests.support.certs import client_cert
from tests.support.harness import Harness
from tests.support.idp import CLIENT_ID, CLIENT_SECRET, TENANT, FakeIdp
from tests.support.servers import free_port

CRM = "https://crm.example"
KEYS = f"/{TENANT}/discovery/v2.0/keys"


def _config(idp: FakeIdp, tmp_path: Path, **spec: Any) -> dict[str, Any]:
    token = {"resource": CRM, "verify": True, **spec}
    token["sinks"] = [{"type": "file", "path": str(tmp_path / "crm")}]
    return document(entra_identity(idp, CLIENT_SECRET), {"crm": token})


def _minted(
    idp: FakeIdp, version: int = 1, key: Any = None, kid: str | None = None, **claims: Any
) -> faults.Fault:
    """A token response as the fake would send it, its JWT's claims changed by `claims`."""
    body = idp.provider.token_body(TENANT, CLIENT_ID, CRM, version)
    issued = jwt.decode(body["access_token"], options={"verify_signature": False})
    changed = {k: v for k, v in {**issued, **claims}.items() if v is not None}
    body["access_token"] = fake(idp).sign(changed, key=key, kid=kid)
    return faults.token_body(body)


def _keys_fetched(idp: FakeIdp) -> int:
    return sum(1 for request in idp.requests if request.path == KEYS)


@pytest.mark.parametrize(
    ("version", "spec"), [(1, {}), (2, {"resource": None, "scopes": [f"{CRM}/.default"]})]
)
def test_a_good_token_is_checked_and_published(
    entra: FakeIdp, tmp_path: Path, version: int, spec: dict[str, Any]
) -> None:
    async def scenario(h: Harness) -> None:
        for _ in range(3):
            assert await h.refresh_all(), h.job("crm").last_error
            h.clock.advance(timedelta(minutes=50))

    run(entra, _config(entra, tmp_path, **spec), scenario)
    issuer = jwt.decode((tmp_path / "crm").read_text(), options={"verify_signature": False})["iss"]
    assert issuer == (f"{entra.url}/{TENANT}/" if version == 1 else f"{entra.url}/{TENANT}/v2.0")
    assert _keys_fetched(entra) == 1  # the key set is cached


@pytest.mark.parametrize(
    ("claims", "code", "says"),
    [
        ({"aud": "https://other.example"}, "verify_aud", "aud 'https://other.example' is not"),
        ({"iss": "https://evil.example/"}, "verify_iss", "iss 'https://evil.example/' is not"),
        ({"tid": "other-tenant"}, "verify_tid", "tid 'other-tenant' is not 'test-tenant'"),
        ({"exp": 1_700_000_000}, "verify_exp", "exp 1700000000 is not in the future"),
        ({"nbf": 1_900_000_000}, "verify_nbf", "nbf 2030-03-17T17:46:40Z is in the future"),
        ({"kid": "rotated-away"}, "verify_signature", "signed by key 'rotated-away', which"),
        ({"key": "rogue"}, "verify_signature", "does not verify with the issuer's key"),
    ],
)
def test_a_bad_token_is_not_published(
    entra: FakeIdp, tmp_path: Path, claims: dict[str, Any], code: str, says: str
) -> None:
    options = {"kid": claims.pop("kid", None)}
    if claims.pop("key", None):
        options["key"] = client_cert(key_index=3).key

    async def scenario(h: Harness) -> None:
        assert await h.refresh_all()
        good = (tmp_path / "crm").read_text()
        h.clock.advance(timedelta(minutes=2))  # an unknown kid may fetch the key set again
        entra.fail(_minted(entra, **options, **claims))
        assert not await h.refresh_all()
        error = h.job("crm").last_error
        assert error is not None and not error.transient and error.code == code
        assert says in str(error) and "not published" in str(error)
        assert (tmp_path / "crm").read_text() == good  # the last good token stays
        assert h.job("crm").token is not None and h.job("crm").token.value == good

    run(entra, _config(entra, tmp_path), scenario)


def test_an_unknown_key_refetches_the_set_at_most_once_a_minute(
    entra: FakeIdp, tmp_path: Path
) -> None:
    async def scenario(h: Harness) -> list[tuple[int, str]]:
        seen = []
        assert await h.refresh_all()
        for step in (timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=31)):
            h.clock.advance(step)
            entra.fail(_minted(entra, kid="new-key"))
            assert not await h.refresh_all()
            error = h.job("crm").last_error
            assert error is not None
            seen.append((_keys_fetched(entra), f"{error.code} {error.kind} {error.retry_after}"))
        return seen

    # fetched at 0 s; a new kid at 10 s and 30 s: try again when a refetch is allowed (60 s);
    # at 61 s: fetched again, and the key is not there: permanent
    assert run(entra, _config(entra, tmp_path), scenario) == [
        (1, "verify_unavailable transient 50.0"),
        (1, "verify_unavailable transient 30.0"),
        (2, "verify_signature permanent None"),
    ]


def test_an_opaque_token_cannot_be_checked(entra: FakeIdp, tmp_path: Path) -> None:
    entra.fail(faults.token_body({"access_token": "opaque-value", "expires_in": 3600}))

    async def scenario(h: Harness) -> None:
        assert not await h.refresh_all()
        error = h.job("crm").last_error
        assert error is not None and error.code == "verify_not_jwt" and not error.transient

    run(entra, _config(entra, tmp_path), scenario)
    assert not (tmp_path / "crm").exists()


@pytest.mark.parametrize("where", ["a 404", "nothing listening"])
def test_keys_that_cannot_be_fetched_are_not_trusted(
    entra: FakeIdp, tmp_path: Path, where: str
) -> None:
    """A 404 says the configured jwks_uri is wrong (permanent); no answer may pass."""
    jwks_uri = f"{entra.url}/nowhere" if where == "a 404" else f"http://127.0.0.1:{free_port()}/k"
    config = _config(entra, tmp_path)
    config["tokens"]["crm"]["verify"] = {"jwks_uri": jwks_uri, "issuer": f"{entra.url}/{TENANT}/"}

    async def scenario(h: Harness) -> None:
        assert not await h.refresh_all()
        error = h.job("crm").last_error
        assert error is not None and error.code == "verify_unavailable"
        assert error.transient == (where == "nothing listening")

    run(entra, config, scenario)
    assert not (tmp_path / "crm").exists()
