"""Checks across the keys of a config that validated key by key: names that refer to other
entries (identities, tokens, sinks), the sections shared resources need, targets each identity's
endpoint can serve, and what keeping refresh tokens requires. Each problem is a key path and
a message; `tokend.config.validate_config` reports them all at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tokend.oauth.verify_options import verify_problem
from tokend.resources import RESOURCES
from tokend.secret_fields import secret_references
from tokend.secrets import SecretReference
from tokend.sinks import SinkOptionsBase, sink_labels
from tokend.validation import did_you_mean

if TYPE_CHECKING:
    from tokend.config import Config, Identity, TokenSpec


def cross_reference_problems(config: Config) -> Iterator[tuple[str, str]]:
    yield from _missing_sections(config)
    yield from _kept_state_problems(config)
    yield from _endpoint_problems(config)
    known = ", ".join(config.identities)
    targets: dict[str, str] = {}
    for name, token in config.tokens.items():
        where = f"tokens.{name}"
        identity = config.identities.get(token.identity)
        if identity is None:
            hint = did_you_mean(token.identity, config.identities)
            yield f"{where}.identity", f"unknown identity '{token.identity}' (known: {known}){hint}"
        else:
            yield from _target_problems(where, token, identity)
        labels = sink_labels(token.sinks)
        for index, sink in enumerate(token.sinks):
            if labels[index] in labels[:index]:
                yield f"{where}.sinks.{index}.name", f"sink name '{labels[index]}' is used twice"
            target = sink.target()
            if target in targets:
                yield f"{where}.sinks.{index}", f"{target} is also written by {targets[target]}"
            targets.setdefault(target, f"{where}.sinks.{index}")


def _endpoint_problems(config: Config) -> Iterator[tuple[str, str]]:
    endpoint = config.endpoint
    if endpoint is None:
        for name, token in config.tokens.items():
            if token.on_demand:
                yield f"tokens.{name}.on_demand", "needs an endpoint: block (it asks for the token)"
        return
    for served in endpoint.tokens or ():
        if served not in config.tokens:
            yield "endpoint.tokens", f"unknown token '{served}' (known: {', '.join(config.tokens)})"
    named = [*endpoint.identities, *filter(None, [endpoint.default_identity])]
    for identity in named:
        if identity not in config.identities:
            known = ", ".join(config.identities)
            yield "endpoint", f"unknown identity '{identity}' (known: {known})"


def _missing_sections(config: Config) -> Iterator[tuple[str, str]]:
    """Everything that uses a shared resource needs that resource's section (unless the
    resource has defaults of its own)."""
    for path, part, needs in _needing_parts(config):
        for section in needs:
            kind = RESOURCES[section]
            if section not in config.sections and kind.default is None:
                yield path, f"{_subject(part)} needs a top-level {section}: block ({kind.summary})"


def _needing_parts(config: Config) -> Iterator[tuple[str, Any, tuple[str, ...]]]:
    for path, ref in secret_references(config):
        if ref.needs:
            yield path, ref, ref.needs
    for name, identity in config.identities.items():
        if identity.credential.needs:
            yield f"identities.{name}.credential", identity.credential, identity.credential.needs
    for name, token in config.tokens.items():
        for index, sink in enumerate(token.sinks):
            if sink.needs:
                yield f"tokens.{name}.sinks.{index}", sink, sink.needs


def _subject(part: Any) -> str:
    if isinstance(part, SecretReference):
        form = next(key for key in type(part).model_fields if key != "needs")
        return f"{{{form}: ...}}"
    return f"a {part.type} {'sink' if isinstance(part, SinkOptionsBase) else 'credential'}"


def _target_problems(where: str, token: TokenSpec, identity: Identity) -> Iterator[tuple[str, str]]:
    scopes = tuple(token.scopes or ())
    if token.verify is not None and (
        problem := verify_problem(
            token.verify,
            resource=token.resource,
            scopes=scopes,
            entra=identity.is_entra,
            issuer=identity.issuer,
        )
    ):
        yield f"{where}.verify", problem
    if not identity.is_entra:
        if problem := identity.credential.target_problem(token.resource, scopes):
            yield where, problem
        return
    if (token.resource is None) == (token.scopes is None):
        yield where, ("give exactly one of resource (Entra ID v1 endpoint) or scopes (v2 endpoint)")
    elif token.scopes is not None and (problem := identity.credential.entra_scopes_problem(scopes)):
        yield f"{where}.scopes", problem


def _kept_state_problems(config: Config) -> Iterator[tuple[str, str]]:
    """Refresh tokens are stored only sealed: a credential that keeps them needs both."""
    if config.state_dir is not None and config.state_key is not None:
        return
    for name, identity in config.identities.items():
        credential = identity.credential
        if credential.keeps_refresh_tokens():
            yield (
                f"identities.{name}.credential",
                f"a {credential.type} credential keeps the refresh tokens it is given, stored "
                "only sealed: set state_dir and state_key (a secret reference)",
            )
