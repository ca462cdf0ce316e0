"""Reading, applying and deleting one Kubernetes Secret for the Secret sink.

Writes are server-side applies (field manager `tokend`) of `data` (base64, never `stringData`:
an apply that leaves out a key tokend owned then removes exactly that key), carrying the
`resourceVersion` just read as a precondition, so a Secret changed by anyone since tokend looked
at it is not overwritten: the apply fails with 409 and the sink looks again.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tokend.kube.errors import Attempt, KubeError, classify, is_not_found
from tokend.kube.options import FIELD_MANAGER

if TYPE_CHECKING:
    from tokend.kube.client import KubeClient

PREFIX = "tokend.io/"
TOKEN = PREFIX + "token"
EXPIRES_ON = PREFIX + "expires-on"
EXPIRES_AT = PREFIX + "expires-at"
MANAGED_BY = PREFIX + "managed-by"
WRITER = PREFIX + "writer"
CREATED = PREFIX + "created"
"""Set when tokend created the Secret: only then may withdrawing it delete the whole Secret."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What tokend needs to know of the Secret as it is now."""

    resource_version: str
    expires_on: int | None
    """Expiry (Unix time) of the token tokend wrote there; None if tokend's annotations are
    missing or unreadable: a value tokend did not write."""
    created_by_tokend: bool
    managers: frozenset[str]
    """Field managers of the Secret."""
    has_data: bool

    def plausible(self, obtained_at: datetime, lifetime: float) -> bool:
        """Could tokend have written this expiry? One far beyond what the identity provider
        issues (a hand-made value) must not block updates forever."""
        return (
            self.expires_on is not None
            and self.expires_on - obtained_at.timestamp() <= 2 * lifetime + 60
        )


def encode(values: dict[str, str]) -> dict[str, str]:
    return {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}


async def read(client: KubeClient, namespace: str, name: str, attempt: Attempt) -> Stored | None:
    """The Secret's state, or None when there is none."""
    from lightkube.resources.core_v1 import Secret

    try:
        secret = await client.async_client().get(Secret, name, namespace=namespace)
    except KubeError:
        raise
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise classify(exc, attempt) from None
    return _stored(secret)


def _stored(secret: Any) -> Stored:
    metadata = secret.metadata
    annotations = metadata.annotations or {}
    expires_on: int | None = None
    if TOKEN in annotations:
        try:
            expires_on = int(annotations.get(EXPIRES_ON, ""))
        except ValueError:
            expires_on = None
    return Stored(
        resource_version=str(metadata.resourceVersion),
        expires_on=expires_on,
        created_by_tokend=annotations.get(CREATED) == "true",
        managers=frozenset(entry.manager for entry in metadata.managedFields or ()),
        has_data=bool(secret.data),
    )


async def apply(
    client: KubeClient, manifest: dict[str, Any], *, force: bool, attempt: Attempt
) -> None:
    """Server-side apply of `manifest` (a Secret) as field manager `tokend`."""
    from lightkube.resources.core_v1 import Secret
    from lightkube.types import PatchType

    metadata = manifest["metadata"]
    try:
        await client.async_client().patch(
            Secret,
            metadata["name"],
            manifest,
            namespace=metadata["namespace"],
            patch_type=PatchType.APPLY,
            field_manager=FIELD_MANAGER,
            force=force,
        )
    except Exception as exc:
        raise classify(exc, attempt) from None


async def delete(client: KubeClient, namespace: str, name: str, attempt: Attempt) -> None:
    from lightkube.resources.core_v1 import Secret

    try:
        await client.async_client().delete(Secret, name, namespace=namespace)
    except Exception as exc:
        if not is_not_found(exc):
            raise classify(exc, attempt) from None
