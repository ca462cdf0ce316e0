"""Reloading the config: unchanged tokens keep their state and schedule, added ones start,
changed ones keep a still-valid token, removed ones stop, and a bad config changes nothing."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import pytest

from tests.conftest import entra_identity, write_config
from tests.support.clock import FakeClock
from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.processes import start_tokend, wait_for
from tests.support.servers import free_port
from tokend.config import Config
from tokend.daemon import Daemon
from tokend.engine import ReloadSummary


def _token(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "identity": "app",
        "resource": f"https://{name}.example",
        "sinks": [{"type": "file", "path": str(tmp_path / f"{name}.token")}],
        **extra,
    }


def _document(idp: FakeIdp, tokens: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"identities": {"app": entra_identity(idp, CLIENT_SECRET)}, "tokens": tokens, **extra}


def test_engine_reload(idp: FakeIdp, tmp_path: Path) -> None:
    before = Config.model_validate(
        _document(idp, {name: _token(tmp_path, name) for name in ("crm", "graph", "old")})
    )
    graph_sinks = [
        {"type": "file", "path": str(tmp_path / "graph.token")},
        {"type": "file", "path": str(tmp_path / "graph-copy.token")},
    ]
    after = Config.model_validate(
        _document(
            idp,
            {
                "crm": _token(tmp_path, "crm"),
                "graph": _token(tmp_path, "graph", sinks=graph_sinks),
                "api": _token(tmp_path, "api"),
            },
        )
    )
    clock = FakeClock()

    async def scenario() -> None:
        h = Harness(before, clock, rand=random.Random(1))
        engine, scheduler = h.engine, h.scheduler
        try:
            await h.start()
            await scheduler.run_until(clock.now() + timedelta(minutes=1))
            assert len(idp.token_requests) == 3
            crm, graph = engine.jobs["crm"], engine.jobs["graph"]
            crm_next, graph_token = crm.next_run, graph.token

            summary = await h.reload(after)

            assert (summary.added, summary.changed, summary.removed, summary.unchanged) == (
                ["api"],
                ["graph"],
                ["old"],
                ["crm"],
            )
            assert engine.jobs["crm"] is crm and crm.next_run == crm_next
            assert scheduler.due("crm") == crm_next
            new_graph = engine.jobs["graph"]
            assert new_graph is not graph and new_graph.token is graph_token  # carried over
            assert (tmp_path / "graph-copy.token").read_text() == graph_token.value
            assert scheduler.due("old") is None
            assert set(engine.jobs) == {"crm", "graph", "api"}
            await scheduler.run_until(clock.now())
            assert len(idp.token_requests) == 4  # only api was requested
            assert (tmp_path / "api.token").read_text() == engine.jobs["api"].token.value
        finally:
            await h.stop()

    asyncio.run(scenario())


def test_sighup_applies_a_good_config_and_rejects_a_bad_one(idp: FakeIdp, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"
    log = tmp_path / "tokend.log"
    listen = {"listen": f"127.0.0.1:{port}", "defaults": {"startup_spread": 0}}
    write_config(config, _document(idp, {"crm": _token(tmp_path, "crm")}, **listen))
    process = start_tokend("run", "-c", str(config), log=log)
    base = f"http://127.0.0.1:{port}"

    def status() -> dict[str, Any] | None:
        try:
            return httpx2.get(f"{base}/status").json()  # type: ignore[no-any-return]
        except httpx2.TransportError:
            return None

    try:
        wait_for((tmp_path / "crm.token").exists, what="the first token")
        crm_before = status()["tokens"]["crm"]  # type: ignore[index]

        bad = _document(idp, {"crm": {**_token(tmp_path, "crm"), "identity": "nope"}}, **listen)
        write_config(config, bad)
        process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "carrying on with the config loaded before" in log.read_text(), what="rejection"
        )
        assert (
            f"reload rejected: {config}: tokens.crm.identity: unknown identity 'nope'"
            in log.read_text()
        )
        assert status()["tokens"]["crm"]["next_refresh"] == crm_before["next_refresh"]  # type: ignore[index]

        # Valid YAML and schema, but `tokend check` would reject it: a reload must too.
        unset = _document(idp, {"crm": _token(tmp_path, "crm")}, **listen)
        unset["identities"]["app"]["credential"]["secret"] = {"env": "TOKEND_TEST_UNSET"}
        write_config(config, unset)
        process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: log.read_text().count("carrying on with the config loaded before") == 2,
            what="the second rejection",
        )
        assert "environment variable TOKEND_TEST_UNSET is not set" in log.read_text()

        tokens = {"crm": _token(tmp_path, "crm"), "graph": _token(tmp_path, "graph")}
        write_config(config, _document(idp, tokens, **listen))
        process.send_signal(signal.SIGHUP)
        wait_for((tmp_path / "graph.token").exists, what="the added token")
        current = status()
        assert current is not None and set(current["tokens"]) == {"crm", "graph"}
        assert current["tokens"]["crm"]["next_refresh"] == crm_before["next_refresh"]
        assert "reloaded: 1 added (graph), 0 changed, 0 removed, 1 unchanged" in log.read_text()

        write_config(config, _document(idp, {"graph": _token(tmp_path, "graph")}, **listen))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: set((status() or {}).get("tokens", {})) == {"graph"}, what="removal")
        assert 'token="crm"' not in httpx2.get(f"{base}/metrics").text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    assert "Traceback" not in log.read_text()


def test_tokend_status(idp: FakeIdp, tmp_path: Path) -> None:
    from tests.support.processes import tokend

    port = free_port()
    config = write_config(
        tmp_path / "config.yaml",
        _document(idp, {"crm": _token(tmp_path, "crm")}, listen=f"127.0.0.1:{port}"),
    )
    process = start_tokend("run", "-c", str(config), log=tmp_path / "tokend.log")
    try:
        wait_for((tmp_path / "crm.token").exists, what="the first token")
        table = tokend("status", "-c", str(config))
        assert table.returncode == 0, table.stderr
        header, crm_line, sink_line, verdict = table.stdout.splitlines()
        assert header.split() == [
            "TOKEN",
            "STATE",
            "EXPIRES",
            "IN",
            "NEXT",
            "TRY",
            "FAILURES",
            "LAST",
            "ERROR",
        ]
        assert crm_line.split()[:2] == ["crm", "fresh"]
        assert crm_line.split()[2].startswith("59m")
        assert sink_line.strip().startswith("sink file: ok, last success")
        assert verdict == "ready"
        raw = tokend("status", "--url", f"http://127.0.0.1:{port}", "--json")
        assert json.loads(raw.stdout)["tokens"]["crm"]["state"] == "fresh"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    gone = tokend("status", "--url", f"http://127.0.0.1:{port}")
    assert gone.returncode == 1
    assert gone.stderr == (
        f"cannot read tokend's status from http://127.0.0.1:{port}: "
        "cannot connect: Connection refused\n"
    )


def test_a_job_stopped_while_its_request_is_in_flight_plans_no_more_runs(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """A reload removes a token while its request is in flight: when the answer comes, the old
    job must not plan itself again (it would keep acquiring, unseen, for the life of the
    process), and a new job under the same name must keep its own schedule."""
    both = Config.model_validate(
        _document(idp, {name: _token(tmp_path, name) for name in ("crm", "old")})
    )
    crm_only = Config.model_validate(_document(idp, {"crm": _token(tmp_path, "crm")}))
    clock = FakeClock()

    async def scenario() -> None:
        h = Harness(both, clock, rand=random.Random(1))
        acquire = h.client.acquire
        summaries: list[ReloadSummary] = []

        async def reload_meanwhile(request: Any) -> Any:
            """The answer to old's first request comes after a SIGHUP removed old."""
            if request.name == "old" and not summaries:
                summaries.append(await h.reload(crm_only))
            return await acquire(request)

        h.client.acquire = reload_meanwhile  # type: ignore[method-assign]
        try:
            await h.start()
            await h.run_for(timedelta(minutes=1))
            assert summaries[0].removed == ["old"]
            assert h.scheduler.due("old") is None
            requests = len(idp.token_requests)
            await h.run_for(timedelta(hours=5))
            runs = [key for _, key in h.scheduler.runs]
            assert runs.count("old") == 1
            assert len(idp.token_requests) - requests == runs.count("crm") - 1
        finally:
            await h.stop()

    asyncio.run(scenario())


def test_the_heap_is_frozen_once_settled_and_again_after_a_reload_that_replaced_tokens(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """`tokend.heap`: the first freeze comes once start-up has settled; an unchanged reload
    leaves the frozen objects alone; a reload that adds a token collects and freezes again.
    Free memory goes back to the system once settled and after every reload."""
    config, log = tmp_path / "config.yaml", tmp_path / "tokend.log"
    settings = {"defaults": {"startup_spread": 0}, "listen": None}
    write_config(config, _document(idp, {"crm": _token(tmp_path, "crm")}, **settings))
    process = start_tokend("--log-level", "debug", "run", "-c", str(config), log=log)

    def freezes() -> int:
        return log.read_text().count("garbage collector: ")

    try:
        wait_for(lambda: freezes() == 1, what="the freeze after start-up")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded: 0 added, 0 changed" in log.read_text(), what="a reload")
        tokens = {"crm": _token(tmp_path, "crm"), "graph": _token(tmp_path, "graph")}
        write_config(config, _document(idp, tokens, **settings))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded: 1 added" in log.read_text(), what="the second reload")
        assert freezes() == 2
        assert re.search(r"garbage collector: \d+ objects frozen in [\d.]+s", log.read_text())
        assert len(re.findall(r"free memory handed back in [\d.]+s", log.read_text())) == 3
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_a_reload_failing_in_an_unforeseen_way_keeps_the_config_and_ends_the_reload(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever reading the config raises (here what `os` says of a NUL in a path), the reload
    is rejected in one line and systemd hears the reload end (READY=1 follows RELOADING=1)."""
    config = Config.model_validate(_document(idp, {"crm": _token(tmp_path, "crm")}))

    def unreadable() -> Any:
        raise ValueError("embedded null byte")

    class Service:
        said: ClassVar[list[str]] = []

        def reloading(self) -> None:
            self.said.append("reloading")

        def reloaded(self, accepted: bool) -> None:
            self.said.append(f"reloaded {accepted}")

    async def scenario() -> bool:
        daemon = Daemon(config, reload_config=unreadable)
        daemon.service = Service()  # type: ignore[assignment]
        try:
            return await daemon._reload_for_signal()
        finally:
            await daemon.client.aclose()

    assert asyncio.run(scenario()) is False
    assert Service.said == ["reloading", "reloaded False"]
    (line,) = [r.getMessage() for r in caplog.records if r.message.startswith("reload")]
    assert line == (
        "reload rejected: reading the config failed (ValueError: embedded null byte); "
        "carrying on with the config loaded before"
    )
