"""Finding every secret reference in a validated config, with its key path: for `tokend check`
(resolve each), the config's own checks (refuse inline secrets where they leak) and the file
loader (warn about inline secrets). Only fields whose type can hold a reference are walked."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from tokend import registry
from tokend.registry import Registry
from tokend.secrets import SecretReference


def secret_references(model: Any, prefix: str = "") -> Iterator[tuple[str, SecretReference]]:
    """Every secret reference in a config (pydantic models and options dataclasses, nested in
    dicts and lists), with its key path. Only fields whose type can hold one are walked: a
    config of 100,000 tokens with file sinks is a handful of identities to look at."""
    for key in _secret_fields(type(model)):
        yield from _walk(getattr(model, key), f"{prefix}{key}")


def _walk(value: Any, path: str) -> Iterator[tuple[str, SecretReference]]:
    if isinstance(value, SecretReference):
        yield path, value
    elif isinstance(value, BaseModel) or dataclasses.is_dataclass(value):
        yield from secret_references(value, f"{path}.")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}.{index}")


_fields_cache: dict[tuple[type, int], tuple[str, ...]] = {}


def _secret_fields(cls: type) -> tuple[str, ...]:
    """The fields of `cls` whose type can hold a secret reference. A field holding a registry's
    kinds asks the kinds loaded now, not every kind (which would import them all): a value in a
    config is an instance of a loaded kind, and loading another one changes the generation."""
    key = (cls, registry.generation())
    found = _fields_cache.get(key)
    if found is None:
        fields = getattr(cls, "__pydantic_fields__", {})
        found = _fields_cache[key] = tuple(
            name
            for name, info in fields.items()
            if _can_hold(info.annotation, info.metadata, set())
        )
    return found


def _can_hold(annotation: Any, metadata: list[Any], seen: set[type]) -> bool:
    for found in _metadata(metadata):  # a registry's union: pydantic keeps it in the metadata
        if any(_can_hold(entry.options, [], seen) for entry in found.loaded()):
            return True
    if isinstance(annotation, type):
        if issubclass(annotation, SecretReference):
            return True
        if annotation in seen or not hasattr(annotation, "__pydantic_fields__"):
            return False
        seen.add(annotation)
        fields: dict[str, Any] = getattr(annotation, "__pydantic_fields__", {})
        return any(_can_hold(info.annotation, info.metadata, seen) for info in fields.values())
    for found in registry.registries_in(annotation, unions_only=False):
        if any(_can_hold(entry.options, [], seen) for entry in found.loaded()):
            return True
    nested = [*getattr(annotation, "__args__", ()), *getattr(annotation, "__metadata__", ())]
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and origin is not annotation:
        nested.append(origin)
    return any(_can_hold(arg, [], seen) for arg in nested)


def _metadata(metadata: list[Any]) -> Iterator[Registry[Any]]:
    for meta in metadata:
        yield from registry.registries_in(meta, unions_only=False)
