"""`{vault: PATH#FIELD}`: a secret reference to a field of a Vault KV secret, read through the
process's Vault session (the `vault` shared resource)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import field_validator

from tokend.resources import MissingSection
from tokend.secrets import SECRET_FORMS, Secret, SecretError, SecretForm, SecretReference

if TYPE_CHECKING:
    from tokend.resources import Resources
    from tokend.vault.session import VaultSession


class VaultSecret(SecretReference):
    """A field of a Vault KV secret, by its API path as Vault policies spell it:
    `secret/data/apps/crm#client_secret` (KV version 2, note `data/`) or `kv/apps/crm#secret`
    (version 1). Read over the network, so `read()` keeps the event loop free."""

    needs: ClassVar[tuple[str, ...]] = ("vault",)
    vault: str

    @field_validator("vault")
    @classmethod
    def _path_and_field(cls, vault: str) -> str:
        path, _, field = vault.strip().strip("/").removeprefix("v1/").partition("#")
        if not path or not field or "#" in field or any(c.isspace() for c in path + field):
            raise ValueError(
                f"'{vault}' is not PATH#FIELD, e.g. {{vault: secret/data/apps/crm#client_secret}}"
            )
        return f"{path.strip('/')}#{field}"

    def describe(self) -> str:
        return f"Vault secret {self.vault}"

    def resolve(self, resources: Resources | None = None) -> Secret:
        return _session(self, resources).read_secret(self.vault)

    async def read(self, resources: Resources | None = None) -> Secret:
        return await _session(self, resources).read_secret_async(self.vault)


def _session(secret: VaultSecret, resources: Resources | None) -> VaultSession:
    from tokend.vault import VAULT

    try:
        if resources is None:
            raise MissingSection("needs a top-level vault: block", code="missing_section")
        return resources.get(VAULT)
    except MissingSection:
        raise SecretError(f"{secret.describe()}: no vault: block is configured") from None


SECRET_FORMS.register("vault", SecretForm(VaultSecret))
