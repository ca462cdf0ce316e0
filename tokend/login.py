"""`tokend login TOKEN`: sign a `device_login` identity's user in once, interactively.

It asks the identity provider for a device code, prints where to sign in and the code to enter,
polls until the user has signed in (on any device), and stores the refresh token it is given,
sealed with `state_key`, where the daemon looks for it. A running tokend picks it up within
seconds; `tokend once` and later starts use it too.

Run it as the user tokend runs as: the state directory is private to that user.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, TextIO

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.config import Config
from tokend.errors import TokendError
from tokend.oauth import GrantContext, Target, build_grant
from tokend.oauth.device_code import (
    DeviceFlowError,
    Sleep,
    poll_for_token,
    request_device_code,
)
from tokend.oauth.grants.device_login import DeviceLoginGrant
from tokend.oauth.grants.signin import refresh_token_files
from tokend.oauth.http import Clients
from tokend.resources import Environment, Resources
from tokend.seal import Sealer
from tokend.secrets import SecretError
from tokend.transport import url_problem
from tokend.untrusted import unverified_claims

log = logging.getLogger("tokend.login")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class LoginError(TokendError):
    """The login cannot start: the config or the command is wrong (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="login")


@dataclass(frozen=True)
class _Plan:
    grant: DeviceLoginGrant
    identity: str
    authorization_url: str
    token_url: str
    scopes: tuple[str, ...]


async def login(
    config: Config,
    token: str,
    out: TextIO,
    *,
    clock: Clock = SYSTEM_CLOCK,
    sleep: Sleep = asyncio.sleep,
) -> int:
    """Sign in for `token`'s identity and store its refresh token; an exit status."""
    resources = Resources(config.sections, Environment())
    try:
        plan = _plan(config, token, resources)
        return await _sign_in(config, plan, out, clock, sleep)
    except LoginError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    finally:
        await resources.close()


def _plan(config: Config, token: str, resources: Resources) -> _Plan:
    spec = config.tokens.get(token)
    if spec is None:
        raise LoginError(f"no token '{token}' in the config (known: {', '.join(config.tokens)})")
    identity = config.identity_for(spec)
    target = Target(spec.resource, tuple(spec.scopes or ()))
    if config.state_dir is None or config.state_key is None:
        raise LoginError("tokend login needs state_dir and state_key: the refresh token goes there")
    try:
        sealer = Sealer(config.state_key.resolve(resources).reveal())
    except SecretError as exc:
        raise LoginError(f"state_key: {exc}") from None
    endpoint = identity.endpoint(target, config.http.ca_bundle)
    context = GrantContext(
        identity.client_id or "",
        endpoint,
        resources,
        identity=spec.identity,
        kept=refresh_token_files(config.state_dir, sealer),
    )
    grant = build_grant(identity.credential, context)
    if not isinstance(grant, DeviceLoginGrant):
        raise LoginError(
            f"token '{token}' uses identity '{spec.identity}', whose credential is "
            f"{identity.credential.type}: tokend login is for type: device_login"
        )
    authorization_url, token_url = grant.device_authorization_url(), grant.device_token_url()
    if authorization_url is None or token_url is None:
        raise LoginError(
            f"identity '{spec.identity}' is not an Entra ID tenant: set token_endpoint and "
            "credential.device_authorization_endpoint"
        )
    for url in (authorization_url, token_url):
        if problem := url_problem(url, allow_insecure_http=identity.allow_insecure_http):
            raise LoginError(f"{url}: {problem}")
    return _Plan(grant, spec.identity, authorization_url, token_url, grant.login_scopes(target))


async def _sign_in(config: Config, plan: _Plan, out: TextIO, clock: Clock, sleep: Sleep) -> int:
    http = Clients(
        deadline=config.http.timeout.total_seconds(),
        connect_timeout=config.http.connect_timeout.total_seconds(),
        max_connections=1,
    )
    try:
        body = await _authorize(http, plan, out, clock, sleep)
    except DeviceFlowError as exc:
        log.error("sign-in failed: %s", exc)
        return EXIT_FAILED
    finally:
        await http.aclose()
    try:
        stored = await plan.grant.store_login(body)
    except OSError as exc:
        log.error("the refresh token could not be stored: %s", exc.strerror or exc)
        return EXIT_FAILED
    if not stored:
        log.error("signed in, but with no refresh token: the app must be allowed offline_access")
        return EXIT_FAILED
    who = _signed_in_user(body)
    print(
        f"Signed in{f' as {who}' if who else ''}. The refresh token is stored sealed in "
        f"{config.state_dir}; a running tokend uses it within seconds.",
        file=out,
    )
    return EXIT_OK


async def _authorize(
    http: Clients, plan: _Plan, out: TextIO, clock: Clock, sleep: Sleep
) -> dict[str, Any]:
    """RFC 8628: a device code, the user told where to enter it, polling until signed in."""
    client_id, ca_bundle = plan.grant.client_id, plan.grant.endpoint.ca_bundle
    code = await request_device_code(
        http, plan.authorization_url, client_id, plan.scopes, clock=clock, ca_bundle=ca_bundle
    )
    where = code.verification_uri_complete or code.verification_uri
    print(
        f"To sign in for identity '{plan.identity}', open {where}\n"
        f"and enter the code {code.user_code} (valid {code.expires_in // 60} minutes). "
        "Waiting for the sign-in ...",
        file=out,
        flush=True,
    )
    return await poll_for_token(
        http, plan.token_url, client_id, code, clock=clock, sleep=sleep, ca_bundle=ca_bundle
    )


def _signed_in_user(body: dict[str, Any]) -> str | None:
    """Who signed in, from the ID token (read, not verified: only to tell the operator)."""
    id_token = body.get("id_token")
    claims = unverified_claims(id_token) if isinstance(id_token, str) else None
    name = claims.get("preferred_username") if claims is not None else None
    return name if isinstance(name, str) and name.isprintable() and len(name) < 256 else None
