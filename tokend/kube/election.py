"""Leader election over a `coordination.k8s.io/v1` Lease (the `leader_election:` block), with
client-go's semantics: many replicas, one writer.

Every `retry_period` a replica tries to acquire the Lease, or, holding it, to renew it. A Lease
held by someone else is taken only once its holder has not renewed it for `lease_duration`, as
observed on this replica's own clock (so clocks need not agree). The leader that cannot renew
for `renew_deadline` (shorter than `lease_duration`) stops leading at that deadline, counted from
the moment its last successful renewal was *sent*: it has stopped writing before any other
replica may take the Lease. Every write is a compare-and-swap on the Lease's `resourceVersion`,
so of two replicas trying at once exactly one wins. A leader that stops cleanly releases the
Lease, so another takes over at its next try.

The elector tells one listener (the engine) when leadership is gained or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokend.durations import PositiveDuration
from tokend.kube import KUBERNETES, KubeError
from tokend.kube.access import Rule, refusals
from tokend.kube.errors import Attempt, classify, is_conflict, is_not_found
from tokend.kube.options import Namespace, ObjectName
from tokend.resources import RESOURCES, Environment, ResourceKind

if TYPE_CHECKING:
    from tokend.kube.client import KubeClient

log = logging.getLogger("tokend.leader")

_JITTER = 1.2  # client-go's JitterFactor: tries are spread over retry_period .. 1.2 x that


class LeaderElectionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ObjectName = "tokend"
    """The Lease's name."""
    namespace: Namespace | None = None
    """Default: tokend's own (its service account's, or the kubeconfig context's)."""
    identity: str | None = Field(default=None, min_length=1, max_length=128)
    """This replica's name in the Lease; default: $POD_NAME (else the host name) and a random
    suffix, unique per process."""
    lease_duration: PositiveDuration = timedelta(seconds=15)
    renew_deadline: PositiveDuration = timedelta(seconds=10)
    retry_period: PositiveDuration = timedelta(seconds=2)

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionOptions:
        if self.renew_deadline >= self.lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        if self.renew_deadline <= self.retry_period * _JITTER:
            raise ValueError("renew_deadline must be longer than 1.2 x retry_period")
        return self


def _default_identity() -> str:
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


class LeaderElector:
    """Runs the election in a task of its own once `start()` is called."""

    def __init__(self, options: LeaderElectionOptions, client: KubeClient) -> None:
        self.options = options
        self.identity = options.identity or _default_identity()
        self.leading = False
        self.transitions = 0
        """Times this replica started or stopped leading."""
        self._client = client
        self._on_change: Callable[[bool], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._observed: tuple[Any, ...] | None = None  # the Lease record as last seen
        self._observed_at = 0.0  # monotonic time it was first seen so
        self._last_error: str | None = None
        self._duration = options.lease_duration.total_seconds()
        self._seconds = max(round(self._duration), 1)  # the Lease holds whole seconds
        self._deadline = options.renew_deadline.total_seconds()
        self._retry = options.retry_period.total_seconds()

    def __repr__(self) -> str:
        return f"LeaderElector({self.options.name!r}, identity={self.identity!r})"

    @property
    def namespace(self) -> str:
        return self.options.namespace or self._client.namespace

    @property
    def where(self) -> str:
        return f"lease {self.namespace}/{self.options.name}"

    def start(self, on_change: Callable[[bool], None]) -> None:
        """Campaign in the background; `on_change(True)` once leading, `(False)` once not."""
        self._on_change = on_change
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._campaign())

    async def close(self) -> None:
        """Stop campaigning; if leading, release the Lease so another replica takes over at its
        next try rather than after `lease_duration`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.leading:
            self.leading = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._release(), self._deadline)

    def close_sync(self) -> None:
        return None  # `tokend check` never campaigns

    async def _campaign(self) -> None:
        while True:
            while not await self._attempt(self._retry * _JITTER):
                await asyncio.sleep(self._retry * random.uniform(1, _JITTER))  # noqa: S311
            self._change(True)
            await self._keep_renewing()
            self._change(False)

    async def _keep_renewing(self) -> None:
        """Renew every `retry_period` until a renewal has not succeeded for `renew_deadline`."""
        renewed = time.monotonic()
        while True:
            deadline = renewed + self._deadline
            await asyncio.sleep(max(min(self._retry, deadline - time.monotonic()), 0))
            started = time.monotonic()
            if started >= deadline:
                log.error("%s: not renewed for %gs: stopped leading", self.where, self._deadline)
                return
            if await self._attempt(deadline - started):
                renewed = started
            elif not self.leading:
                return  # someone else holds it now

    async def _attempt(self, timeout: float) -> bool:
        """One try to acquire or renew, within `timeout` seconds. True when this replica holds
        the Lease afterwards."""
        try:
            return await asyncio.wait_for(self._try_acquire_or_renew(), timeout)
        except TimeoutError:
            self._failed(f"{self.where}: no answer from the API server within {timeout:.1f}s")
        except KubeError as exc:
            self._failed(str(exc))
        except Exception as exc:  # the campaign must go on whatever one try met
            self._failed(str(classify(exc, self._what("get"))))
        return False

    async def _try_acquire_or_renew(self) -> bool:
        from lightkube.resources.coordination_v1 import Lease

        client = self._client.async_client()
        now = datetime.now(UTC)
        try:
            lease = await client.get(Lease, self.options.name, namespace=self.namespace)
        except Exception as exc:
            if not is_not_found(exc):
                raise classify(exc, self._what("get")) from None
            return await self._create(now)
        spec = lease.spec
        record = (spec.holderIdentity, spec.renewTime, spec.leaseTransitions, spec.acquireTime)
        mono = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, mono
        holder = spec.holderIdentity
        if holder and holder != self.identity:
            if self.leading:
                log.error("%s: now held by %s: stopped leading", self.where, holder)
                self.leading = False
                return False
            if self._observed_at + self._duration > mono:
                self._succeeded()
                return False
        if holder != self.identity:
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
            spec.acquireTime = now
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = self._seconds
        spec.renewTime = now
        try:
            lease = await client.replace(lease)
        except Exception as exc:
            if is_conflict(exc):
                return False  # someone else wrote it since we read it
            raise classify(exc, self._what("update")) from None
        self._observed = (
            spec.holderIdentity, lease.spec.renewTime, spec.leaseTransitions, spec.acquireTime
        )  # fmt: skip
        self._observed_at = mono
        self._succeeded()
        return True

    async def _create(self, now: datetime) -> bool:
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.coordination_v1 import Lease

        lease = Lease(
            metadata=ObjectMeta(name=self.options.name, namespace=self.namespace),
            spec=LeaseSpec(
                holderIdentity=self.identity,
                leaseDurationSeconds=self._seconds,
                leaseTransitions=0,
                acquireTime=now,
                renewTime=now,
            ),
        )
        try:
            await self._client.async_client().create(lease, namespace=self.namespace)
        except Exception as exc:
            if is_conflict(exc):
                return False  # another replica created it first
            raise classify(exc, self._what("create")) from None
        self._succeeded()
        return True

    async def _release(self) -> None:
        from lightkube.resources.coordination_v1 import Lease

        client = self._client.async_client()
        lease = await client.get(Lease, self.options.name, namespace=self.namespace)
        if lease.spec.holderIdentity != self.identity:
            return
        lease.spec.holderIdentity = None
        lease.spec.leaseDurationSeconds = 1
        lease.spec.renewTime = datetime.now(UTC)
        await client.replace(lease)
        log.info("%s: released", self.where)

    def _change(self, leading: bool) -> None:
        self.leading = leading
        self.transitions += 1
        if leading:
            log.info("%s: became the leader (as %s)", self.where, self.identity)
        if self._on_change is not None:
            self._on_change(leading)

    def _what(self, verb: str) -> Attempt:
        name = None if verb == "create" else self.options.name
        return Attempt(self._client.who, verb, "leases", name, self.namespace, self.where)

    def _failed(self, message: str) -> None:
        if message != self._last_error:
            log.warning("leader election: %s", message)
        self._last_error = message

    def _succeeded(self) -> None:
        if self._last_error is not None:
            log.info("leader election: %s: reachable again", self.where)
        self._last_error = None


def _elector(options: LeaderElectionOptions, environment: Environment) -> LeaderElector:
    if environment.resources is None:
        raise ValueError("leader election needs the shared resources")  # Resources fills it in
    return LeaderElector(options, environment.resources.get(KUBERNETES))


def _check(elector: LeaderElector) -> list[str]:
    """`tokend check`: may tokend hold its Lease?"""
    try:
        namespace = elector.namespace
    except KubeError as exc:
        return [f"name: {exc}"]
    name, group = elector.options.name, "coordination.k8s.io"
    rules = [Rule(verb, "leases", namespace, name, group) for verb in ("get", "update")]
    rules.append(Rule("create", "leases", namespace, None, group))
    return [f"name: {line}" for line in refusals(elector._client, rules, where=elector.where)]


LEADER_ELECTION: ResourceKind[LeaderElectionOptions, LeaderElector] = RESOURCES.register(
    "leader_election",
    ResourceKind(
        section="leader_election",
        options=LeaderElectionOptions,
        create=_elector,
        summary="name, lease_duration, renew_deadline, retry_period",
        check=_check,
        leadership=True,
    ),
)
