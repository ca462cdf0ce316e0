"""KV secrets engine operations on a logged-in hvac client (run on a Vault worker thread by
`VaultSession.run`): read a secret's version and `expires_on`, write with check-and-set, delete,
and the checks `tokend check` makes without writing (the mount exists and is KV of the expected
version; the policy allows what is needed)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol


class KvLocation(Protocol):
    """Where a KV secret is: its mount, its path inside the mount, the engine's version."""

    @property
    def mount(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def kv_version(self) -> int: ...
    @property
    def data_path(self) -> str: ...
    @property
    def metadata_path(self) -> str: ...


@dataclass(frozen=True)
class Current:
    """What the secret holds now: its version (0: none yet) and its token's `expires_on`, and
    what says whether tokend could have written it."""

    version: int
    expires_on: int | None
    token_exp: int | None = None
    """The `exp` claim of the stored `access_token`, when it is a JWT."""
    tokend_metadata: bool | None = None
    """KV v2: the secret's `custom_metadata` says `managed-by: tokend` (None: KV v1, none)."""
    token_digest: bytes | None = field(default=None, repr=False)
    """SHA-256 of the stored `access_token` (to recognise it without keeping it)."""


@dataclass(frozen=True)
class Stored:
    """What a sink left in the secret (or found there and deferred to), to tell later whether
    anyone changed it: KV v2 by its version, KV v1 (no versions) by the token it holds."""

    version: int
    expires_on: int | None
    token_digest: bytes | None

    @classmethod
    def of(cls, current: Current) -> Stored:
        return cls(current.version, current.expires_on, current.token_digest)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


LIKE_TOKEN_EXP = 300
"""Seconds `expires_on` may differ from the JWT's `exp`: tokend counts expiry from when it sent
the request, and the identity provider's clock may be a little off."""


def foreign(current: Current, ours: int, lifetime: int) -> str | None:
    """Why the stored token cannot have been written by tokend (another instance, or this one
    earlier), or None when it could have. `ours`: `expires_on` of the token tokend publishes,
    `lifetime` its lifetime in seconds. Only a value tokend could have written may make tokend
    leave the secret alone (monotonic publish): anything else is replaced."""
    stored = current.expires_on
    if stored is None:
        return None
    horizon = max(_DAY, 2 * lifetime)
    if stored > ours + horizon:
        return (
            f"its expires_on ({stored}) is more than {horizon // 3600} h after that of tokend's "
            "token: no identity provider issued it"
        )
    if current.token_exp is not None and abs(current.token_exp - stored) > LIKE_TOKEN_EXP:
        return "its expires_on does not match the exp of its access_token"
    if current.tokend_metadata is False:
        return "its metadata does not say managed-by: tokend"
    return None


_DAY = 86400


def read_current(options: KvLocation, client: Any) -> Current:
    """What the secret holds now (version 0 and no expiry when there is nothing)."""
    return _read_v2(options, client) if options.kv_version == 2 else _read_v1(options, client)


def write(options: KvLocation, secret: dict[str, Any], cas: int, client: Any) -> int:
    """Write the secret; KV v2 only if its version is still `cas` (check-and-set). Returns the
    version written (KV v2; 0 for KV v1)."""
    if options.kv_version != 2:
        client.secrets.kv.v1.create_or_update_secret(
            path=options.path, secret=secret, mount_point=options.mount
        )
        return 0
    body = client.secrets.kv.v2.create_or_update_secret(
        path=options.path, secret=secret, cas=cas, mount_point=options.mount
    )
    version = (body.get("data") or {}).get("version") if isinstance(body, dict) else None
    return version if isinstance(version, int) else 0


def _read_v2(options: KvLocation, client: Any) -> Current:
    import hvac.exceptions

    try:
        body = client.secrets.kv.v2.read_secret_version(
            path=options.path, mount_point=options.mount, raise_on_deleted_version=False
        )
    except hvac.exceptions.InvalidPath as exc:
        if _nothing_there(exc):
            return Current(0, None)
        raise
    data = body.get("data") or {}
    metadata = data.get("metadata") or {}
    version = metadata.get("version")
    custom = metadata.get("custom_metadata")
    values = data.get("data")
    return Current(
        version if isinstance(version, int) else 0,
        _expires_on(values),
        _token_exp(values),
        isinstance(custom, dict) and custom.get("managed-by") == "tokend",
        _token_digest(values),
    )


def _read_v1(options: KvLocation, client: Any) -> Current:
    import hvac.exceptions

    try:
        body = client.secrets.kv.v1.read_secret(path=options.path, mount_point=options.mount)
    except hvac.exceptions.InvalidPath as exc:
        if _nothing_there(exc):
            return Current(0, None)
        raise
    values = body.get("data")
    return Current(0, _expires_on(values), _token_exp(values), None, _token_digest(values))


def delete(options: KvLocation, client: Any) -> None:
    if options.kv_version == 2:
        client.secrets.kv.v2.delete_latest_version_of_secret(
            path=options.path, mount_point=options.mount
        )
    else:
        client.secrets.kv.v1.delete_secret(path=options.path, mount_point=options.mount)


def mount_problem(options: KvLocation, client: Any) -> str | None:
    """Why the mount cannot hold this sink's secret, or None when it can."""
    import hvac.exceptions

    no_mount = f"no secrets engine is mounted at '{options.mount}' (check the mount)"
    try:
        body = client.adapter.get(f"/v1/sys/internal/ui/mounts/{options.mount}/{options.path}")
    except hvac.exceptions.Forbidden:
        # Vault says the same for a path under no mount and for a path the policy hides.
        if _capabilities(client, [options.data_path]).get(options.data_path, {"deny"}) <= {"deny"}:
            return _hidden_mount(options, client)
        return no_mount
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or str(data.get("path", "")).strip("/") != options.mount:
        return no_mount
    kind = data.get("type")
    if kind not in ("kv", "generic"):
        return f"mount '{options.mount}' is a {kind} secrets engine, not KV"
    version = str((data.get("options") or {}).get("version") or "1")
    if version != str(options.kv_version):
        return f"mount '{options.mount}' is KV version {version}: set kv_version: {version}"
    return None


def _hidden_mount(options: KvLocation, client: Any) -> str:
    """Vault hides mounts a token's policy grants nothing under: say which ones it shows."""
    visible = kv_mounts(client)
    seen = f"KV mounts it can see: {', '.join(visible)}" if visible else "it can see no KV mount"
    return (
        f"tokend's token can see no secrets engine at '{options.mount}' ({seen}): check the "
        f"mount, or the policy if it should allow {options.data_path}"
    )


def kv_mounts(client: Any) -> list[str]:
    """The KV mounts this token may see (Vault lists those its policy grants anything under)."""
    try:
        body = client.adapter.get("/v1/sys/internal/ui/mounts")
    except Exception:
        return []
    mounts = (body.get("data") or {}).get("secret") if isinstance(body, dict) else None
    if not isinstance(mounts, dict):
        return []
    return sorted(
        path.strip("/")
        for path, info in mounts.items()
        if isinstance(info, dict) and info.get("type") in ("kv", "generic")
    )


def kv_version_of(path: str, client: Any) -> int | None:
    """The KV version of the mount `path` (an API path) is under, or None if unknown."""
    try:
        body = client.adapter.get(f"/v1/sys/internal/ui/mounts/{path}")
    except Exception:
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or data.get("type") not in ("kv", "generic"):
        return None
    return 2 if str((data.get("options") or {}).get("version")) == "2" else 1


def capability_problem(options: KvLocation, client: Any, *, delete: bool = False) -> str | None:
    """What the token's policy lacks for this sink, or None when it allows everything needed."""
    needed = {options.data_path: {"read", "create", "update"}}
    if delete:
        needed[options.data_path].add("delete")
    if options.kv_version == 2:
        needed[options.metadata_path] = {"create", "update"}
    granted = _capabilities(client, list(needed))
    lacking = []
    for path, capabilities in needed.items():
        have = granted.get(path, set())
        if "root" not in have and (missing := sorted(capabilities - have)):
            lacking.append(f"{', '.join(missing)} on {path}")
    if not lacking:
        return None
    return f"tokend's Vault policy lacks {'; '.join(lacking)} (see the README for the policy)"


def _capabilities(client: Any, paths: list[str]) -> dict[str, set[str]]:
    body = client.sys.get_capabilities(paths=paths)
    granted = body.get("data", body) if isinstance(body, dict) else {}
    return {path: set(granted.get(path) or ()) for path in paths}


def _nothing_there(exc: Any) -> bool:
    """A 404 for a secret that does not exist (rather than for a missing mount)."""
    body = exc.json if isinstance(exc.json, dict) else {}
    return not exc.errors and not body.get("warnings")


def _expires_on(values: Any) -> int | None:
    raw = values.get("expires_on") if isinstance(values, dict) else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return None


def _token_exp(values: Any) -> int | None:
    """The `exp` of the stored `access_token` if it is a JWT (read, never verified)."""
    token = values.get("access_token") if isinstance(values, dict) else None
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else None


def _token_digest(values: Any) -> bytes | None:
    token = values.get("access_token") if isinstance(values, dict) else None
    return digest(token) if isinstance(token, str) else None
