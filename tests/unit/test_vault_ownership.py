"""The Vault sink's decisions. `foreign()`: which stored tokens tokend could have written (and
so may defer to), as a table (`token_exp` is the stored access token's JWT `exp`; None: not a
JWT). Then the sink itself against a recording session instead of a Vault: which calls it makes
and when (the mount and the metadata once, a conflict retried three times), what it says (each
call's path and action, which error messages quote), when it defers to another writer's token,
when it withdraws, what `verify()` and `tokend check` conclude.

The KV operations themselves run against a real OpenBao in tests/vault/; this file pins what the
sink does around them, quickly enough to run for every mutant."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokend.sinks import SinkContext
from tokend.sinks.vault import VaultSink, VaultSinkOptions, render
from tokend.token import Token
from tokend.vault import VAULT, Problem, VaultError
from tokend.vault.kv import Current, digest, foreign

OURS = 1_800_000_000  # expires_on of the token tokend publishes
HOUR = 3600


@pytest.mark.parametrize(
    ("stored", "lifetime", "why"),
    [
        (Current(3, OURS + HOUR, None, True), HOUR, None),  # another tokend's later token
        (Current(3, OURS + 23 * HOUR, None, True), HOUR, None),  # within 24 h
        (Current(3, OURS + 25 * HOUR, None, True), HOUR, "more than 24 h after"),
        (Current(3, OURS + 40 * HOUR, None, True), 24 * HOUR, None),  # two lifetimes of 24 h
        (Current(3, OURS * 1000, None, True), HOUR, "more than 24 h after"),  # milliseconds
        (Current(3, OURS + HOUR, OURS + HOUR - 2, True), HOUR, None),  # exp ~ expires_on
        (Current(3, OURS + HOUR, OURS + HOUR + 299, True), HOUR, None),
        (Current(3, OURS + HOUR, OURS, True), HOUR, "does not match the exp"),
        (Current(3, OURS + HOUR, None, False), HOUR, "metadata does not say managed-by"),
        (Current(0, OURS + HOUR, None, None), HOUR, None),  # KV v1: no metadata to go by
        (Current(0, None, None, None), HOUR, None),  # nothing there
    ],
)
def test_foreign(stored: Current, lifetime: int, why: str | None) -> None:
    found = foreign(stored, OURS, lifetime)
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found


NOW = datetime(2027, 1, 1, tzinfo=UTC)
WHERE = "https://vault.test/v1/"
DATA = "secret/data/apps/crm"
METADATA = "secret/metadata/apps/crm"
MOUNT_LOOKUP = ("sys/internal/ui/mounts/secret/apps/crm", "look up the mount of this path")
READ = (DATA, "read this secret")
WRITE = (DATA, "write this secret")
WRITE_METADATA = (METADATA, "update this secret's metadata")
DELETE = (DATA, "delete this secret")


def a_token(expires_in: int = 3600, value: str = "token-value") -> Token:
    return Token(
        value=value,
        token_type="Bearer",
        expires_at=NOW + timedelta(seconds=expires_in),
        obtained_at=NOW,
    )


class FakeSession:
    """A `VaultSession` that records (path, action) of every call and keeps one secret."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.current = Current(0, None)
        self.mount: str | None = None
        self.capabilities: str | None = None
        self.failures: list[VaultError] = []
        """Raised by the next writes, first first."""
        self.metadata: list[tuple[str, dict[str, Any]]] = []

    def where(self, path: str) -> str:
        return f"{WHERE}{path}"

    async def run(self, operation: Callable[[Any], Any], *, path: str, action: str) -> Any:
        return self.call(operation, path=path, action=action)

    def call(self, operation: Callable[[Any], Any], *, path: str, action: str) -> Any:
        self.calls.append((path, action))
        if not isinstance(operation, functools.partial):  # the metadata write
            return operation(self)
        name = operation.func.__name__
        if name in ("mount_problem", "capability_problem"):  # about this sink's options
            assert [options.target() for options in operation.args] == ["vault secret/apps/crm"]
        if name == "mount_problem":
            return self.mount
        if name == "capability_problem":
            self.calls.append(("delete", str(operation.keywords["delete"])))
            return self.capabilities
        if name == "read_current":
            return self.current
        if name == "delete":
            self.current = Current(0, None)
            return None
        assert name == "write"
        if self.failures:
            raise self.failures.pop(0)
        secret = operation.args[1]
        version = self.current.version + 1
        digested = digest(secret["access_token"])
        self.current = Current(version, secret["expires_on"], None, True, digested)
        return version

    @property
    def adapter(self) -> FakeSession:
        return self

    def post(self, url: str, json: dict[str, Any]) -> None:
        self.metadata.append((url, json))


class FakeResources:
    def __init__(self, session: FakeSession) -> None:
        self.session = session

    def get(self, kind: Any) -> FakeSession:
        assert kind is VAULT
        return self.session


def a_sink(session: FakeSession, **options: Any) -> VaultSink:
    context = SinkContext("crm", "vault", FakeResources(session))  # type: ignore[arg-type]
    return VaultSink(_options(**options), context)


def _options(**options: Any) -> VaultSinkOptions:
    return VaultSinkOptions(type="vault", path="apps/crm", **options)


def test_a_vault_sink_needs_the_vault_block() -> None:
    with pytest.raises(ValueError, match=r"^a vault sink needs the vault: block$"):
        VaultSink(_options(), SinkContext("crm", "vault"))


def test_the_mount_and_the_metadata_are_written_once_then_only_the_secret() -> None:
    session = FakeSession()
    sink = a_sink(session)
    first, second = a_token(3600), a_token(7200)
    asyncio.run(sink.publish(first))
    assert session.calls == [MOUNT_LOOKUP, READ, WRITE_METADATA, WRITE]
    assert session.metadata == [
        (
            f"/v1/{METADATA}",
            {
                "max_versions": 5,
                "custom_metadata": {
                    "managed-by": "tokend",
                    "tokend-token": "crm",
                    "tokend-host": socket.gethostname(),
                },
            },
        )
    ]
    session.calls.clear()
    asyncio.run(sink.publish(second))
    assert session.calls == [READ, WRITE]
    assert session.current.version == 2


def test_metadata_is_written_at_the_first_write_and_when_it_does_not_name_tokend() -> None:
    session = FakeSession()
    session.current = Current(7, 1, None, True)  # left by an earlier run: max_versions may differ
    sink = a_sink(session)
    asyncio.run(sink.publish(a_token(3600)))
    assert WRITE_METADATA in session.calls
    for metadata, rewritten in ((None, False), (True, False), (False, True)):
        session.current = Current(session.current.version, 1, None, metadata)
        session.calls.clear()
        asyncio.run(sink.publish(a_token(3600)))
        assert (WRITE_METADATA in session.calls) is rewritten, metadata


def test_a_missing_mount_is_checked_again_only_after_a_missing_mount() -> None:
    session = FakeSession()
    session.mount = "no secrets engine is mounted at 'secret' (check the mount)"
    sink = a_sink(session)
    with pytest.raises(VaultError) as raised:
        asyncio.run(sink.publish(a_token()))
    assert str(raised.value) == f"{WHERE}{DATA}: {session.mount}"
    assert raised.value.problem is Problem.NO_MOUNT
    session.mount = None
    asyncio.run(sink.publish(a_token()))  # checked again: fine now
    assert session.calls.count(MOUNT_LOOKUP) == 2

    session.failures = [VaultError(WHERE, "unreachable", Problem.UNAVAILABLE)]
    with pytest.raises(VaultError):
        asyncio.run(sink.publish(a_token(7200)))
    asyncio.run(sink.publish(a_token(7200)))
    assert session.calls.count(MOUNT_LOOKUP) == 2  # an outage says nothing about the mount

    session.failures = [VaultError(WHERE, "gone", Problem.NO_MOUNT)]  # unmounted since
    with pytest.raises(VaultError):
        asyncio.run(sink.publish(a_token(9000)))
    asyncio.run(sink.publish(a_token(9000)))
    assert session.calls.count(MOUNT_LOOKUP) == 3


def test_three_conflicts_in_a_row_are_one_error_and_a_fourth_attempt_later() -> None:
    session = FakeSession()
    sink = a_sink(session)
    session.failures = [VaultError(WHERE, "check-and-set", Problem.CONFLICT)] * 3
    with pytest.raises(VaultError) as raised:
        asyncio.run(sink.publish(a_token()))
    assert str(raised.value) == (
        f"{WHERE}{DATA}: changed by other writers 3 times in a row; will try again"
    )
    assert raised.value.problem is Problem.CONFLICT
    assert session.calls.count(WRITE) == 3
    session.failures = [VaultError(WHERE, "check-and-set", Problem.CONFLICT)] * 2
    asyncio.run(sink.publish(a_token()))
    assert session.current.expires_on == int(a_token().expires_at.timestamp())


def test_a_later_token_another_tokend_wrote_is_left_and_said_once_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = FakeSession()
    sink = a_sink(session)
    ours = a_token(3600)
    later = int(ours.expires_at.timestamp()) + 60
    session.current = Current(4, later, None, True, digest("theirs"))
    with caplog.at_level(logging.DEBUG, "tokend.sinks.vault"):
        asyncio.run(sink.publish(ours))
    assert session.calls == [MOUNT_LOOKUP, READ]  # nothing written
    assert [(r.levelno, r.getMessage(), r.__dict__.get("token")) for r in caplog.records] == [
        (
            logging.INFO,
            "sink vault: vault secret/apps/crm already holds a token expiring no sooner;"
            " left as is",
            "crm",
        )
    ]
    assert asyncio.run(sink.verify(ours))  # what it found there is what it checks for
    session.current = Current(5, later, None, True, digest("theirs"))
    assert not asyncio.run(sink.verify(ours))


def test_the_same_expiry_is_left_too_and_said_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    session = FakeSession()
    sink = a_sink(session)
    ours = a_token(3600)
    session.current = Current(4, int(ours.expires_at.timestamp()), None, True, digest("x"))
    with caplog.at_level(logging.DEBUG, "tokend.sinks.vault"):
        asyncio.run(sink.publish(ours))
    assert WRITE not in session.calls
    assert [record.levelno for record in caplog.records] == [logging.DEBUG]


def test_a_later_token_tokend_cannot_have_written_is_replaced_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = FakeSession()
    sink = a_sink(session)
    ours = a_token(3600)
    later = int(ours.expires_at.timestamp()) + 60
    with caplog.at_level(logging.DEBUG, "tokend.sinks.vault"):
        for _ in range(2):
            session.current = Current(4, later, None, False)  # metadata not naming tokend
            asyncio.run(sink.publish(ours))
            assert session.current.expires_on == int(ours.expires_at.timestamp())
    assert [(r.levelno, r.getMessage(), r.__dict__.get("token")) for r in caplog.records] == [
        (
            logging.WARNING,
            "sink vault: vault secret/apps/crm holds a token tokend cannot have written (its"
            " metadata does not say managed-by: tokend); replacing it",
            "crm",
        )
    ]


def test_verify_is_true_only_for_the_token_last_given_and_still_there() -> None:
    session = FakeSession()
    sink = a_sink(session)
    token = a_token(3600)
    assert not asyncio.run(sink.verify(token))  # never published
    asyncio.run(sink.publish(token))
    assert asyncio.run(sink.verify(token))
    assert not asyncio.run(sink.verify(a_token(7200)))  # not the token it was given


def test_withdraw_deletes_only_the_token_this_sink_left() -> None:
    session = FakeSession()
    sink = a_sink(session)
    token = a_token(3600)
    ours = int(token.expires_at.timestamp())
    session.current = Current(3, ours, None, True)
    asyncio.run(sink.withdraw())  # never published here: not ours to delete
    assert DELETE not in session.calls
    asyncio.run(sink.publish(a_token(60)))  # a shorter one than what is stored: deferred
    session.current = Current(3, ours + 60, None, True)
    asyncio.run(sink.withdraw())  # a newer token from another writer
    assert DELETE not in session.calls
    session.current = Current(0, None)
    asyncio.run(sink.withdraw())  # nothing there
    assert DELETE not in session.calls
    asyncio.run(sink.publish(token))
    asyncio.run(sink.withdraw())
    assert session.calls[-2:] == [READ, DELETE]
    assert session.current == Current(0, None)
    assert not asyncio.run(sink.verify(token))


def test_check_asks_vault_about_the_mount_then_the_policy() -> None:
    session = FakeSession()
    context = SinkContext("crm", "vault", FakeResources(session))  # type: ignore[arg-type]
    assert _options().preflight_remote(SinkContext("crm", "vault")) == []
    assert _options().preflight_remote(context) == []
    assert session.calls == [
        MOUNT_LOOKUP,
        ("sys/capabilities-self", "look up its own capabilities"),
        ("delete", "False"),
    ]
    session.calls.clear()
    session.capabilities = "the policy lacks update"
    withdrawing = _options(on_expiry="withdraw")
    assert withdrawing.preflight_remote(context) == [
        "vault secret/apps/crm: the policy lacks update"
    ]
    assert ("delete", "True") in session.calls
    session.calls.clear()
    session.mount = "no secrets engine"
    assert _options().preflight_remote(context) == ["vault secret/apps/crm: no secrets engine"]
    assert session.calls == [MOUNT_LOOKUP]  # the policy is not looked at for a missing mount


def test_check_reports_a_vault_that_cannot_answer() -> None:
    class Unreachable(FakeSession):
        def call(self, operation: Callable[[Any], Any], *, path: str, action: str) -> Any:
            raise VaultError(self.where(path), "unreachable", Problem.UNAVAILABLE)

    context = SinkContext("crm", "vault", FakeResources(Unreachable()))  # type: ignore[arg-type]
    assert _options().preflight_remote(context) == [
        f"vault secret/apps/crm: {WHERE}{MOUNT_LOOKUP[0]}: unreachable"
    ]


def test_scopes_are_one_space_separated_field() -> None:
    token = Token("v", "Bearer", NOW, NOW, scopes=("read", "write"))
    assert render(token, ["scopes"]) == {"scopes": "read write"}
    assert render(Token("v", "Bearer", NOW, NOW), ["scopes"]) == {}
