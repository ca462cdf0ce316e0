"""KV secrets engine operations on a logged-in hvac client (run on a Vault worker thread by
`VaultSession.run`): read a secret's version and `expires_on`, write with check-and-set, delete,
and the checks `tokend check` makes without writing (the mount exists and is KV of the expected
version; the policy allows what is needed)."""

from __future__ import annotations

from dataclasses import dataclass
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
    """What the secret holds now: its version (0: none yet) and its token's `expires_on`."""

    version: int
    expires_on: int | None


def read_current(options: KvLocation, client: Any) -> Current:
    """What the secret holds now (version 0 and no expiry when there is nothing)."""
    return _read_v2(options, client) if options.kv_version == 2 else _read_v1(options, client)


def write(options: KvLocation, secret: dict[str, Any], cas: int, client: Any) -> None:
    """Write the secret; KV v2 only if its version is still `cas` (check-and-set)."""
    if options.kv_version == 2:
        client.secrets.kv.v2.create_or_update_secret(
            path=options.path, secret=secret, cas=cas, mount_point=options.mount
        )
    else:
        client.secrets.kv.v1.create_or_update_secret(
            path=options.path, secret=secret, mount_point=options.mount
        )


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
    version = (data.get("metadata") or {}).get("version")
    return Current(version if isinstance(version, int) else 0, _expires_on(data.get("data")))


def _read_v1(options: KvLocation, client: Any) -> Current:
    import hvac.exceptions

    try:
        body = client.secrets.kv.v1.read_secret(path=options.path, mount_point=options.mount)
    except hvac.exceptions.InvalidPath as exc:
        if _nothing_there(exc):
            return Current(0, None)
        raise
    return Current(0, _expires_on(body.get("data")))


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
            raise
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
