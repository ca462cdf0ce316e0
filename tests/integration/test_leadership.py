"""Leader-only jobs in the engine, on virtual time with a test-only leadership and a test-only
shared sink: tokens whose sinks are all shared between replicas run only while this replica
leads; a token with a file sink as well runs everywhere, its shared sink written by the leader
only; others run everywhere; a follower stays ready and reports no metrics for what it does not
write; losing leadership cancels a write in flight and
keeps a token whose request was in flight from being published."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict
from pydantic import dataclasses as pydantic_dataclasses

from tests.conftest import entra_identity
from tests.support.harness import Harness, harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.status import engine_status
from tokend.config import validate_config
from tokend.engine.outcome import Phase
from tokend.metrics import Metrics
from tokend.resources import RESOURCES, Environment, ResourceKind
from tokend.sinks import SINKS, SinkContext, SinkOptionsBase, SinkType
from tokend.status import render_table
from tokend.token import Token


class TossOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str = ""


class Toss:
    """A leadership the test decides."""

    def __init__(self, options: TossOptions, environment: Environment) -> None:
        self.on_change: Callable[[bool], None] | None = None

    def start(self, on_change: Callable[[bool], None]) -> None:
        self.on_change = on_change

    def flip(self, leading: bool) -> None:
        assert self.on_change is not None, "the engine has not started the election"
        self.on_change(leading)

    async def close(self) -> None:
        return None

    def close_sync(self) -> None:
        return None


TOSS = ResourceKind(section="toss", options=TossOptions, create=Toss, summary="", leadership=True)


class Shelf:
    """What every replica would share; `gate` holds writes back while it is clear."""

    values: ClassVar[dict[str, str]] = {}
    gate = asyncio.Event()
    on_enter: ClassVar[Callable[[], None] | None] = None


@pydantic_dataclasses.dataclass(
    config=ConfigDict(extra="forbid"), frozen=True, slots=True, kw_only=True
)
class ShelfOptions(SinkOptionsBase):
    type: Literal["shelf"]
    key: str

    def target(self) -> str:
        return f"shelf {self.key}"


class ShelfSink:
    def __init__(self, options: ShelfOptions, context: SinkContext) -> None:
        self.name = context.sink_name
        self._key = options.key

    async def publish(self, token: Token) -> None:
        if Shelf.on_enter is not None:
            Shelf.on_enter()
        await Shelf.gate.wait()
        Shelf.values[self._key] = token.value

    async def withdraw(self) -> None:
        Shelf.values.pop(self._key, None)

    async def close(self) -> None:
        return None


@pytest.fixture
def kinds() -> Iterator[None]:
    RESOURCES.register("toss", TOSS)
    SINKS.register("shelf", SinkType(ShelfOptions, ShelfSink, shared=True))
    Shelf.values.clear()
    Shelf.gate, Shelf.on_enter = asyncio.Event(), None
    Shelf.gate.set()
    yield
    SINKS.unregister("shelf")
    RESOURCES.unregister("toss")


def config_for(
    idp: FakeIdp, tmp_path: Path, toss: dict[str, Any] | None = None, *, mixed: bool = True
) -> Any:
    def token(*sinks: dict[str, Any]) -> dict[str, Any]:
        return {"identity": "app", "resource": "https://crm.example", "sinks": list(sinks)}

    return validate_config(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "shared": token({"type": "shelf", "key": "shared"}),
                "local": token({"type": "file", "path": str(tmp_path / "local")}),
            }
            | (
                {
                    "mixed": token(
                        {"type": "shelf", "key": "mixed"},
                        {"type": "file", "path": str(tmp_path / "mixed")},
                    )
                }
                if mixed
                else {}
            ),
            "defaults": {"startup_spread": 0},
            "toss": {} if toss is None else toss,
        }
    )


def toss(h: Harness) -> Toss:
    toss: Toss = h.assembly.resources.get(TOSS)
    return toss


async def launched(h: Harness) -> None:
    """The engine launches leader-only jobs in a task of its own: wait until they are planned."""
    for _ in range(1000):
        if h.scheduler.due("shared"):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("leader-only jobs were not launched")


async def settle(h: Harness) -> None:
    await h.run_for(timedelta(0))


def metric_lines(h: Harness) -> list[str]:
    metrics = Metrics(h.clock)
    metrics.watch(h.engine)
    return metrics.render().decode().splitlines()


@pytest.mark.usefixtures("kinds")
def test_only_the_leader_runs_tokens_with_shared_sinks(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(config_for(idp, tmp_path)) as h:
            await h.start()
            await settle(h)
            now = h.clock.now()
            views = {view.name: view for view in h.engine.query(now)}
            assert [name for name, view in views.items() if view.standby] == ["shared"]
            assert views["shared"].phase == "standby" and views["local"].phase == "fresh"
            mixed = views["mixed"]  # runs here too: its file sink is this pod's
            assert mixed.phase == "fresh" and mixed.ready and mixed.published
            assert [(sink.name, sink.standby) for sink in mixed.sinks] == [
                ("shelf", True),
                ("file", False),
            ]
            assert [h.engine.view(name, now) for name in views] == list(views.values())
            assert h.engine.view("nope", now) is None
            assert h.engine.is_ready(now)  # a follower stays ready
            status = engine_status(h.engine, now)
            assert status["tokens"]["mixed"]["sinks"]["shelf"]["standby"] is True
            assert "sink shelf: standby (the leader writes it)" in render_table(status)
            assert (tmp_path / "local").exists() and (tmp_path / "mixed").exists()
            assert Shelf.values == {} and len(idp.token_requests) == 2
            lines = metric_lines(h)
            assert "tokend_leader 0.0" in lines
            assert not [line for line in lines if 'token="shared"' in line]
            assert not [line for line in lines if 'sink="shelf"' in line]
            assert [line for line in lines if 'token="mixed"' in line and 'sink="file"' in line]

            toss(h).flip(True)
            await launched(h)
            await settle(h)
            assert Shelf.values["mixed"] == h.job("mixed").token.value  # the one it held
            assert set(Shelf.values) == {"shared", "mixed"}
            asked = len(idp.token_requests)
            assert asked == 3  # only the leader-only token was acquired on taking the lead
            assert h.engine.leadership() is not None
            assert "tokend_leader 1.0" in metric_lines(h)
            assert "tokend_leader_transitions_total 1.0" in metric_lines(h)

            toss(h).flip(False)
            await settle(h)
            Shelf.values.clear()
            mixed_file = (tmp_path / "mixed").read_text()
            assert await h.run_for(timedelta(hours=3)) > 0  # local and mixed tokens carry on
            assert Shelf.values == {}
            assert (tmp_path / "mixed").read_text() != mixed_file
            assert all(view.ready for view in h.engine.query(h.clock.now()))

            toss(h).flip(True)  # leading again: the token it holds is published and refreshed
            await launched(h)
            await settle(h)
            assert set(Shelf.values) == {"shared", "mixed"}

    asyncio.run(scenario())


@pytest.mark.usefixtures("kinds")
def test_losing_leadership_cancels_a_write_in_flight(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(config_for(idp, tmp_path)) as h:
            await h.start()
            await settle(h)
            Shelf.gate.clear()  # a write that hangs...
            Shelf.on_enter = lambda: toss(h).flip(False)  # ...while leadership is lost
            toss(h).flip(True)
            await launched(h)
            failsafe = asyncio.get_running_loop().call_later(5, Shelf.gate.set)
            await settle(h)  # returns: the hanging writes were cancelled
            failsafe.cancel()
            Shelf.gate.set()
            await asyncio.sleep(0.05)
            assert Shelf.values == {}
            slot = h.slot("shelf", "shared")
            assert (slot.held, slot.successes, slot.errors) == (None, 0, 0)
            assert h.job("shared").token is not None

    asyncio.run(scenario())


@pytest.mark.usefixtures("kinds")
def test_a_token_in_flight_when_leadership_is_lost_is_not_published(
    idp: FakeIdp, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with harness(config_for(idp, tmp_path)) as h:
            loop, lost = asyncio.get_running_loop(), threading.Event()

            def lose() -> None:
                toss(h).flip(False)
                lost.set()

            async def slow() -> None:  # the identity provider answers once leadership is lost
                loop.call_soon_threadsafe(lose)
                await asyncio.to_thread(lost.wait, 10)

            await h.start()
            await settle(h)
            assert len(idp.token_requests) == 2
            idp.fail(slow)
            toss(h).flip(True)
            await launched(h)
            await settle(h)
            assert lost.is_set()
            asked = len(idp.token_requests)
            assert asked == 3  # local and mixed at start, and the one in flight
            assert "shared" not in Shelf.values  # its answer was not published (nor kept:
            assert h.job("shared").token is None  # not this replica's)

    asyncio.run(scenario())


@pytest.mark.usefixtures("kinds")
def test_leader_election_changes_wait_for_a_restart(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with harness(config_for(idp, tmp_path)) as h:
            await h.start()
            elector = toss(h)
            elector.flip(True)
            await launched(h)
            await settle(h)
            await h.reload(config_for(idp, tmp_path, {"label": "changed"}))
            assert toss(h) is elector  # the same election, still followed
            elector.flip(False)
            assert h.engine.leadership() is not None
            assert not h.engine.leadership().leading  # type: ignore[union-attr]
            assert [v.name for v in h.engine.query(h.clock.now()) if v.standby] == ["shared"]

    asyncio.run(scenario())
    assert "reload: changes to toss take effect at the next restart" in caplog.text


@pytest.mark.usefixtures("kinds")
def test_each_change_of_leadership_is_counted_and_said_once(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`tokend_leader_transitions` counts changes, not calls; each change is one log line
    naming how many tokens it starts or stops; a stopped engine ignores the election."""

    def said() -> list[tuple[str, str]]:
        lines = [
            (record.levelname, record.getMessage())
            for record in caplog.records
            if "leading" in record.getMessage()
        ]
        caplog.clear()
        return lines

    async def scenario() -> None:
        async with harness(config_for(idp, tmp_path)) as h:
            await h.start()
            await settle(h)
            elector = toss(h)
            caplog.clear()
            elector.flip(True)
            elector.flip(True)  # told again: no change
            await launched(h)
            await settle(h)
            assert said() == [
                (
                    "INFO",
                    "leading: starting 1 tokens with only shared sinks, and the shared sinks of 1 more",
                )
            ]
            elector.flip(False)
            elector.flip(False)
            assert said() == [
                (
                    "WARNING",
                    "not leading: stopped 1 tokens with only shared sinks, and the shared sinks of 1 more",
                )
            ]
            elector.flip(True)
            await launched(h)
            await settle(h)
            leadership = h.engine.leadership()
            assert leadership is not None
            assert (leadership.leading, leadership.transitions) == (True, 3)
            engine = h.engine
        elector.flip(False)  # after the stop
        assert engine.leadership() == leadership
        assert said() == [
            (
                "INFO",
                "leading: starting 1 tokens with only shared sinks, and the shared sinks of 1 more",
            )
        ]

    with caplog.at_level("INFO", "tokend.engine"):
        asyncio.run(scenario())


@pytest.mark.usefixtures("kinds")
def test_a_follower_reloading_neither_withdraws_nor_starts_the_leaders_tokens(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """A token with a shared sink removed on a replica that led before: the value there is the
    new leader's now, not withdrawn even with `on_expiry: withdraw`; one added: it waits for
    leadership."""

    def config(**tokens: dict[str, Any]) -> Any:
        return validate_config(
            {
                "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
                "tokens": {
                    "local": {
                        "identity": "app",
                        "resource": "https://crm.example",
                        "sinks": [{"type": "file", "path": str(tmp_path / "local")}],
                    },
                    **{
                        name: {"identity": "app", "resource": "https://crm.example", **token}
                        for name, token in tokens.items()
                    },
                },
                "defaults": {"startup_spread": 0},
                "toss": {},
            }
        )

    withdrawing = {"sinks": [{"type": "shelf", "key": "shared", "on_expiry": "withdraw"}]}
    added = {"sinks": [{"type": "shelf", "key": "added"}]}

    async def scenario() -> None:
        async with harness(config(shared=withdrawing)) as h:
            await h.start()
            await settle(h)
            toss(h).flip(True)
            await launched(h)
            await settle(h)
            assert set(Shelf.values) == {"shared"}
            toss(h).flip(False)
            Shelf.values["shared"] = "the leader's"
            asked = len(idp.token_requests)
            await h.reload(config(added=added))
            await settle(h)
            assert Shelf.values == {"shared": "the leader's"}
            assert len(idp.token_requests) == asked
            view = h.engine.view("added", h.clock.now())
            assert view is not None and view.standby and h.job("added").token is None

    asyncio.run(scenario())


@pytest.mark.usefixtures("kinds")
def test_without_mixed_tokens_the_line_names_only_the_leader_only_ones_and_a_follower_counts_them(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The census of a follower counts the leader's tokens as standby, not by their phase."""

    async def scenario() -> None:
        async with harness(config_for(idp, tmp_path, mixed=False)) as h:
            await h.start()
            await settle(h)
            census = h.engine.census(h.clock.now(), h.clock.now())
            assert (census.states[Phase.STANDBY], census.states[Phase.FRESH]) == (1, 1)
            caplog.clear()
            toss(h).flip(True)
            await launched(h)
            await settle(h)
            toss(h).flip(False)
            lines = [r.getMessage() for r in caplog.records if "leading" in r.getMessage()]
            assert lines == [
                "leading: starting 1 tokens with only shared sinks",
                "not leading: stopped 1 tokens with only shared sinks",
            ]

    with caplog.at_level("INFO", "tokend.engine"):
        asyncio.run(scenario())
