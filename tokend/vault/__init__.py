"""HashiCorp Vault and OpenBao: the `vault:` config block, and the session that every Vault user
in a process shares (the Vault sink in `tokend.sinks.vault`, `{vault: ...}` secret references).

Nothing here imports hvac at module level: a process without a `vault:` block never loads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pydantic import BaseModel

from tokend.secrets import VaultSecret
from tokend.vault.errors import Problem, VaultError
from tokend.vault.options import (
    AUTH_METHODS,
    AppRoleAuth,
    KubernetesAuth,
    MountPath,
    TokenAuth,
    VaultOptions,
    strip_slashes,
)
from tokend.vault.session import VaultSession

M = TypeVar("M", bound=BaseModel)


def bind_secrets(model: M, session: VaultSession | None) -> M:
    """A copy of `model` (a config, or any part of one) in which every `{vault: ...}` secret
    reference reads through `session`. Config models are immutable values and hold no live
    connection; this is how the engine hands them one, without any process-wide state."""
    if session is None:
        return model
    bound: M = _bind(model, session)
    return bound


def _bind(value: Any, session: VaultSession) -> Any:
    if isinstance(value, VaultSecret):
        return value.bound_to(session)
    if isinstance(value, BaseModel) or dataclasses.is_dataclass(value):
        changes = {}
        for key in getattr(type(value), "__pydantic_fields__", ()):
            old = getattr(value, key)
            new = _bind(old, session)
            if new is not old:
                changes[key] = new
        if not changes:
            return value
        if isinstance(value, BaseModel):
            return value.model_copy(update=changes)
        return dataclasses.replace(value, **changes)  # type: ignore[type-var]
    if isinstance(value, dict):
        items = {key: _bind(item, session) for key, item in value.items()}
        changed = any(items[key] is not value[key] for key in value)
        return items if changed else value
    if isinstance(value, list):
        elements = [_bind(item, session) for item in value]
        changed = any(new is not old for new, old in zip(elements, value, strict=True))
        return elements if changed else value
    return value


__all__ = [
    "AUTH_METHODS",
    "AppRoleAuth",
    "KubernetesAuth",
    "MountPath",
    "Problem",
    "TokenAuth",
    "VaultError",
    "VaultOptions",
    "VaultSession",
    "bind_secrets",
    "strip_slashes",
]
