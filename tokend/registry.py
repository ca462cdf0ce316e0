"""Registries of pluggable kinds: sink types, credential types, Vault auth methods, secret
reference forms, shared resources.

A kind is one module that defines an options model and registers it under its tag (the `type:`
or `method:` the config names). Everything else follows from the registry: the config schema's
discriminated unions, the `unknown type 'x' (known: ...)` messages, `tokend check`, and what the
composition root builds. Nothing in the engine or the config model names a concrete kind.

A registry knows which module registers each built-in tag, so looking one tag up imports that
module only, and listing the tags imports none: a config naming a file sink and a client secret
loads neither Vault nor Kubernetes. The config's unions and sections validate a value with the
model of its own kind, looked up when the value is validated. A test registers a kind of its own
with `register` and takes it away with `unregister`; the next validation sees the change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import (
    CoreSchema,
    PydanticCustomError,
    PydanticKnownError,
    SchemaValidator,
    core_schema,
)

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
    """Changes whenever an entry is registered (a built-in's module imported) or removed:
    answers derived from the kinds loaded so far are stale."""
    return _Changes.count


class Registry(Generic[E]):
    """Kinds of one family (e.g. sink types), by tag."""

    def __init__(
        self, what: str, *, discriminator: str = "type", builtins: Mapping[str, str] | None = None
    ) -> None:
        self.what = what
        """How messages name one kind: `sink type`, `credential type`, `auth method`."""
        self.discriminator = discriminator
        self._builtins = dict(builtins or {})
        """Tag -> the module that registers it when imported."""
        self._entries: dict[str, E] = {}
        self._validators: dict[str, tuple[E, Callable[[Any], Any]]] = {}

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
        """The kind registered as `tag`, importing the module of a built-in on first use."""
        entry = self._entries.get(tag)
        if entry is None and tag in self._builtins:
            importlib.import_module(self._builtins[tag])
            entry = self._entries.get(tag)
        if entry is None:
            raise KeyError(tag)
        return entry

    def __contains__(self, tag: object) -> bool:
        return tag in self._entries or tag in self._builtins

    def __iter__(self) -> Iterator[str]:
        return iter(self.tags)

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag, built-ins first: no module is imported to list them."""
        return (*self._builtins, *(tag for tag in self._entries if tag not in self._builtins))

    def items(self) -> list[tuple[str, E]]:
        """Every kind: imports every built-in's module (prefer a lookup by tag)."""
        return [(tag, self[tag]) for tag in self.tags]

    def loaded(self) -> list[E]:
        """The kinds registered so far, without importing any: every value validated into a
        kind of this registry is an instance of one of these."""
        return list(self._entries.values())

    def validator(self, tag: str) -> Callable[[Any], Any]:
        """What validates the options of the kind `tag` (KeyError if unknown): that kind's
        model only, whose ValidationError keeps its locations when raised inside another
        validator. Made on first use; made again if the kind was registered anew."""
        cached = self._validators.get(tag)
        if cached is not None and cached[0] is self._entries.get(tag):
            return cached[1]  # the fast path: once per sink of 100,000 tokens
        entry = self[tag]
        validate = _validator_of(entry.options)
        self._validators[tag] = (entry, validate)
        return validate

    def union(self, base: type) -> Any:
        """An annotation for a config field holding one of these kinds (typed as `base`, the
        kinds' common base class), validated by the `discriminator` key."""
        return Annotated[base, _TaggedUnion(self)]

    def sections(self) -> Any:
        """An annotation for a mapping with one optional key per kind, each validated by that
        kind's options (the top-level `vault:`... sections of shared resources)."""
        return Annotated[dict[str, Any], _Sections(self)]


def _validator_of(options: type) -> Callable[[Any], Any]:
    if isinstance(options, type) and issubclass(options, BaseModel):
        options.model_rebuild()  # no-op once complete
        return options.__pydantic_validator__.validate_python
    from pydantic import TypeAdapter  # noqa: PLC0415 - rare, and slow to import

    return TypeAdapter(options).validate_python


class _TaggedUnion:
    """A discriminated union of a registry's kinds, resolved when a value is validated: only
    the kind the value names is imported and used."""

    def __init__(self, registry: Registry[Any]) -> None:
        self.registry = registry

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)

    def validate(self, value: Any) -> Any:
        registry = self.registry
        key = registry.discriminator
        if isinstance(value, dict):
            tag = value.get(key)
        elif hasattr(value, key):  # options already validated
            tag = getattr(value, key)
        else:
            raise PydanticKnownError("model_attributes_type")
        if isinstance(tag, str) and tag in registry:
            return registry.validator(tag)(value)
        raise PydanticCustomError(
            UNKNOWN_KIND,
            f"unknown {registry.what}",
            {"what": registry.what, "discriminator": key, "known": _known(registry)},
        )


class _Sections:
    """A mapping with one optional key per kind of a registry; only the kinds present are
    imported and used."""

    def __init__(self, registry: Registry[Any]) -> None:
        self.registry = registry
        self._validators: dict[tuple[str, ...], SchemaValidator] = {}

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)

    def validate(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return SchemaValidator(core_schema.dict_schema()).validate_python(value)
        present = tuple(sorted(key for key in value if key in self.registry))
        validator = self._validators.get(present)
        if validator is None:
            validator = self._validators[present] = self._validator_for(present)
        return validator.validate_python(value)

    def _validator_for(self, tags: tuple[str, ...]) -> SchemaValidator:
        """A dict schema with these keys (any other key is an error), each validated lazily."""
        fields = {
            tag: core_schema.typed_dict_field(
                core_schema.no_info_plain_validator_function(_section_of(self.registry, tag)),
                required=False,
            )
            for tag in tags
        }
        return SchemaValidator(core_schema.typed_dict_schema(fields, extra_behavior="forbid"))


def _section_of(registry: Registry[Any], tag: str) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        return registry.validator(tag)(value)  # looked up each time: a kind may be replaced

    return validate


def _known(registry: Registry[Any]) -> str:
    return ", ".join(sorted(registry.tags))


def registries_in(annotation: Any, *, unions_only: bool = True) -> Iterator[Registry[Any]]:
    """The registries an annotation's unions (and, unless `unions_only`, sections) are built
    from, for walking the schema."""
    for meta in [annotation, *getattr(annotation, "__metadata__", ())]:
        if isinstance(meta, _TaggedUnion) or (not unions_only and isinstance(meta, _Sections)):
            yield meta.registry
