"""Getting each new token into every sink of its token, independently: a `Publisher` per token
(its `SinkSlot`s, in `tokend.engine.slot`), and `Deliveries`, the background lanes that run
deliveries a bounded number at a time.

Delivery is attempted at once for all sinks concurrently; each sink then goes at its own pace,
and a slow kind of sink never holds up another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime

from tokend.clock import Job
from tokend.engine.scheduler import Runner
from tokend.engine.slot import SinkSlot
from tokend.errors import TokendError
from tokend.token import Token


class Deliveries:
    """Sink deliveries in the background, in one lane per kind of sink.

    A lane runs a few deliveries at a time; the rest wait as plain callables. When thousands of
    tokens are obtained together, their deliveries queue cheaply instead of parking thousands of
    coroutines (measured at 10,000 tokens: +31 MB RSS without a bound). A kind of sink that is
    stuck (a remote store timing out) fills only its own lane: the others carry on.
    """

    def __init__(self, per_lane: int = 8) -> None:
        self._per_lane = per_lane
        self._lanes: dict[type, Runner] = {}

    def start(self, slot: SinkSlot) -> None:
        self.submit(slot, slot.deliver)

    def submit(self, slot: SinkSlot, job: Job) -> None:
        """Run `job` (a delivery or a check of `slot`) in the lane of `slot`'s kind of sink."""
        kind = type(slot.sink)
        lane = self._lanes.get(kind)
        if lane is None:
            lane = self._lanes[kind] = Runner(self._per_lane)
        lane.submit(job)

    async def idle(self) -> None:
        """Wait until no delivery runs or waits."""
        while any(lane.busy for lane in self._lanes.values()):
            for lane in list(self._lanes.values()):
                await lane.idle()

    async def drain(self, timeout: float) -> bool:
        """Let queued and running deliveries finish, up to `timeout` s; then stop them all.
        False if some were cut off."""
        deadline = asyncio.get_running_loop().time() + timeout
        finished = True
        for lane in self._lanes.values():
            remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
            finished = await lane.idle(remaining) and finished
        for lane in self._lanes.values():
            await lane.close(0)
        return finished


class Publisher:
    """All the sinks of one token.

    With leader election, a token with both shared sinks (Vault, Kubernetes) and pod-local ones
    (files) runs on every replica: on a follower its shared sinks stand by (`follow()`), written
    only by the leader, while its local sinks are written everywhere."""

    __slots__ = ("_deliveries", "slots")

    def __init__(self, slots: list[SinkSlot], deliveries: Deliveries) -> None:
        self.slots = tuple(slots)
        self._deliveries = deliveries

    @property
    def _active(self) -> Iterator[SinkSlot]:
        """The sinks this replica writes (all, without leader election)."""
        return (slot for slot in self.slots if not slot.standby)

    async def publish(self, token: Token) -> bool:
        """Deliver `token` to every sink concurrently and wait. True when every sink holds it
        (those standing by are given it when this replica leads)."""
        for slot in self.slots:
            slot.offer(token)
        delivered = await asyncio.gather(*(slot.deliver() for slot in self._active))
        return all(delivered)

    def publish_in_background(self, token: Token) -> None:
        """Deliver `token` to every sink without waiting: each sink at its own pace."""
        for slot in self.slots:
            slot.offer(token)
        for slot in self._active:
            self._deliveries.start(slot)

    def follow(self) -> None:
        """Another replica leads: the shared sinks stand by (a write in flight is cancelled)."""
        for slot in self.slots:
            if slot.shared and not slot.standby:
                slot.standby = True
                slot.halt()

    def lead(self, now: datetime) -> None:
        """This replica leads: the shared sinks take the newest valid token."""
        for slot in self.slots:
            if slot.standby:
                slot.standby = False
                slot.open()
                if slot.wanted is not None and slot.wanted.is_valid(now):
                    self._deliveries.start(slot)

    def last_error(self) -> TokendError | None:
        """The error of a sink that failed its last delivery, if any (the first such sink)."""
        return next((slot.last_error for slot in self.slots if slot.last_error), None)

    def all_hold_valid_token(self, now: datetime) -> bool:
        return all(slot.holds_valid_token(now) for slot in self._active)

    async def expire(self, now: datetime) -> None:
        await asyncio.gather(*(slot.expire(now) for slot in self.slots))

    def stop(self) -> None:
        for slot in self.slots:
            slot.stop()

    def halt(self) -> None:
        for slot in self.slots:
            slot.halt()

    def open(self) -> None:
        for slot in self._active:
            slot.open()

    async def close(self) -> None:
        for slot in self.slots:
            await slot.close()

    async def retire(self) -> None:
        """The token was removed from the config: each sink applies its `on_expiry` rule."""
        await asyncio.gather(*(slot.retire() for slot in self.slots))
