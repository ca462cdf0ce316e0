"""Finding what would make tokend fail, without writing anything.

- `local_problems`: what this machine says, with no service asked: every secret reference that
  is read locally (resolved, the value discarded at once), every credential (a certificate that
  does not parse), every sink (a missing directory, a path that is a directory, an unknown file
  owner, two sinks writing the same file through different paths), every CA bundle, the state
  directory, the listen address. `tokend run` refuses to start, and a reload is rejected, on any.
- `preflight` (`tokend check`): all that, and every shared resource in use (the Vault login,
  revoked afterwards), the secrets read through them, and each sink asking the service it writes
  to (a missing mount, a policy that forbids the write).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from tokend import files
from tokend.config import Config
from tokend.configfile import LoadedConfig
from tokend.resources import RESOURCES, Environment, Resources
from tokend.sealed import state_dir_problem
from tokend.secret_fields import secret_references
from tokend.secrets import SecretError
from tokend.sinks import SinkContext, sink_labels
from tokend.transport import ca_bundle_problem, is_loopback, listen_problem, split_listen
from tokend.validation import SECTIONS

if TYPE_CHECKING:
    from tokend.endpoint.options import EndpointOptions


def preflight(loaded: LoadedConfig) -> list[str]:
    """Everything `tokend check` finds: one line per problem, naming the file and the key."""
    resources = Resources(loaded.config.sections, Environment())
    try:
        local = local_problems(loaded, listen=True)
        return local + list(_remote(loaded, resources, said=local))
    finally:
        resources.close_sync()


def local_problems(loaded: LoadedConfig, *, listen: bool) -> list[str]:
    """What this machine alone says is wrong; `listen`: also whether the listener can bind."""
    config, source = loaded.config, loaded.source
    with files.remembered_directories():
        found = [f"{source}: {path}: {problem}" for path, problem in _local(config)]
    if listen and config.listen and (problem := listen_problem(config.listen)):
        found.append(f"{source}: listen: {problem}")
    if config.endpoint is not None:
        lines = _endpoint_problems(config, config.endpoint, listen)
        found += [f"{source}: endpoint.{line}" for line in lines]
    return found


def _endpoint_problems(config: Config, options: EndpointOptions, listen: bool) -> list[str]:
    """The `endpoint:` block's problems. Its modules load only for a config that has one."""
    from tokend.endpoint.catalog import password_identities  # noqa: PLC0415
    from tokend.endpoint.checks import endpoint_problems  # noqa: PLC0415

    lines = endpoint_problems(options, listen)
    if options.compat and not password_identities(config, options):
        lines.append(
            "compat: requesttoken needs an identity whose credential has a username and "
            "a password (type: password)"
        )
    return lines


def warnings(loaded: LoadedConfig) -> list[str]:
    """Settings that work but deserve a second look, one line each."""
    config, source = loaded.config, loaded.source
    found = [
        f"{source}: tokens.{name}.sinks.{index}: {line}"
        for name, token in config.tokens.items()
        for index, sink in enumerate(token.sinks)
        for line in sink.warnings()
    ]
    if config.metrics.per_token == "all" and len(config.tokens) > MANY_TOKENS:  # noqa: S105
        found.append(
            f"{source}: metrics.per_token: all with {len(config.tokens):,} tokens exports "
            f"{per_token_series(config):,} series on every scrape; per_token: problems exports "
            "only those of tokens that need attention (the instance-wide series stay)"
        )
    if config.listen and not is_loopback(split_listen(config.listen)[0]):
        found.append(
            f"{source}: listen: {config.listen} is reachable from other machines; /metrics and "
            "/status hold no secrets, but restrict who can reach them"
        )
    return found


MANY_TOKENS = 10_000
"""Above this, `per_token: all` makes a scrape too large to be useful: `tokend check` warns."""


def per_token_series(config: Config) -> int:
    """How many per-token series `/metrics` exports with `per_token: all` once every token is
    held: 5 gauges and 3 refresh counters per token, 2 publish counters and a gauge per sink."""
    return sum(8 + 3 * len(token.sinks) for token in config.tokens.values())


def _local(config: Config) -> Iterator[tuple[str, str]]:
    for key, ref in secret_references(config):
        if not ref.needs:  # read locally; the others are checked with their resource
            try:
                ref.probe()
            except SecretError as exc:
                yield key.removeprefix(f"{SECTIONS}."), str(exc)  # `vault.auth.secret_id`
    for name, identity in config.identities.items():
        for line in identity.credential.preflight():
            yield f"identities.{name}.credential", line
        if identity.ca_bundle and (problem := ca_bundle_problem(identity.ca_bundle)):
            yield f"identities.{name}.ca_bundle", problem
    if config.http.ca_bundle and (problem := ca_bundle_problem(config.http.ca_bundle)):
        yield "http.ca_bundle", problem
    if config.state_dir and (problem := state_dir_problem(config.state_dir)):
        yield "state_dir", problem
    yield from _sink_problems(config)


def _sink_problems(config: Config) -> Iterator[tuple[str, str]]:
    written_by: dict[str, str] = {}
    for name, token in config.tokens.items():
        for index, sink in enumerate(token.sinks):
            where = f"tokens.{name}.sinks.{index}"
            for line in sink.preflight():
                yield where, line
            target = sink.resolved_target()
            if target in written_by and target != sink.target():
                yield where, f"{target} is also written by {written_by[target]}"
            written_by.setdefault(target, where)


def _remote(loaded: LoadedConfig, resources: Resources, said: list[str]) -> Iterator[str]:
    config, source = loaded.config, loaded.source
    for section in config.sections:
        resources.get(RESOURCES[section])
    failed = resources.check()
    for section, lines in failed.items():
        if any(line.startswith(f"{source}: {section}.") for line in said):
            continue  # a setting of its own is wrong (said above): that is why it failed
        yield from (f"{source}: {section}.{line}" for line in lines)
    for path, ref in secret_references(config):
        if ref.needs and not any(section in failed for section in ref.needs):
            try:
                ref.probe(resources)
            except SecretError as exc:
                yield f"{source}: {path}: {exc}"
    for name, token in config.tokens.items():
        labels = sink_labels(token.sinks)
        for index, sink in enumerate(token.sinks):
            if sink.preflight() or any(section in failed for section in sink.needs):
                continue  # said already
            context = SinkContext(name, labels[index], resources)
            yield from (
                f"{source}: tokens.{name}.sinks.{index}: {line}"
                for line in sink.preflight_remote(context)
            )
