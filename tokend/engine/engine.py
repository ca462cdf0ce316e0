"""The engine: one `TokenJob` per configured token, started, stopped and asked about together."""

from __future__ import annotations

import asyncio
import functools
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.config import DEFAULT_AUTHORITY_HOST, Config, TokenSpec, sink_label
from tokend.engine.job import Acquirer, DurationObserver, TokenJob
from tokend.engine.policy import Backoff, RefreshPolicy, startup_at
from tokend.engine.publisher import Deliveries, Publisher, SinkSlot
from tokend.engine.scheduler import Runner, Scheduler
from tokend.engine.state import StateStore, fingerprint
from tokend.oauth import Endpoint, HttpSettings, Token, TokenRequest, build_credential
from tokend.sinks import SinkContext, build_sink
from tokend.vault import VaultSession, bind_secrets


@dataclass
class ReloadSummary:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return ", ".join(
            f"{len(names)} {kind}"
            + (f" ({', '.join(names)})" if names and kind != "unchanged" else "")
            for kind, names in vars(self).items()
        )


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        acquirer: Acquirer,
        scheduler: Scheduler,
        durations: DurationObserver,
        clock: Clock = SYSTEM_CLOCK,
        rand: random.Random | None = None,
    ) -> None:
        self._acquirer = acquirer
        self._scheduler = scheduler
        self._durations = durations
        self._clock = clock
        # One Vault login for the whole process, shared by Vault sinks and {vault: ...} secrets.
        self._vault = self._vault_session(config)
        self.config = config = bind_secrets(config, self._vault)
        self._rand = rand or random.Random()  # noqa: S311 - jitter, not cryptography
        self._state = StateStore(config.state_dir) if config.state_dir else None
        # Objects equal for many tokens, kept once: endpoints and credentials (per identity),
        # refresh policies and backoffs (per distinct value).
        self._shared: dict[Any, Any] = {}
        self._deliveries = Deliveries()
        self.jobs: dict[str, TokenJob] = {
            name: self._build_job(name, spec) for name, spec in config.tokens.items()
        }

    async def start(self) -> None:
        """Resume stored tokens that are still valid; plan every other token's first
        acquisition, spread over `defaults.startup_spread`."""
        await self._launch(list(self.jobs.values()), carried={})

    async def reload(self, config: Config) -> ReloadSummary:
        """Switch to `config`. Tokens whose inputs are unchanged keep their job: state, token and
        schedule. Changed tokens get a new job, which keeps the current token if it is still
        valid for the same request. Removed tokens stop."""
        now = self._clock.now()
        old_config, old_jobs, old_vault = self.config, self.jobs, self._vault
        if config.vault != old_config.vault:  # every job using Vault changes with it (_inputs)
            self._vault = self._vault_session(config)
        self.config = config = bind_secrets(config, self._vault)
        self._state = StateStore(config.state_dir) if config.state_dir else None
        self._shared = {}
        summary = ReloadSummary()
        jobs: dict[str, TokenJob] = {}
        carried: dict[str, Token] = {}
        for name, spec in config.tokens.items():
            old = old_jobs.get(name)
            if old is not None and _inputs(old_config, name) == _inputs(config, name):
                jobs[name] = old
                summary.unchanged.append(name)
                continue
            jobs[name] = job = self._build_job(name, spec)
            (summary.changed if old else summary.added).append(name)
            if old and old.token and _same_request(old, job) and old.token.is_valid(now):
                carried[name] = old.token
        summary.removed = [name for name in old_jobs if name not in jobs]
        for name, old in old_jobs.items():
            if jobs.get(name) is not old:  # replaced or removed: stop before its successor starts
                old.stop()
                await old.publisher.close()
        self.jobs = jobs
        if old_vault is not None and old_vault is not self._vault:
            await old_vault.close()  # after every job that used it has stopped
        await self._launch([jobs[name] for name in summary.added + summary.changed], carried)
        return summary

    async def _launch(self, jobs: list[TokenJob], carried: dict[str, Token]) -> None:
        now = self._clock.now()
        stored = await asyncio.to_thread(
            lambda: {job.name: carried.get(job.name) or job.stored_token(now) for job in jobs}
        )
        fresh_starts = [job for job in jobs if stored[job.name] is None]
        spread = self.config.defaults.startup_spread
        for index, job in enumerate(fresh_starts):
            job.start(startup_at(now, index, len(fresh_starts), spread))
        await asyncio.gather(
            *(job.resume(token) for job in jobs if (token := stored[job.name]) is not None)
        )

    async def refresh_all(self) -> bool:
        """Acquire and publish every token once, a bounded number at a time (`run_limit`).
        True if every token succeeded and reached every sink."""
        results: dict[str, bool] = {}

        async def refresh(job: TokenJob) -> None:
            results[job.name] = await job.refresh()

        jobs = list(self.jobs.values())
        await Runner(run_limit(self.config)).run_all(
            functools.partial(refresh, job) for job in jobs
        )
        return len(results) == len(jobs) and all(results.values())

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every job; let sink deliveries in flight finish (up to `timeout` s); close."""
        for job in self.jobs.values():
            job.stop()
        await self._deliveries.drain(timeout)
        for job in self.jobs.values():
            await job.publisher.close()
        if self._vault is not None:
            await self._vault.close()

    def is_ready(self, now: datetime) -> bool:
        """Every token holds a valid value and every sink has been given one."""
        return all(job.is_published(now) for job in self.jobs.values())

    def _vault_session(self, config: Config) -> VaultSession | None:
        if config.vault is None:
            return None
        return VaultSession(config.vault, clock=self._clock, scheduler=self._scheduler)

    def _build_job(self, name: str, spec: TokenSpec) -> TokenJob:
        defaults = self.config.defaults
        limits = spec.backoff or defaults.backoff
        backoff = self._shared.setdefault(
            (limits.min, limits.max), Backoff(min=limits.min, max=limits.max)
        )
        policy = RefreshPolicy(
            threshold=spec.refresh_threshold or defaults.refresh_threshold,
            jitter=defaults.jitter if spec.jitter is None else spec.jitter,
        )
        policy = self._shared.setdefault(policy, policy)  # one object per distinct policy
        slots = [
            SinkSlot(
                name,
                build_sink(options, SinkContext(name, sink_label(spec, index), self._vault)),
                clock=self._clock,
                scheduler=self._scheduler,
                backoff=backoff,
                rand=self._rand,
                withdraw_on_expiry=options.on_expiry == "withdraw",
            )
            for index, options in enumerate(spec.sinks)
        ]
        return TokenJob(
            token_request(self.config, name, self._shared),
            acquirer=self._acquirer,
            publisher=Publisher(slots, self._deliveries),
            policy=policy,
            backoff=backoff,
            clock=self._clock,
            scheduler=self._scheduler,
            rand=self._rand,
            durations=self._durations,
            state=self._state,
        )


def _same_request(old: TokenJob, new: TokenJob) -> bool:
    return fingerprint(old.request) == fingerprint(new.request)


def _inputs(config: Config, name: str) -> tuple[Any, ...]:
    """Everything a token's job is built from: equal inputs, equal job."""
    spec = config.tokens[name]
    defaults = config.defaults.model_copy(update={"startup_spread": None})
    http, state, vault = config.http.ca_bundle, config.state_dir, config.vault
    return spec, config.identity_for(spec), defaults, http, state, vault


def token_request(config: Config, name: str, shared: dict[Any, Any] | None = None) -> TokenRequest:
    """What to send for token `name`: endpoint, credential and target, from its identity.
    `shared` lets tokens of one identity share one endpoint and one credential object."""
    spec = config.tokens[name]
    identity = config.identity_for(spec)
    cache = {} if shared is None else shared
    endpoint_key = (spec.identity, spec.resource is not None)
    if endpoint_key not in cache:
        cache[endpoint_key] = _endpoint(config, spec)
    if spec.identity not in cache:
        cache[spec.identity] = build_credential(identity.client_id, identity.credential)
    return TokenRequest(
        name=name,
        endpoint=cache[endpoint_key],
        credential=cache[spec.identity],
        resource=spec.resource,
        scopes=tuple(spec.scopes or ()),
    )


def _endpoint(config: Config, spec: TokenSpec) -> Endpoint:
    identity = config.identity_for(spec)
    if identity.tenant is not None:
        authority = (identity.authority_host or DEFAULT_AUTHORITY_HOST).rstrip("/")
        version = "oauth2/token" if spec.resource else "oauth2/v2.0/token"
        token_url: str | None = f"{authority}/{identity.tenant}/{version}"
    else:
        token_url = identity.token_endpoint
    return Endpoint(
        token_url=token_url,
        issuer=identity.issuer,
        allow_insecure_http=identity.allow_insecure_http,
        ca_bundle=identity.ca_bundle or config.http.ca_bundle,
    )


def run_limit(config: Config) -> int:
    """How many refreshes may be in progress at once: enough to keep every connection slot busy
    while others publish, few enough that a burst of due tokens does not pile up in memory."""
    return 2 * config.http.max_concurrent_requests


def http_settings(config: Config) -> HttpSettings:
    http = config.http
    return HttpSettings(
        connect_timeout=http.connect_timeout.total_seconds(),
        read_timeout=http.timeout.total_seconds(),
        max_concurrent_requests=http.max_concurrent_requests,
    )
