"""`tokend check`: what this machine would make fail, found without writing anything.

Every part checks itself: each shared resource in use (the Vault login, which is revoked
afterwards), every secret reference (resolved, the value discarded at once), every credential
(a certificate that does not parse), every sink (a missing directory, an unknown file owner, and,
by asking the service it writes to, a missing mount or a policy that forbids the write).
"""

from __future__ import annotations

from collections.abc import Iterator

from tokend.configfile import LoadedConfig
from tokend.resources import RESOURCES, Environment, Resources
from tokend.secrets import SecretError, secret_references
from tokend.sinks import SinkContext, sink_labels


def preflight(loaded: LoadedConfig) -> list[str]:
    """One line per problem, each naming the file and the key concerned."""
    resources = Resources(loaded.config.sections, Environment())
    try:
        return list(_problems(loaded, resources))
    finally:
        resources.close_sync()


def _problems(loaded: LoadedConfig, resources: Resources) -> Iterator[str]:
    config, source = loaded.config, loaded.source
    for section in config.sections:
        resources.get(RESOURCES[section])
    failed = resources.check()
    for section, lines in failed.items():
        yield from (f"{source}: {section}.{line}" for line in lines)
    for path, ref in secret_references(config):
        if any(section in failed for section in ref.needs):
            continue  # said once above
        try:
            ref.resolve(resources)
        except SecretError as exc:
            yield f"{source}: {path}: {exc}"
    for name, identity in config.identities.items():
        for line in identity.credential.preflight():
            yield f"{source}: identities.{name}.credential: {line}"
    for name, token in config.tokens.items():
        labels = sink_labels(token.sinks)
        for index, sink in enumerate(token.sinks):
            found = sink.preflight()
            if not found and not any(section in failed for section in sink.needs):
                found = sink.preflight_remote(SinkContext(name, labels[index], resources))
            yield from (f"{source}: tokens.{name}.sinks.{index}: {line}" for line in found)
