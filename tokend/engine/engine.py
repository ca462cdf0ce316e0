"""The engine: one `TokenJob` per configured token, started, stopped and asked about together."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.config import DEFAULT_AUTHORITY_HOST, Config, TokenSpec, sink_label
from tokend.engine.job import Acquirer, DurationObserver, TokenJob
from tokend.engine.policy import Backoff, RefreshPolicy, startup_at
from tokend.engine.publisher import Publisher, SinkSlot
from tokend.engine.scheduler import Scheduler
from tokend.engine.state import StateStore
from tokend.oauth import Endpoint, HttpSettings, TokenRequest, build_credential
from tokend.sinks import SinkContext, build_sink
from tokend.vault import VaultSession, bind_secrets


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
        # One Vault login for the whole process, shared by Vault sinks and {vault: ...} secrets.
        self._vault = (
            VaultSession(config.vault, clock=clock, scheduler=scheduler) if config.vault else None
        )
        self.config = config = bind_secrets(config, self._vault)
        self._acquirer = acquirer
        self._scheduler = scheduler
        self._durations = durations
        self._clock = clock
        self._rand = rand or random.Random()  # noqa: S311 - jitter, not cryptography
        self._state = StateStore(config.state_dir) if config.state_dir else None
        self.jobs: dict[str, TokenJob] = {
            name: self._build_job(name, spec) for name, spec in config.tokens.items()
        }

    async def start(self) -> None:
        """Resume stored tokens that are still valid; plan every other token's first
        acquisition, spread over `defaults.startup_spread`."""
        now = self._clock.now()
        stored = await asyncio.to_thread(
            lambda: {name: job.stored_token(now) for name, job in self.jobs.items()}
        )
        fresh_starts = [job for name, job in self.jobs.items() if stored[name] is None]
        spread = self.config.defaults.startup_spread
        for index, job in enumerate(fresh_starts):
            job.start(startup_at(now, index, len(fresh_starts), spread))
        await asyncio.gather(
            *(job.resume(token) for name, job in self.jobs.items() if (token := stored[name]))
        )

    async def refresh_all(self) -> bool:
        """Acquire and publish every token once, concurrently. True if all succeeded everywhere."""
        results = await asyncio.gather(*(job.refresh() for job in self.jobs.values()))
        return all(results)

    async def stop(self) -> None:
        for job in self.jobs.values():
            job.stop()
        for job in self.jobs.values():
            await job.publisher.close()
        if self._vault is not None:
            await self._vault.close()

    def is_ready(self, now: datetime) -> bool:
        """Every token holds a valid value and every sink has been given one."""
        return all(job.is_published(now) for job in self.jobs.values())

    def _build_job(self, name: str, spec: TokenSpec) -> TokenJob:
        defaults = self.config.defaults
        backoff_options = spec.backoff or defaults.backoff
        backoff = Backoff(min=backoff_options.min, max=backoff_options.max)
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
            token_request(self.config, name),
            acquirer=self._acquirer,
            publisher=Publisher(slots),
            policy=RefreshPolicy(
                threshold=spec.refresh_threshold or defaults.refresh_threshold,
                jitter=defaults.jitter if spec.jitter is None else spec.jitter,
            ),
            backoff=backoff,
            clock=self._clock,
            scheduler=self._scheduler,
            rand=self._rand,
            durations=self._durations,
            state=self._state,
        )


def token_request(config: Config, name: str) -> TokenRequest:
    """What to send for token `name`: endpoint, credential and target, from its identity."""
    spec = config.tokens[name]
    identity = config.identity_for(spec)
    if identity.tenant is not None:
        authority = (identity.authority_host or DEFAULT_AUTHORITY_HOST).rstrip("/")
        version = "oauth2/token" if spec.resource else "oauth2/v2.0/token"
        token_url: str | None = f"{authority}/{identity.tenant}/{version}"
    else:
        token_url = identity.token_endpoint
    return TokenRequest(
        name=name,
        endpoint=Endpoint(
            token_url=token_url,
            issuer=identity.issuer,
            allow_insecure_http=identity.allow_insecure_http,
            ca_bundle=identity.ca_bundle or config.http.ca_bundle,
        ),
        credential=build_credential(identity.client_id, identity.credential),
        resource=spec.resource,
        scopes=tuple(spec.scopes or ()),
    )


def http_settings(config: Config) -> HttpSettings:
    http = config.http
    return HttpSettings(
        connect_timeout=http.connect_timeout.total_seconds(),
        read_timeout=http.timeout.total_seconds(),
        max_concurrent_requests=http.max_concurrent_requests,
    )
