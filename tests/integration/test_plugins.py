"""Adding a sink type, a credential type or a shared resource is one module: each kind below is
defined and registered here, in the test, and nothing else in tokend changes. The config schema,
its error messages, the composition root and the engine take them up from the registries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict
from pydantic import dataclasses as pydantic_dataclasses

from tests.conftest import entra_identity
from tests.support.harness import Harness
from tests.support.idp import CLIENT_ID, CLIENT_SECRET, FakeIdp
from tokend.config import validate_config
from tokend.configfile import parse_config
from tokend.errors import ConfigError
from tokend.oauth import CREDENTIALS, CredentialOptions, CredentialType, GrantContext, HttpRequest
from tokend.oauth.dialects import Target
from tokend.resources import RESOURCES, Environment, ResourceKind
from tokend.sinks import SINKS, SinkContext, SinkOptionsBase, SinkType
from tokend.token import Token

# --- a test-only shared resource: an in-memory store that sinks write into ------------------------


class StoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str


class Store:
    """A shared client: one per distinct settings, closed when nothing uses it."""

    instances: ClassVar[list[Store]] = []

    def __init__(self, options: StoreOptions, environment: Environment) -> None:
        self.label = options.label
        self.values: dict[str, str] = {}
        self.closed = False
        Store.instances.append(self)

    async def close(self) -> None:
        self.closed = True

    def close_sync(self) -> None:
        self.closed = True


STORE = ResourceKind(section="store", options=StoreOptions, create=Store, summary="label")


# --- a test-only sink type that writes into the store -------------------------------------------


@pydantic_dataclasses.dataclass(
    config=ConfigDict(extra="forbid"), frozen=True, slots=True, kw_only=True
)
class StoreSinkOptions(SinkOptionsBase):
    needs: ClassVar[tuple[str, ...]] = ("store",)
    type: Literal["store"]
    key: str

    def target(self) -> str:
        return f"store {self.key}"


class StoreSink:
    def __init__(self, options: StoreSinkOptions, context: SinkContext) -> None:
        assert context.resources is not None
        self.name = context.sink_name
        self._key = options.key
        self.store = context.resources.get(STORE)

    async def publish(self, token: Token) -> None:
        self.store.values[self._key] = token.value

    async def withdraw(self) -> None:
        self.store.values.pop(self._key, None)

    async def close(self) -> None:
        return None


# --- a test-only credential type: the client secret as HTTP Basic, from a plain value ------------


class PinnedOptions(CredentialOptions):
    type: Literal["pinned"]
    value: str


@dataclass
class PinnedGrant:
    options: PinnedOptions
    context: GrantContext

    @property
    def endpoint(self) -> Any:
        return self.context.endpoint

    @property
    def client_id(self) -> str:
        return self.context.client_id

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        form = {"grant_type": "client_credentials", "client_id": self.client_id}
        form |= {"client_secret": self.options.value} | target.fields()
        return HttpRequest("POST", token_url, form=form)

    def absorb(self, body: Mapping[str, Any]) -> None:
        self.absorbed = dict(body)

    async def source_version(self) -> str:
        return self.options.value


@pytest.fixture
def kinds() -> Iterator[None]:
    RESOURCES.register("store", STORE)
    SINKS.register("store", SinkType(StoreSinkOptions, StoreSink))
    CREDENTIALS.register("pinned", CredentialType(PinnedOptions, PinnedGrant))
    Store.instances.clear()
    yield
    CREDENTIALS.unregister("pinned")
    SINKS.unregister("store")
    RESOURCES.unregister("store")


def _document(idp: FakeIdp, **extra: Any) -> dict[str, Any]:
    identity = entra_identity(idp, CLIENT_SECRET)
    identity["credential"] = {"type": "pinned", "value": CLIENT_SECRET}
    return {
        "identities": {"app": identity},
        "tokens": {
            name: {
                "identity": "app",
                "resource": "https://crm.example",
                "sinks": [{"type": "store", "key": name}],
            }
            for name in ("crm", "erp")
        },
        "store": {"label": "first"},
        **extra,
    }


def _problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(document), label="c.yaml")
    return caught.value.lines


def test_registered_kinds_run_end_to_end(kinds: None, idp: FakeIdp) -> None:
    config = validate_config(_document(idp))

    async def scenario() -> None:
        h = Harness(config)
        try:
            await h.start()
            await h.run_for(timedelta(seconds=10))  # both first acquisitions (startup spread)
            (store,) = Store.instances  # one client, shared by both tokens' sinks
            assert store.values == {
                "crm": h.job("crm").token.value,  # type: ignore[union-attr]
                "erp": h.job("erp").token.value,  # type: ignore[union-attr]
            }
            grant = h.job("crm").request.grant
            assert isinstance(grant, PinnedGrant) and "access_token" in grant.absorbed
            assert [r.form["client_id"] for r in idp.token_requests] == [CLIENT_ID] * 2
            # a reload with the same section keeps the client; a changed one replaces it
            await h.reload(config)
            assert Store.instances == [store] and not store.closed
            await h.reload(validate_config(_document(idp, store={"label": "second"})))
            assert store.closed and len(Store.instances) == 2
        finally:
            await h.stop()
        assert all(instance.closed for instance in Store.instances)

    asyncio.run(scenario())


def test_messages_come_from_the_registries(kinds: None, idp: FakeIdp) -> None:
    document = _document(idp)
    document["identities"]["app"]["credential"] = {"type": "pined", "value": "x"}
    document["tokens"]["crm"]["sinks"] = [{"type": "stor", "key": "crm"}]
    document["tokens"]["erp"]["sinks"] = [{"type": "store", "ky": "erp"}]
    assert _problems(document) == [
        "c.yaml: identities.app.credential: unknown type 'pined' (known: certificate, "
        "client_secret, device_login, federated, managed_identity, password, pinned)",
        "c.yaml: tokens.crm.sinks.0: unknown type 'stor' (known: file, kubernetes, store, vault)",
        "c.yaml: tokens.erp.sinks.0.key: required key is missing",
        "c.yaml: tokens.erp.sinks.0.ky: unknown key (did you mean 'key'?)",
    ]


class StoredPinnedOptions(PinnedOptions):
    """The pinned credential, kept in the store: it needs the store's section."""

    type: Literal["stored-pinned"]  # type: ignore[assignment]
    needs: ClassVar[tuple[str, ...]] = ("store",)


def test_a_credential_that_needs_a_resource_says_so(kinds: None, idp: FakeIdp) -> None:
    CREDENTIALS.register("stored-pinned", CredentialType(StoredPinnedOptions, PinnedGrant))
    try:
        document = _document(idp)
        del document["store"]
        document["identities"]["app"]["credential"]["type"] = "stored-pinned"
        assert _problems(document)[0] == (
            "c.yaml: identities.app.credential: a stored-pinned credential needs a top-level "
            "store: block (label)"
        )
    finally:
        CREDENTIALS.unregister("stored-pinned")


def test_a_part_that_needs_a_resource_needs_its_section(kinds: None, idp: FakeIdp) -> None:
    document = _document(idp)
    del document["store"]
    assert _problems(document) == [
        f"c.yaml: tokens.{name}.sinks.0: a store sink needs a top-level store: block (label)"
        for name in ("crm", "erp")
    ]
    document["store"] = {"lable": "x"}
    assert _problems(document) == [
        "c.yaml: store.label: required key is missing",
        "c.yaml: store.lable: unknown key (did you mean 'label'?)",
    ]


def test_without_the_registration_the_kinds_do_not_exist(idp: FakeIdp) -> None:
    problems = _problems(_document(idp))
    assert (
        "c.yaml: identities.app.credential: unknown type 'pinned' (known: certificate, "
        "client_secret, device_login, federated, managed_identity, password)" in problems
    )
    assert any(line.startswith("c.yaml: store: unknown key") for line in problems)
