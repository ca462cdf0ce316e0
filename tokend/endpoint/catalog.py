"""Which configured token answers a request: by `resource` (a v1 token's `resource`, or a v2
token's one scope `{resource}/.default`) and, when several identities serve that resource, by the
identity the SDK names (`client_id`, `principal_id` / `object_id`, `mi_res_id` / `msi_res_id`).

Only configured tokens are ever served: a request for anything else is refused, and nothing is
minted for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokend.config import Config
from tokend.endpoint.options import EndpointOptions
from tokend.secrets import SecretReference

DEFAULT_SUFFIX = "/.default"


@dataclass(frozen=True, slots=True)
class Entry:
    token: str
    identity: str
    client_id: str
    principal_id: str | None = None
    mi_res_id: str | None = None


@dataclass(frozen=True, slots=True)
class Selector:
    """The identity a request names, if any (at most one kind, as the SDKs send)."""

    client_id: str | None = None
    principal_id: str | None = None
    mi_res_id: str | None = None

    def __bool__(self) -> bool:
        return bool(self.client_id or self.principal_id or self.mi_res_id)

    def matches(self, entry: Entry) -> bool:
        return (
            _same(self.client_id, entry.client_id)
            or _same(self.principal_id, entry.principal_id)
            or _same(self.mi_res_id, entry.mi_res_id)
        )


class NotServed(Exception):
    """The request names no configured token; the text says why (never a secret)."""

    def __init__(self, message: str, *, identity: bool = False) -> None:
        super().__init__(message)
        self.identity = identity
        """True when the resource is served but not for the identity the request names."""


def resource_key(resource: str) -> str:
    """How a resource is compared: `https://x/`, `https://x` and `https://x/.default` are one."""
    key = resource.strip()
    key = key.removesuffix(DEFAULT_SUFFIX)
    return key.rstrip("/") or key


class Catalog:
    """Configured tokens by resource; rebuilt from each (re)loaded config."""

    def __init__(self, config: Config, options: EndpointOptions) -> None:
        served = set(options.tokens) if options.tokens is not None else set(config.tokens)
        self._default = options.default_identity
        self._by_resource: dict[str, list[Entry]] = {}
        for name, spec in config.tokens.items():
            single_scope = spec.scopes[0] if spec.scopes and len(spec.scopes) == 1 else None
            target = spec.resource or single_scope
            if name not in served or target is None:
                continue
            aliases = options.identities.get(spec.identity)
            entry = Entry(
                token=name,
                identity=spec.identity,
                client_id=config.identities[spec.identity].client_id or "",
                principal_id=aliases.principal_id if aliases else None,
                mi_res_id=aliases.mi_res_id if aliases else None,
            )
            self._by_resource.setdefault(resource_key(target), []).append(entry)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_resource.values())

    def find(self, resource: str, selector: Selector) -> Entry:
        """The entry that answers; raises `NotServed`."""
        entries = self._by_resource.get(resource_key(resource))
        if not entries:
            raise NotServed("tokend serves no token for this resource")
        if selector:
            for entry in entries:
                if selector.matches(entry):
                    return entry
            message = "no configured identity with that id serves this resource"
            raise NotServed(message, identity=True)
        if len(entries) == 1:
            return entries[0]
        for entry in entries:
            if entry.identity == self._default:
                return entry
        raise NotServed(
            "several identities serve this resource: name one with client_id "
            "(or set endpoint.default_identity)",
            identity=True,
        )


def _same(asked: str | None, known: str | None) -> bool:
    return asked is not None and known is not None and asked.lower() == known.lower()


@dataclass(frozen=True, slots=True)
class PasswordIdentity:
    name: str
    username: SecretReference
    password: SecretReference
    tokens: dict[str, str]
    """Served token name by resource key."""


def password_identities(config: Config, options: EndpointOptions) -> list[PasswordIdentity]:
    served = set(options.tokens) if options.tokens is not None else set(config.tokens)
    found = []
    for name, identity in config.identities.items():
        username = getattr(identity.credential, "username", None)
        password = getattr(identity.credential, "password", None)
        if not (isinstance(username, SecretReference) and isinstance(password, SecretReference)):
            continue
        tokens = {
            resource_key(spec.resource or " ".join(spec.scopes or ())): token
            for token, spec in config.tokens.items()
            if spec.identity == name and token in served
        }
        found.append(PasswordIdentity(name, username, password, tokens))
    return found
