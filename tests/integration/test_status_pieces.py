"""`/status` at scale: served in pieces of `STATUS_BATCH` tokens with the event loop handed back
between them (100,000 tokens in one go held refreshes, `/healthz` and `/readyz` up for seconds
and built the whole document in memory); tokens a reload removes while it is taken are left out
and the JSON stays whole; `tokend status` reads a document of any size tokend makes; and
`?tokens=problems` (`tokend status --problems`) shows only the tokens that need attention."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import entra_identity, write_config
from tests.support import idp as faults
from tests.support.asgi import asgi_get
from tests.support.harness import harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.processes import start_tokend, tokend, wait_for
from tests.support.servers import free_port, serve
from tests.support.status import engine_status
from tokend import status as status_module
from tokend.config import Config, validate_config
from tokend.engine import TokenView
from tokend.engine.query import OVERDUE
from tokend.metrics import Metrics
from tokend.status import (
    STATUS_BATCH,
    StatusUnavailable,
    fetch_status,
    is_status,
    render_table,
    status_pieces,
)
from tokend.status_app import create_app


def _document(
    idp: FakeIdp,
    tmp_path: Path,
    names: list[str],
    *,
    on_demand: bool = False,
    **tokens: dict[str, Any],
) -> dict[str, Any]:
    """A token per name with a file sink; `tokens`: more, as given."""

    def token(name: str) -> dict[str, Any]:
        sinks = [{"type": "file", "path": str(tmp_path / f"{name}.token")}]
        resource = f"https://{name}.example"
        return {"identity": "app", "resource": resource, "sinks": sinks, "on_demand": on_demand}

    return {
        "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
        "tokens": {name: token(name) for name in names} | tokens,
        "defaults": {"startup_spread": 0},
    }


def _config(
    idp: FakeIdp, tmp_path: Path, names: list[str], *, on_demand: bool = False, **tokens: Any
) -> Config:
    """`_document` with the local endpoint on (an on-demand token needs what asks for it)."""
    endpoint = {"endpoint": {"header_secret": "x-secret"}}
    document = _document(idp, tmp_path, names, on_demand=on_demand, **tokens)
    return validate_config(document | endpoint)


def _refuse(idp: FakeIdp, name: str) -> None:
    """The provider refuses token `name`'s resource from now on."""
    idp.policy = lambda request: (
        faults.entra_error(400, "invalid_resource", 500011)
        if request.form.get("resource") == f"https://{name}.example"
        else None
    )


@pytest.mark.parametrize(
    ("query", "on_demand", "shown"),
    [
        ("", False, 2 * STATUS_BATCH + 1),
        # dormant tokens never need attention: no batch has anything to send, and the event
        # loop must be handed back between them all the same
        ("?tokens=problems", True, 0),
    ],
)
def test_the_event_loop_runs_between_batches_of_status(
    idp: FakeIdp, tmp_path: Path, query: str, on_demand: bool, shown: int
) -> None:
    names = [f"t{index}" for index in range(2 * STATUS_BATCH + 1)]

    async def scenario() -> None:
        config = _config(idp, tmp_path, names, on_demand=on_demand)
        async with harness(config) as running:
            await running.start()  # nothing acquired yet: the virtual scheduler has not run
            engine = running.engine
            app = create_app(engine, Metrics(running.clock), running.clock)
            events: list[str] = []
            view = engine.view

            def recorded_view(name: str, now: datetime) -> TokenView | None:
                events.append("view")
                return view(name, now)

            engine.view = recorded_view  # type: ignore[method-assign]

            async def other_work() -> None:  # a refresh or a probe waiting for its turn
                while True:
                    events.append("other")
                    await asyncio.sleep(0)

            other = asyncio.create_task(other_work())
            await asyncio.sleep(0)
            _, body = await asgi_get(app, f"/status{query}")
            other.cancel()
            document = json.loads(body)
            assert len(document["tokens"]) == shown and document["tokens_total"] == len(names)
            runs = [len(list(run)) for event, run in itertools.groupby(events) if event == "view"]
            assert sum(runs) == len(names)
            assert max(runs) <= STATUS_BATCH  # never more than a batch without the others

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("taken_before", "removed", "left"),
    [
        (2, {"t2", "t3", "t5"}, ["t0", "t1", "t4"]),  # a whole batch gone, then a lone token
        (1, {"t0", "t1", "t3"}, ["t2", "t4", "t5"]),  # the first batch gone
        (1, {f"t{index}" for index in range(6)}, []),  # every token gone
    ],
)
def test_tokens_a_reload_removes_while_status_is_taken_are_left_out(
    idp: FakeIdp, tmp_path: Path, taken_before: int, removed: set[str], left: list[str]
) -> None:
    names = [f"t{index}" for index in range(6)]

    async def scenario() -> None:
        async with harness(_config(idp, tmp_path, names)) as running:
            pieces = status_pieces(running.engine, running.clock.now(), batch=2)
            taken = [next(pieces) for _ in range(taken_before)]
            kept = [name for name in names if name not in removed] or ["other"]
            summary = await running.reload(_config(idp, tmp_path, kept))
            assert sorted(summary.removed) == sorted(removed)
            document = json.loads("".join(taken + list(pieces)))
            assert list(document["tokens"]) == left

    asyncio.run(scenario())


def _tokend_status(tokens: int) -> dict[str, Any]:
    token = {
        "state": "fresh",
        "expires_at": None,
        "next_refresh": None,
        "consecutive_failures": 0,
        "last_error": None,
        "sinks": {
            "file": {"last_success": None, "consecutive_failures": 1, "last_error": "x" * 200}
        },
    }
    return {"time": "2026-11-26T00:00:00Z", "tokens": {f"t{i}": token for i in range(tokens)}}


def _serving(document: dict[str, Any]) -> Starlette:
    body = json.dumps({**document, "ready": True}).encode()

    async def status(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/status", status)])


def test_tokend_status_reads_a_status_larger_than_16_mib() -> None:
    """~60 MB at 100,000 tokens: `tokend status` once read 16 MiB and failed on the rest."""
    document = _tokend_status(80_000)  # ~24 MB
    with serve(_serving(document)) as url:
        status = fetch_status(url)
    assert len(status["tokens"]) == 80_000


def test_a_status_beyond_the_limit_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "STATUS_LIMIT", 1 << 20)
    with serve(_serving(_tokend_status(5_000))) as url, pytest.raises(StatusUnavailable) as caught:
        fetch_status(url)  # ~1.5 MB
    assert str(caught.value) == "/status is larger than 1 MiB"


def _with_problems(idp: FakeIdp, tmp_path: Path) -> Config:
    """`fine`; `refused` (the provider refuses its resource); `unwritable` (its only sink
    fails); `lazy` (on demand, nobody asked: never a problem)."""
    _refuse(idp, "refused")
    unwritable = {
        "identity": "app",
        "resource": "https://unwritable.example",
        "sinks": [{"type": "file", "path": "/proc/self/nothing"}],
    }
    lazy = {
        "identity": "app",
        "resource": "https://lazy.example",
        "on_demand": True,
        "sinks": [{"type": "file", "path": str(tmp_path / "lazy.token")}],
    }
    return _config(idp, tmp_path, ["fine", "refused"], unwritable=unwritable, lazy=lazy)


def test_only_the_tokens_that_need_attention_as_metrics_picks_them(
    idp: FakeIdp, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with harness(_with_problems(idp, tmp_path)) as running:
            await running.start()
            await running.run_for(timedelta(seconds=5))
            engine, now = running.engine, running.clock.now()
            app = create_app(engine, Metrics(running.clock), running.clock)
            status, body = await asgi_get(app, "/status?tokens=problems")
            assert status == 200
            problems = json.loads(body)
            assert list(problems["tokens"]) == ["refused", "unwritable"]
            assert set(problems["tokens"]) == set(engine.census(now, now - OVERDUE).attention)
            assert problems["tokens"]["refused"]["state"] == "failing"
            assert problems["tokens"]["unwritable"]["state"] == "sink_failing"
            assert problems["ready"] is False  # over every token, not only those shown
            assert (problems["tokens_shown"], problems["tokens_total"]) == ("problems", 4)
            every = json.loads((await asgi_get(app, "/status"))[1])
            assert list(every["tokens"]) == ["fine", "refused", "unwritable", "lazy"]
            assert (every["tokens_shown"], every["tokens_total"]) == ("all", 4)
            assert every["tokens"]["refused"] == problems["tokens"]["refused"]
            table = render_table(problems).splitlines()
            assert [line.split()[0] for line in table[1:4:2]] == ["refused", "unwritable"]
            assert table[-2:] == [
                "tokens that need attention: 2 of 4",
                "NOT READY: some token is not valid in every sink that readiness waits for",
            ]

    asyncio.run(scenario())


def test_no_problems_is_one_line_and_ready(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(_config(idp, tmp_path, ["a", "b"])) as running:
            await running.start()
            await running.run_for(timedelta(seconds=5))
            problems = engine_status(running.engine, running.clock.now(), problems=True)
            assert problems["tokens"] == {} and problems["ready"] is True
            assert render_table(problems).splitlines() == [
                "tokens that need attention: 0 of 2",
                "ready",
            ]

    asyncio.run(scenario())


def test_an_unknown_tokens_filter_is_a_clear_400(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(_config(idp, tmp_path, ["a"])) as running:
            app = create_app(running.engine, Metrics(running.clock), running.clock)
            answer = await asgi_get(app, "/status?tokens=failing")
            assert answer == (400, b"tokens must be all or problems\n")

    asyncio.run(scenario())


def test_a_problems_status_without_its_total_is_not_tokend_s() -> None:
    document = _tokend_status(1) | {"ready": True, "tokens_shown": "problems"}
    assert not is_status(document)
    assert not is_status(document | {"tokens_total": "2"})
    assert is_status(document | {"tokens_total": 2})


def test_tokend_status_problems_against_a_running_daemon(idp: FakeIdp, tmp_path: Path) -> None:
    _refuse(idp, "refused")
    port = free_port()
    document = _document(idp, tmp_path, ["fine", "refused"]) | {"listen": f"127.0.0.1:{port}"}
    process = start_tokend("run", "-c", str(write_config(tmp_path / "c.yaml", document)))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for((tmp_path / "fine.token").exists, what="the fine token")
        result = wait_for(  # until the refusal has come back: the token is failing
            lambda: (
                "failing" in (shown := tokend("status", "--problems", "--url", url)).stdout
                and shown
            ),
            what="tokend status to show the failing token",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stderr  # not ready: `refused` has no token
    assert lines[0].split()[:2] == ["TOKEN", "STATE"]
    assert lines[1].split()[:2] == ["refused", "failing"]
    assert "fine" not in result.stdout
    assert lines[-2:] == [
        "tokens that need attention: 1 of 2",
        "NOT READY: some token is not valid in every sink that readiness waits for",
    ]
