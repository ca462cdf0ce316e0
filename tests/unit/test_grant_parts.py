"""What every grant shares (the plain exchange, what a credential allows by default) and how a
failed HTTP exchange is put into one line: each checked for its exact value."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpx2
import pytest

from tokend.oauth.dialects import Target
from tokend.oauth.errors import Peer, PermanentError
from tokend.oauth.grants.base import CredentialState, credential_state, exchange_of
from tokend.oauth.grants.certificate import CertificateOptions
from tokend.oauth.grants.client_secret import ClientSecretOptions
from tokend.oauth.http import ExchangeFailed, _transport_reason

V2_RULE = (
    "app-only tokens from Entra ID v2 take exactly one scope ending in /.default, "
    "e.g. https://graph.microsoft.com/.default"
)


@pytest.mark.parametrize(
    ("scopes", "problem"),
    [
        (("https://graph.microsoft.com/.default",), None),
        (("api://crm/.default",), None),
        (("https://graph.microsoft.com/User.Read",), V2_RULE),
        (("a/.default", "b/.default"), V2_RULE),
        ((), V2_RULE),
        (("/.default/x",), V2_RULE),
    ],
)
def test_app_only_v2_scopes(scopes: tuple[str, ...], problem: str | None) -> None:
    options = ClientSecretOptions.model_validate({"type": "client_secret", "secret": "s"})
    assert options.entra_scopes_problem(scopes) == problem


def test_app_only_credentials_keep_no_refresh_tokens() -> None:
    secret = ClientSecretOptions.model_validate({"type": "client_secret", "secret": "s"})
    assert secret.keeps_refresh_tokens() is False
    assert secret.target_problem("https://r", ()) is None
    assert secret.preflight() == []
    assert secret.identity_defaults({"from_environment": True}, {}, {"AZURE_CLIENT_ID": "x"}) == {}
    pem = {"type": "certificate", "certificate": {"file": "/nonexistent/cert.pem"}}
    assert CertificateOptions.model_validate(pem).keeps_refresh_tokens() is False


class _Bare:
    """A grant that keeps nothing and reports no credential state."""


class _Keeping:
    def __init__(self) -> None:
        self.exchanges = 0
        self.state = CredentialState("app", None)

    def exchange(self) -> str:
        self.exchanges += 1
        return "its own exchange"

    def credential_state(self) -> CredentialState:
        return self.state


def test_a_grant_without_an_exchange_gets_the_plain_one() -> None:
    plain = exchange_of(_Bare())  # type: ignore[arg-type]
    error = PermanentError(Peer("crm", "idp.example"), "refused", code="invalid_client")
    assert plain.failed(error) is error

    async def inside() -> Any:
        async with plain as entered:
            return entered

    assert asyncio.run(inside()) is plain
    not_callable = _Bare()
    not_callable.exchange = "not a method"  # type: ignore[attr-defined]
    assert exchange_of(not_callable) is plain  # type: ignore[arg-type]


def test_a_grant_with_an_exchange_and_a_credential_state() -> None:
    grant = _Keeping()
    assert exchange_of(grant) == "its own exchange"  # type: ignore[arg-type,comparison-overlap]
    assert grant.exchanges == 1
    assert credential_state(grant) is grant.state  # type: ignore[arg-type]
    assert credential_state(_Bare()) is None  # type: ignore[arg-type]
    not_callable = _Bare()
    not_callable.credential_state = CredentialState("x", None)  # type: ignore[attr-defined]
    assert credential_state(not_callable) is None  # type: ignore[arg-type]


def test_exchange_failed_keeps_reason_and_code() -> None:
    failed = ExchangeFailed("timed out: no complete answer within 5s", "timeout")
    assert (failed.reason, failed.code, str(failed)) == (
        "timed out: no complete answer within 5s",
        "timeout",
        "timed out: no complete answer within 5s",
    )


def _wrapped(inner: BaseException, depth: int, *, by_cause: bool = True) -> httpx2.ConnectError:
    """`inner` behind `depth` layers of exceptions, as httpx2 and httpcore2 wrap it."""
    error: BaseException = inner
    for layer in range(depth):
        outer = OSError(f"layer {layer}")
        if by_cause:
            outer.__cause__ = error
        else:
            outer.__context__ = error
        error = outer
    top = httpx2.ConnectError("connect failed")
    top.__cause__ = error
    return top


def _refusal(message: str | None) -> ssl.SSLCertVerificationError:
    refusal = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")
    refusal.verify_message = message  # type: ignore[attr-defined]
    return refusal


TLS = (
    "TLS: the server's certificate is not trusted ({}); if a private CA signed it, set "
    "ca_bundle (the identity's or http.ca_bundle) to that CA's certificate"
)


@pytest.mark.parametrize("by_cause", [True, False])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_a_certificate_refusal_is_found_behind_the_wrapping(depth: int, by_cause: bool) -> None:
    error = _wrapped(_refusal("self-signed certificate"), depth, by_cause=by_cause)
    assert _transport_reason(error) == TLS.format("self-signed certificate")


def test_a_refusal_without_a_message_and_one_too_deep() -> None:
    assert _transport_reason(_wrapped(_refusal(None), 0)) == TLS.format("certificate verify failed")
    too_deep = _wrapped(_refusal("x"), 4)  # past the five links looked at
    assert _transport_reason(too_deep) == "ConnectError: connect failed"


def test_other_transport_errors_name_their_class() -> None:
    assert _transport_reason(httpx2.ReadError("peer closed")) == "ReadError: peer closed"
    assert _transport_reason(httpx2.ConnectError("")) == "ConnectError: the connection failed"


def test_a_target_names_itself_in_the_form() -> None:
    assert Target(resource="https://crm.example").fields() == {"resource": "https://crm.example"}
    both = Target(resource="https://r", scopes=("openid", "api://crm/read"))
    assert both.fields() == {"resource": "https://r", "scope": "openid api://crm/read"}
    assert Target().fields() == {}
