"""The Kubernetes Secret sink: the token in a Secret, for pods that mount it or read it through
the API, with RBAC deciding who may read it.

The Secret holds the keys the file formats have (`access_token`, `token_type`, `expires_on`,
`expires_at`, `resource` or `scopes`; `fields:` chooses) and tokend's annotations (token name,
expiry, managed-by, the writing pod). Writes are server-side applies as field manager `tokend`,
so labels, annotations and keys other controllers own stay theirs. Monotonic like the Vault
sink: a token tokend wrote that expires later than the one at hand is never replaced; a value
tokend could not have written (no tokend annotations, or an implausible expiry) is overwritten,
and that is logged once. All API calls go through the process's `KubeClient` (the `kubernetes`
shared resource); failures are `KubeError`s naming the Secret and, for RBAC, the missing verb.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator
from pydantic import dataclasses as pydantic_dataclasses

from tokend.kube import FIELD_MANAGER, KUBERNETES, KubeError
from tokend.kube import secret as secrets
from tokend.kube.access import Rule, refusals
from tokend.kube.errors import Attempt
from tokend.kube.options import Namespace, ObjectName
from tokend.sinks.base import OPTIONS_CONFIG, SINKS, SinkContext, SinkOptionsBase, SinkType
from tokend.sinks.file import rfc3339
from tokend.token import Token

if TYPE_CHECKING:
    from tokend.kube.client import KubeClient

log = logging.getLogger("tokend.sinks.kubernetes")

FieldName = Literal["access_token", "token_type", "expires_on", "expires_at", "resource", "scopes"]
FIELD_NAMES: tuple[FieldName, ...] = get_args(FieldName)
_CONFLICT_ATTEMPTS = 3


@pydantic_dataclasses.dataclass(config=OPTIONS_CONFIG, frozen=True, slots=True, kw_only=True)
class KubernetesSinkOptions(SinkOptionsBase):
    needs: ClassVar[tuple[str, ...]] = ("kubernetes",)
    type: Literal["kubernetes"]
    secret: ObjectName
    """The Secret's name."""
    namespace: Namespace | None = None
    """Default: tokend's own (its service account's, or the kubeconfig context's)."""
    fields: Annotated[list[FieldName], Field(min_length=1)] = dataclasses.field(
        default_factory=lambda: list(FIELD_NAMES)
    )
    secret_type: Annotated[str, Field(min_length=1)] = "Opaque"  # noqa: S105 - a Secret type
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    force: bool = False
    """Take over fields another field manager owns (server-side apply's `force`)."""

    @field_validator("fields")
    @classmethod
    def _fields(cls, fields: list[FieldName]) -> list[FieldName]:
        if len(set(fields)) != len(fields):
            raise ValueError("a field is listed twice")
        if "access_token" not in fields:
            raise ValueError("must include access_token (consumers need the token)")
        return fields

    @field_validator("annotations", "labels")
    @classmethod
    def _not_ours(cls, values: dict[str, str]) -> dict[str, str]:
        if reserved := [key for key in values if key.startswith(secrets.PREFIX)]:
            raise ValueError(f"{', '.join(reserved)}: keys under {secrets.PREFIX} are tokend's")
        return values

    def target(self) -> str:
        return f"kubernetes secret {self.namespace or '(default namespace)'}/{self.secret}"

    def preflight_remote(self, context: SinkContext) -> list[str]:
        if context.resources is None:
            return []
        client = context.resources.get(KUBERNETES)
        try:
            namespace = self.namespace or client.namespace
        except KubeError as exc:
            return [str(exc)]
        where = f"kubernetes secret {namespace}/{self.secret}"
        rules = [Rule(verb, "secrets", namespace, self.secret) for verb in ("get", "patch")]
        rules.append(Rule("create", "secrets", namespace, self.secret))
        return refusals(client, rules, where=where)


class KubernetesSink:
    def __init__(self, options: KubernetesSinkOptions, context: SinkContext) -> None:
        if context.resources is None:
            raise ValueError("a kubernetes sink needs the shared resources")
        self.name = context.sink_name
        self._options = options
        self._client: KubeClient = context.resources.get(KUBERNETES)
        self._token_name = context.token_name
        self._held: int | None = None  # expires_on of the token the publisher believes is here
        self._foreign_logged = False
        self._writer = os.environ.get("POD_NAME") or socket.gethostname()

    async def publish(self, token: Token) -> None:
        ours = int(token.expires_at.timestamp())
        lifetime = token.lifetime.total_seconds()
        for _ in range(_CONFLICT_ATTEMPTS):
            stored = await secrets.read(self._client, *self._place(), self._attempt("get"))
            if stored is not None and stored.plausible(token.obtained_at, lifetime):
                if stored.expires_on is not None and stored.expires_on >= ours:
                    self._left_as_is(stored.expires_on > ours)
                    self._held = ours
                    return
            elif stored is not None and stored.has_data:
                self._log_foreign()
            manifest = self._manifest(stored, token)
            try:
                await secrets.apply(
                    self._client,
                    manifest,
                    force=self._options.force,
                    attempt=self._attempt("patch" if stored else "create"),
                )
            except KubeError as exc:
                if stored is not None and "has been modified" in str(exc):
                    continue  # changed since it was read: look again
                raise
            self._held = ours
            return
        raise KubeError(
            f"{self._where()}: changed by other writers {_CONFLICT_ATTEMPTS} times in a row; "
            "will try again",
            code="kube_conflict",
            transient=True,
        )

    async def withdraw(self) -> None:
        """Remove tokend's keys; the whole Secret if tokend created it and nobody else has a
        field in it (and the Role allows `delete`; otherwise only the keys go)."""
        stored = await secrets.read(self._client, *self._place(), self._attempt("get"))
        if stored is None or (
            stored.expires_on is not None
            and self._held is not None
            and stored.expires_on > self._held
        ):
            return  # nothing there, or a newer token from another writer: keep it
        if stored.created_by_tokend and stored.managers <= {FIELD_MANAGER}:
            try:
                await secrets.delete(self._client, *self._place(), self._attempt("delete"))
                return
            except KubeError as exc:
                if exc.code != "kube_forbidden":
                    raise
        await secrets.apply(
            self._client,
            self._manifest(stored, None),
            force=self._options.force,
            attempt=self._attempt("patch"),
        )

    async def close(self) -> None:
        return None  # the client is shared: the process's Resources close it

    def _manifest(self, stored: secrets.Stored | None, token: Token | None) -> dict[str, Any]:
        """The Secret as tokend wants it: without `token`, no keys (withdrawn)."""
        namespace, name = self._place()
        annotations = {
            **self._options.annotations,
            secrets.TOKEN: self._token_name,
            secrets.MANAGED_BY: "tokend",
            secrets.WRITER: self._writer,
        }
        if stored is None or stored.created_by_tokend:
            annotations[secrets.CREATED] = "true"
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        metadata["annotations"] = annotations
        if self._options.labels:
            metadata["labels"] = dict(self._options.labels)
        if stored is not None:
            metadata["resourceVersion"] = stored.resource_version
        manifest: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": metadata}
        manifest["type"] = self._options.secret_type
        if token is not None:
            annotations[secrets.EXPIRES_ON] = str(int(token.expires_at.timestamp()))
            annotations[secrets.EXPIRES_AT] = rfc3339(token.expires_at)
            manifest["data"] = secrets.encode(render(token, self._options.fields))
        return manifest

    def _place(self) -> tuple[str, str]:
        return self._options.namespace or self._client.namespace, self._options.secret

    def _where(self) -> str:
        namespace, name = self._place()
        return f"kubernetes secret {namespace}/{name}"

    def _attempt(self, verb: str) -> Attempt:
        namespace, name = self._place()
        return Attempt(self._client.who, verb, "secrets", name, namespace, self._where())

    def _left_as_is(self, newer: bool) -> None:
        log.log(
            logging.INFO if newer else logging.DEBUG,
            "sink %s: %s already holds a token expiring no sooner; left as is",
            self.name,
            self._where(),
            extra={"token": self._token_name},
        )

    def _log_foreign(self) -> None:
        if not self._foreign_logged:
            self._foreign_logged = True
            log.warning(
                "sink %s: %s holds a value tokend did not write (no tokend annotations, or an "
                "implausible expiry); replacing it",
                self.name,
                self._where(),
                extra={"token": self._token_name},
            )


def render(token: Token, fields: list[FieldName]) -> dict[str, str]:
    """The Secret's keys, in the configured selection (`resource`/`scopes` when known)."""
    every: dict[str, str | None] = {
        "access_token": token.value,
        "token_type": token.token_type,
        "expires_on": str(int(token.expires_at.timestamp())),
        "expires_at": rfc3339(token.expires_at),
        "resource": token.resource,
        "scopes": " ".join(token.scopes) or None,
    }
    return {name: value for name in fields if (value := every[name]) is not None}


SINKS.register("kubernetes", SinkType(KubernetesSinkOptions, KubernetesSink, shared=True))
