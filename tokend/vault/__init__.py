"""HashiCorp Vault and OpenBao: the `vault:` config block, and the session that every Vault user
in a process shares (the Vault sink in `tokend.sinks.vault`, `{vault: ...}` secret references).

The session is a shared resource (`tokend.resources`): registered here as `VAULT`, created by
the composition root the first time a sink or secret asks for it, closed once at the end.
Nothing here imports hvac at module level: a process that never talks to Vault never loads it.
"""

from __future__ import annotations

from tokend.resources import RESOURCES, Environment, ResourceKind
from tokend.vault.auth import (
    AUTH_METHODS,
    AppRoleAuth,
    AuthMethod,
    AuthOptions,
    KubernetesAuth,
    MountPath,
    TokenAuth,
    strip_slashes,
)
from tokend.vault.errors import Problem, VaultError
from tokend.vault.options import VaultOptions
from tokend.vault.report import vault_metrics, vault_status
from tokend.vault.session import VaultSession


def _session(options: VaultOptions, environment: Environment) -> VaultSession:
    return VaultSession(options, clock=environment.clock, scheduler=environment.scheduler)


def _check(session: VaultSession) -> list[str]:
    """`tokend check`: can tokend log in, and does its policy let it look up and renew its
    token? (The login is revoked when the check closes.)"""
    problem = session.check_login() or session.check_policy()
    return [f"auth: {problem}"] if problem else []


VAULT: ResourceKind[VaultOptions, VaultSession] = RESOURCES.register(
    "vault",
    ResourceKind(
        section="vault",
        options=VaultOptions,
        create=_session,
        summary="address, auth",
        check=_check,
        status=vault_status,
        metrics=vault_metrics,
    ),
)

__all__ = [
    "AUTH_METHODS",
    "VAULT",
    "AppRoleAuth",
    "AuthMethod",
    "AuthOptions",
    "KubernetesAuth",
    "MountPath",
    "Problem",
    "TokenAuth",
    "VaultError",
    "VaultOptions",
    "VaultSession",
    "strip_slashes",
]
