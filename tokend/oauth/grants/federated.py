"""`type: federated`: workload identity federation. The client assertion is a token another
issuer gave this workload (a Kubernetes projected service-account token, a CI system's OIDC
token), which Entra ID (or any RFC 7523 server) trusts through a federated credential.

The token is read afresh at every request, because its issuer rotates it: from `token_file`
(kubelet replaces the file well before the token expires), or from the standard output of
`command` (an argv, run without a shell, within `command_timeout`).

`from_environment: true` takes what the Azure workload identity webhook injects into a pod:
`AZURE_FEDERATED_TOKEN_FILE` (the token file), and for the identity `AZURE_CLIENT_ID`,
`AZURE_TENANT_ID` and `AZURE_AUTHORITY_HOST`. They are read when the config is loaded; a key
written in the config always wins over the variable (as azure-identity's explicit arguments do),
and a variable is only required where the config leaves its key out.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from tokend.clock import SYSTEM_CLOCK
from tokend.durations import PositiveDuration
from tokend.files import RefusedFile, open_regular_file
from tokend.oauth.dialects import Target
from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialOptions,
    CredentialType,
    GrantContext,
    HttpRequest,
)
from tokend.oauth.grants.certificate import ASSERTION_TYPE
from tokend.paths import ConfigPath
from tokend.secrets import SecretError
from tokend.untrusted import unverified_exp

if TYPE_CHECKING:
    from tokend.resources import Resources

TOKEN_FILE_VARIABLE = "AZURE_FEDERATED_TOKEN_FILE"  # noqa: S105 - a name, not a secret
_MAX_TOKEN = 64 * 1024  # a service-account token is about 1 KiB


class FederatedOptions(CredentialOptions):
    type: Literal["federated"]
    token_file: ConfigPath | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    command_timeout: PositiveDuration = timedelta(seconds=10)
    from_environment: bool = False

    @model_validator(mode="before")
    @classmethod
    def _token_file_from_environment(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("from_environment") is not True:
            return data
        if data.get("token_file") is not None or data.get("command") is not None:
            return data
        path = os.environ.get(TOKEN_FILE_VARIABLE)
        if not path:
            raise ValueError(
                f"from_environment: {TOKEN_FILE_VARIABLE} is not set and neither token_file nor "
                "command is given (the Azure workload identity webhook sets it in the pod)"
            )
        return {**data, "token_file": path}

    @model_validator(mode="after")
    def _one_source(self) -> FederatedOptions:
        if (self.token_file is None) == (self.command is None):
            raise ValueError("give exactly one of token_file or command")
        return self

    @classmethod
    def identity_defaults(
        cls,
        credential: Mapping[str, Any],
        identity: Mapping[str, Any],
        environ: Mapping[str, str] = os.environ,
    ) -> dict[str, Any]:
        if credential.get("from_environment") is not True:
            return {}

        def given(key: str) -> bool:
            return identity.get(key) is not None

        defaults: dict[str, Any] = {}
        if not given("client_id"):
            defaults["client_id"] = _variable(environ, "AZURE_CLIENT_ID", "client_id")
        if not any(given(key) for key in ("tenant", "token_endpoint", "issuer")):
            defaults["tenant"] = _variable(environ, "AZURE_TENANT_ID", "tenant")
        host = environ.get("AZURE_AUTHORITY_HOST")
        if host and not given("authority_host") and (given("tenant") or "tenant" in defaults):
            defaults["authority_host"] = host
        return defaults

    def preflight(self, resources: Resources | None = None) -> list[str]:
        if self.command is not None:
            program = self.command[0]
            if shutil.which(program) is None:
                return [f"command: {program} is not an executable program here"]
            return []
        assert self.token_file is not None  # noqa: S101 - the validator made sure
        try:
            token = read_token_file(self.token_file)
        except SecretError as exc:
            return [str(exc)]
        expires = unverified_expiry(token)
        if expires is not None and expires <= SYSTEM_CLOCK.now():
            return [
                f"token_file: the token in {self.token_file} expired at "
                f"{expires:%Y-%m-%dT%H:%M:%SZ}: whatever should rotate it is not doing so"
            ]
        return []


def _variable(environ: Mapping[str, str], name: str, key: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise ValueError(f"credential.from_environment: {name} is not set and {key} is not given")
    return value


class FederatedGrant:
    __slots__ = ("_options", "client_id", "endpoint")

    def __init__(self, options: FederatedOptions, context: GrantContext) -> None:
        self.client_id = context.client_id
        self.endpoint = context.endpoint
        self._options = options

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        options = self._options
        if options.command is not None:
            token = await run_token_command(options.command, options.command_timeout)
        else:
            assert options.token_file is not None  # noqa: S101 - the validator made sure
            token = read_token_file(options.token_file)  # microseconds, as other secrets
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": token,
        }
        headers = {"Accept": "application/json"}
        return HttpRequest("POST", token_url, form=form | target.fields(), headers=headers)

    def absorb(self, body: Mapping[str, Any]) -> None:
        return None

    async def source_version(self) -> str:
        """The token file's digest (it changes at each rotation: a token refused for good is
        tried again with the next one). A command is not run just to look: always the same."""
        if self._options.token_file is None:
            return "command"
        try:
            token = read_token_file(self._options.token_file)
        except SecretError as exc:
            return f"unreadable:{exc.code}"
        return hashlib.sha256(token.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"FederatedGrant(client_id={self.client_id!r})"


def read_token_file(path: Path) -> str:
    """The token in `path`, read now. Raises `SecretError` (never quoting the content)."""
    try:
        with open_regular_file(path) as stream:  # a FIFO would block each read: refused
            raw = stream.read(_MAX_TOKEN + 1)
    except RefusedFile as exc:
        raise SecretError(f"token_file {path}: {exc}") from None
    except FileNotFoundError:
        raise SecretError(f"token_file {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"token_file {path} is not readable by this user") from None
    except OSError as exc:
        raise SecretError(f"token_file {path} cannot be read: {type(exc).__name__}") from None
    return _token(raw, f"token_file {path}")


async def run_token_command(argv: list[str], timeout: timedelta) -> str:
    """The token `argv` prints on standard output. Its standard error is discarded (it may say
    anything); a failure says only how the command ended."""
    what = f"command {argv[0]}"
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except (FileNotFoundError, PermissionError) as exc:
        raise SecretError(f"{what} cannot be run: {type(exc).__name__}") from None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout.total_seconds())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise SecretError(
            f"{what} did not finish within {timeout.total_seconds():g}s", transient=True
        ) from None
    if process.returncode != 0:
        raise SecretError(
            f"{what} exited with status {process.returncode} (run it by hand to see why)",
            transient=True,
        )
    return _token(output[: _MAX_TOKEN + 1], what)


def _token(raw: bytes, what: str) -> str:
    if len(raw) > _MAX_TOKEN:
        raise SecretError(f"{what}: larger than 64 KiB, not a token")
    token = raw.strip()
    if not token:
        raise SecretError(f"{what}: empty")
    if not all(0x21 <= byte < 0x7F for byte in token):
        raise SecretError(f"{what}: not a token (expected one line of printable characters)")
    return token.decode("ascii")


def unverified_expiry(token: str) -> datetime | None:
    """The `exp` of a JWT, unverified (only to tell an operator that rotation stopped)."""
    exp = unverified_exp(token)
    return datetime.fromtimestamp(exp, UTC) if exp is not None else None


CREDENTIALS.register("federated", CredentialType(FederatedOptions, FederatedGrant))
