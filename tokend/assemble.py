"""The composition root: the one place that turns a validated `Config` into running parts.

For every configured token it builds a grant (from the identity's credential type), the sinks
(from their types), a refresh policy and a backoff, and hands the engine a `Blueprint` of them.
Shared clients (a Vault session) come from `Resources`, created on first use and closed when
no part uses them any more. Concrete kinds are found through their registries only.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from tokend.backoff import Backoff
from tokend.clock import SYSTEM_CLOCK, Clock, Scheduler, Timing
from tokend.config import Config, TokenSpec
from tokend.consumers import ConsumerNotifier
from tokend.engine import (
    Blueprint,
    Deliveries,
    Engine,
    EngineSettings,
    JobKit,
    Publisher,
    RefreshPolicy,
    ReloadSummary,
    SinkSlot,
    SlotKit,
    TokenJob,
)
from tokend.engine.job import Acquirer, DurationObserver
from tokend.engine.recovery import Recovery
from tokend.engine.state import StateStore
from tokend.engine.verifier import Verifier
from tokend.oauth import GrantContext, HttpSettings, Target, TokenRequest, build_grant
from tokend.oauth.dialects import DEFAULT_AUTHORITY_HOST
from tokend.resources import RESOURCES, Environment, Resources
from tokend.seal import Sealer
from tokend.sealed import SealedFiles
from tokend.secrets import SecretError
from tokend.sinks import SinkContext, build_sink, is_shared, sink_labels

T = TypeVar("T")
log = logging.getLogger("tokend")


def http_settings(config: Config) -> HttpSettings:
    http = config.http
    return HttpSettings(
        connect_timeout=http.connect_timeout.total_seconds(),
        read_timeout=http.timeout.total_seconds(),
        max_concurrent_requests=http.max_concurrent_requests,
    )


def run_limit(config: Config) -> int:
    """How many refreshes may be in progress at once: enough to keep every connection slot busy
    while others publish, few enough that a burst of due tokens does not pile up in memory."""
    return 2 * config.http.max_concurrent_requests


def engine_settings(config: Config) -> EngineSettings:
    return EngineSettings(
        startup_spread=config.defaults.startup_spread,
        spread_above=config.http.max_concurrent_requests,
        run_limit=run_limit(config),
    )


@dataclass(frozen=True)
class _Runtime:
    """What every job of a process is wired to."""

    acquirer: Acquirer
    timing: Timing
    durations: DurationObserver
    resources: Resources
    deliveries: Deliveries
    recovery: Recovery
    verifier: Verifier


class Assembly:
    """A tokend's running parts: shared resources and an engine with one job per token."""

    def __init__(
        self,
        *,
        acquirer: Acquirer,
        scheduler: Scheduler,
        durations: DurationObserver,
        clock: Clock = SYSTEM_CLOCK,
        rand: random.Random | None = None,
    ) -> None:
        self.resources = Resources({}, Environment(clock, scheduler))
        self.engine = Engine(clock=clock)
        self._config: Config | None = None  # the config the running jobs were built from
        rand = rand or random.Random()  # noqa: S311 - jitter, not cryptography
        timing = Timing(clock, scheduler, rand)
        self._runtime = _Runtime(
            acquirer=acquirer,
            timing=timing,
            durations=durations,
            resources=self.resources,
            deliveries=self.engine.deliveries,
            recovery=Recovery(timing),
            verifier=Verifier(timing, self.engine.deliveries),
        )

    def build(self, config: Config) -> None:
        """Build every token's job; the engine then starts them or refreshes each once. With
        leader election, tokens with a sink shared between replicas run on the leader only."""
        self.resources.configure(config.sections)
        self.engine.build(self.blueprints(config), engine_settings(config))
        for section in config.sections:  # only the kinds a config names are loaded
            if (kind := RESOURCES[section]).leadership:
                self.engine.lead_with(self.resources.get(kind))
        self._config = config

    async def reload(self, config: Config) -> ReloadSummary:
        """Switch to `config`; shared clients whose settings changed are closed once every part
        that used them has stopped. Leader election stays as it started (its changes take
        effect at the next restart)."""
        config = self._keep_leadership(config)
        self.resources.configure(config.sections)
        summary = await self.engine.reload(self.blueprints(config), engine_settings(config))
        self._config = config
        await self.resources.close_unused()
        return summary

    def _keep_leadership(self, config: Config) -> Config:
        old = self._config.sections if self._config is not None else {}
        sections = dict(config.sections)
        for section in dict.fromkeys([*old, *sections]):
            if RESOURCES[section].leadership and old.get(section) != sections.get(section):
                log.warning("reload: changes to %s take effect at the next restart", section)
                sections.pop(section, None)
                if section in old:
                    sections[section] = old[section]
        return config.model_copy(update={"sections": sections})

    async def stop(self, timeout: float = 10.0) -> None:
        await self.engine.stop(timeout)
        await self.resources.close()

    def blueprints(self, config: Config) -> Iterator[tuple[str, Blueprint]]:
        """One token's blueprint at a time: the engine builds its job before the next is made,
        so 100,000 of them never exist at once (they would leave that much memory behind)."""
        parts = _Parts(self._runtime, config)
        old = self._config
        same_common = old is not None and _common_inputs(old) == _common_inputs(config)
        for name, spec in config.tokens.items():
            yield (
                name,
                Blueprint(
                    functools.partial(parts.job, name),
                    unchanged=same_common and _own_inputs(old, name) == _own_inputs(config, name),
                    on_demand=spec.on_demand,
                    leader_only=all(is_shared(sink) for sink in spec.sinks),
                ),
            )


class _Parts:
    """Builds the jobs of one config. Objects equal for many tokens are made once: grants (per
    identity and endpoint), refresh policies and backoffs (per distinct value)."""

    def __init__(self, runtime: _Runtime, config: Config) -> None:
        self._runtime = runtime
        self._config = config
        self._state, self._kept = _state_stores(config, runtime.resources)
        self._shared: dict[Any, Any] = {}

    def job(self, name: str) -> TokenJob:
        runtime, config = self._runtime, self._config
        spec = config.tokens[name]
        backoff = self._backoff(spec)
        policy = self._once(
            RefreshPolicy(
                threshold=spec.refresh_threshold or config.defaults.refresh_threshold,
                jitter=config.defaults.jitter if spec.jitter is None else spec.jitter,
            )
        )
        kit = JobKit(
            self._acquirer(spec),
            policy,
            backoff,
            runtime.timing,
            runtime.durations,
            state=self._state,
            recovery=runtime.recovery,
        )
        publisher = Publisher(self._slots(name, spec, backoff), runtime.deliveries)
        return TokenJob(self.request(name), self._once(kit), publisher)

    def request(self, name: str) -> TokenRequest:
        """What to send for token `name`: its identity's grant, and what the token is for."""
        config = self._config
        spec = config.tokens[name]
        identity = config.identity_for(spec)
        target = Target(spec.resource, tuple(spec.scopes or ()))
        key = ("grant", spec.identity, spec.resource is not None)
        if key not in self._shared:
            endpoint = identity.endpoint(target, config.http.ca_bundle)
            context = GrantContext(
                identity.client_id or "",
                endpoint,
                self._runtime.resources,
                identity=spec.identity,
                clock=self._runtime.timing.clock,
                entra_version=(1 if spec.resource else 2) if identity.is_entra else None,
                kept=self._kept,
            )
            self._shared[key] = build_grant(identity.credential, context)
        return TokenRequest(name, self._shared[key], spec.resource, target.scopes)

    def _acquirer(self, spec: TokenSpec) -> Acquirer:
        """The client, or for a token with `verify:` the client followed by the self-check."""
        runtime = self._runtime
        if spec.verify is None:
            return runtime.acquirer
        # Only for tokens with `verify:` (its key cache and JWT checks: ~10 ms of start-up).
        from tokend.oauth.jwks import JWKS, Connection  # noqa: PLC0415
        from tokend.oauth.verify import VerifyingAcquirer, expectation  # noqa: PLC0415

        identity = self._config.identity_for(spec)
        authority = (identity.authority_host or DEFAULT_AUTHORITY_HOST).rstrip("/")
        expected = expectation(
            spec.verify,
            resource=spec.resource,
            scopes=tuple(spec.scopes or ()),
            entra_authority=f"{authority}/{identity.tenant}" if identity.tenant else None,
            issuer=identity.issuer,
            connection=Connection(
                identity.ca_bundle or self._config.http.ca_bundle, identity.allow_insecure_http
            ),
        )
        return self._once(
            VerifyingAcquirer(
                runtime.acquirer,
                self._once(expected),
                runtime.resources.get(JWKS),
                runtime.timing.clock,
            )
        )

    def _slots(self, name: str, spec: TokenSpec, backoff: Backoff) -> list[SinkSlot]:
        runtime = self._runtime
        labels = sink_labels(spec.sinks)
        slots = []
        for index, options in enumerate(spec.sinks):
            kit = SlotKit(
                runtime.timing,
                backoff,
                withdraw_on_expiry=options.on_expiry == "withdraw",
                required_for_ready=options.waits_for_ready(),
                shared=is_shared(options),
                verifier=runtime.verifier,
            )
            sink = build_sink(options, SinkContext(name, labels[index], runtime.resources))
            slot = SinkSlot(name, sink, self._once(kit))
            if options.on_publish is not None:
                slot.observer = ConsumerNotifier(options.on_publish, name, labels[index])
            slots.append(slot)
        return slots

    def _backoff(self, spec: TokenSpec) -> Backoff:
        limits = spec.backoff or self._config.defaults.backoff
        return self._once(Backoff(min=limits.min, max=limits.max))

    def _once(self, value: T) -> T:
        """One object per distinct value (thousands of tokens share a handful)."""
        shared: T = self._shared.setdefault(value, value)
        return shared


def _state_stores(
    config: Config, resources: Resources
) -> tuple[StateStore | None, SealedFiles | None]:
    """Where tokens are kept across restarts, sealed with `state_key` if one is set, and where
    grants keep their refresh tokens (only sealed). A key that cannot be read means no state at
    all, never state written in the clear by mistake."""
    if config.state_dir is None:
        return None, None
    if config.state_key is None:
        return StateStore(config.state_dir), None
    try:
        key = config.state_key.resolve(resources).reveal()
    except SecretError as exc:
        log.error("state_key: %s; tokens and refresh tokens are not kept across restarts", exc)
        return None, None
    sealer = Sealer(key)
    from tokend.oauth.grants.signin import refresh_token_files  # noqa: PLC0415 - only with a state_key

    return StateStore(config.state_dir, sealer), refresh_token_files(config.state_dir, sealer)


def _common_inputs(config: Config) -> tuple[Any, ...]:
    """What every token's job is built from besides its own spec and identity."""
    defaults = config.defaults.model_copy(update={"startup_spread": timedelta(0)})
    sections = tuple(sorted(config.sections.items()))
    return defaults, config.http.ca_bundle, config.state_dir, config.state_key, sections


def _own_inputs(config: Config | None, name: str) -> tuple[Any, ...] | None:
    """A token's spec and identity (None if `config` has no such token)."""
    spec = config.tokens.get(name) if config is not None else None
    return (spec, config.identity_for(spec)) if config is not None and spec is not None else None
