"""Registries of pluggable kinds: sink types, credential types, Vault auth methods, secret
reference forms, shared resources.

A kind is one module that defines an options model and registers it under its tag (the `type:`
or `method:` the config names). Everything else follows from the registry: the config schema's
discriminated unions, the `unknown type 'x' (known: ...)` messages, `tokend check`, and what the
composition root builds. Nothing in the engine or the config model names a concrete kind.

Built-in kinds are registered by their own modules, which a registry imports the first time it
is asked (so `tokend version` loads none of them). A test registers a kind of its own with
`register` and takes it away with `unregister`; the config schema is rebuilt on its next use.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Annotated, Any, Generic, Protocol, TypeVar

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

UNKNOWN_KIND = "tokend_unknown_kind"
"""The pydantic error type of a tag no registry entry has (see `tokend.validation`)."""


class Entry(Protocol):
    """What every registered kind has: the model its config options validate into."""

    @property
    def options(self) -> type: ...


E = TypeVar("E", bound=Entry)


class _Changes:
    count = 0  # bumped by every change to any registry


def generation() -> int:
    """Changes whenever an entry is registered or removed: schemas built before are stale."""
    return _Changes.count


class Registry(Generic[E]):
    """Kinds of one family (e.g. sink types), by tag."""

    def __init__(
        self, what: str, *, discriminator: str = "type", builtins: tuple[str, ...] = ()
    ) -> None:
        self.what = what
        """How messages name one kind: `sink type`, `credential type`, `auth method`."""
        self.discriminator = discriminator
        self._builtins = builtins
        self._entries: dict[str, E] = {}
        self._loaded = not builtins

    def register(self, tag: str, entry: E) -> E:
        if tag in self._entries:
            raise ValueError(f"{self.what} '{tag}' is registered twice")
        self._entries[tag] = entry
        _Changes.count += 1
        return entry

    def unregister(self, tag: str) -> None:
        del self._entries[tag]
        _Changes.count += 1

    def __getitem__(self, tag: str) -> E:
        return self._all()[tag]

    def __contains__(self, tag: object) -> bool:
        return tag in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def items(self) -> list[tuple[str, E]]:
        return list(self._all().items())

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self._all())

    def union(self, base: type) -> Any:
        """An annotation for a config field holding one of these kinds (typed as `base`, the
        kinds' common base class), validated by the `discriminator` key."""
        return Annotated[base, _TaggedUnion(self)]

    def sections(self) -> Any:
        """An annotation for a mapping with one optional key per kind, each validated by that
        kind's options (the top-level `vault:`... sections of shared resources)."""
        return Annotated[dict[str, Any], _Sections(self)]

    def _all(self) -> dict[str, E]:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)
        return self._entries


class _TaggedUnion:
    """Builds the discriminated union of a registry's kinds when pydantic builds a schema."""

    def __init__(self, registry: Registry[Any]) -> None:
        self.registry = registry

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        registry = self.registry
        choices: dict[Any, CoreSchema] = {
            tag: handler.generate_schema(entry.options) for tag, entry in registry.items()
        }
        return core_schema.tagged_union_schema(
            choices,
            discriminator=registry.discriminator,
            custom_error_type=UNKNOWN_KIND,
            custom_error_message=f"unknown {registry.what}",
            custom_error_context={
                "what": registry.what,
                "discriminator": registry.discriminator,
                "known": ", ".join(sorted(registry.tags)),
            },
        )


class _Sections:
    """Builds a mapping schema with one optional key per kind of a registry."""

    def __init__(self, registry: Registry[Any]) -> None:
        self.registry = registry

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        fields = {
            tag: core_schema.typed_dict_field(
                handler.generate_schema(entry.options), required=False
            )
            for tag, entry in self.registry.items()
        }
        return core_schema.typed_dict_schema(fields, extra_behavior="forbid")


def registries_in(annotation: Any, *, unions_only: bool = True) -> Iterator[Registry[Any]]:
    """The registries an annotation's unions (and, unless `unions_only`, sections) are built
    from, for walking the schema."""
    for meta in [annotation, *getattr(annotation, "__metadata__", ())]:
        if isinstance(meta, _TaggedUnion) or (not unions_only and isinstance(meta, _Sections)):
            yield meta.registry
