"""Pydantic validation errors as one clear line each: `tokens.crm.sinks.0.path: required key is
missing`, `...: unknown type 'vaul' (known: file, vault)`, `refresh_treshold: unknown key (did
you mean 'refresh_threshold'?)`.

Generic over the schema: a union of a registry's kinds validates a value with its own kind's
model, so a key path is what the user wrote; the registry says which kinds are known.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import ValidationError

from tokend.registry import UNKNOWN_KIND, Registry, registries_in

SECTIONS = "sections"
"""The field that holds the top-level sections of shared resources (`vault:`), which the user
writes at the top level: never shown in a key path."""


def validation_lines(exc: ValidationError, model: type) -> list[str]:
    """One line per error: `key.path: message`."""
    lines = []
    for error in exc.errors(include_url=False, include_input=True):
        path = _key_path(error["loc"])
        message = _message(error, model)
        lines.append(f"{path}: {message}" if path else message)
    return lines


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for index, part in enumerate(loc):
        if index == 0 and part == SECTIONS:
            continue
        if part == "[key]":
            continue  # the problem is the key itself, already the last part of the path
        parts.append(str(part))
    return ".".join(parts)


def _message(error: Any, model: type) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        key, known = str(error["loc"][-1]), _field_names(model, set())
        if key in known:
            return f"unknown key here ('{key}' is a key of another block: check its indentation)"
        return "unknown key" + did_you_mean(key, known)
    if kind == UNKNOWN_KIND:
        tag, known = ctx["discriminator"], ctx["known"]
        given = error["input"].get(tag) if isinstance(error["input"], dict) else None
        if given is None:
            return f"{tag} is missing (known: {known})"
        return f"unknown {tag} '{given}' (known: {known})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch" and _is_name(error["loc"]):
        return "names may use letters, digits, '.', '_' and '-' (at most 64, not starting with '.')"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message[:1].lower() + message[1:]


def _is_name(loc: tuple[Any, ...]) -> bool:
    """The error is about an identity's or a token's name (a key), not a value inside it."""
    return len(loc) == 3 and loc[0] in ("identities", "tokens") and loc[2] == "[key]"


def _field_names(model: type, seen: set[type]) -> set[str]:
    """Every key the schema knows anywhere, for "did you mean" hints (this imports every
    registered kind: only a config with an unknown key pays for it)."""
    names: set[str] = set()
    for cls in _config_classes(model, seen):
        names |= set(cls.__pydantic_fields__)  # type: ignore[attr-defined]
    return names


def _config_classes(model: type, seen: set[type]) -> Iterator[type]:
    """`model` and every config class (pydantic model or dataclass) reachable from it, including
    every registered kind of every registry (the shared resources' sections too)."""
    if model in seen or not hasattr(model, "__pydantic_fields__"):
        return
    seen.add(model)
    yield model
    for info in model.__pydantic_fields__.values():
        for nested in _model_types(info.annotation, info.metadata):
            yield from _config_classes(nested, seen)


def _registries(annotation: Any, metadata: list[Any]) -> Iterator[Registry[Any]]:
    yield from registries_in(annotation, unions_only=False)
    for arg in getattr(annotation, "__args__", ()):
        yield from _registries(arg, [])
    for meta in metadata:
        yield from registries_in(meta, unions_only=False)


def _model_types(annotation: Any, metadata: list[Any]) -> Iterator[type]:
    """Config classes named anywhere in `annotation`, and the kinds of its registries."""
    if isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__"):
        yield annotation
    for registry in _registries(annotation, metadata):
        for _tag, entry in registry.items():
            yield entry.options
    for arg in getattr(annotation, "__args__", ()):
        yield from _model_types(arg, [])
    for arg in getattr(annotation, "__metadata__", ()):
        yield from _model_types(arg, [])
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and origin is not annotation:
        yield from _model_types(origin, [])
