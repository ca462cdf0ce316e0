"""Never a traceback, and `tokend check` finds what `tokend run` would meet: hostile bodies, broken
CA bundles, files that collide through symbolic links, signal floods, a status URL that is not
tokend, a closed pipe. Each a real process, or real HTTP on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import entra_identity, write_config
from tests.support import idp as faults
from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.processes import TOKEND, start_tokend, tokend, wait_for
from tests.support.servers import free_port, serve
from tokend.config import Config
from tokend.engine import Phase


def _document(idp: FakeIdp, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
        "tokens": {
            "crm": {
                "identity": "app",
                "resource": "https://crm.example",
                "sinks": [{"type": "file", "path": str(tmp_path / "crm.token")}],
            }
        },
        "listen": None,
        **extra,
    }


def test_a_deeply_nested_body_is_a_transient_failure(idp: FakeIdp, tmp_path: Path) -> None:
    """`[` x 100000 from the IdP: a body that is not a token response, not a RecursionError."""
    idp.fail(faults.raw(200, "[" * 100_000, "application/json"))

    async def scenario() -> None:
        h = Harness(Config.model_validate(_document(idp, tmp_path)))
        try:
            assert not await h.refresh_all()
            error = h.job().last_error
            assert error is not None and error.code == "not_json" and error.transient
        finally:
            await h.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "missing.pem", "no such file"),
        (lambda d: _write(d / "not.pem", "this is not a certificate\n"), "not a PEM file"),
        (lambda d: d, "is a directory, not a PEM file"),
    ],
)
def test_a_bad_ca_bundle_is_found_by_check_and_refused_by_run(
    idp: FakeIdp, tmp_path: Path, make: Any, problem: str
) -> None:
    bundle = make(tmp_path)
    config = write_config(
        tmp_path / "c.yaml", _document(idp, tmp_path, http={"ca_bundle": str(bundle)})
    )
    for command in ("check", "once", "run"):
        result = tokend(command, "-c", str(config))
        assert result.returncode == 2, (command, result.stderr)
        assert f"{config}: http.ca_bundle: ca_bundle {bundle}: {problem}" in result.stderr
        assert "Traceback" not in result.stderr


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_what_run_would_meet_check_finds(idp: FakeIdp, tmp_path: Path) -> None:
    """A sink path that is a directory, two tokens writing one file through a symlinked
    directory, a state_dir that is a file: each a line from check, and run refuses to start."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (tmp_path / "adir").mkdir()
    (tmp_path / "state").write_text("")
    document = _document(idp, tmp_path, state_dir=str(tmp_path / "state"))
    document["tokens"] = {
        "a": {
            "identity": "app",
            "resource": "https://a",
            "sinks": [{"type": "file", "path": str(tmp_path / "real" / "x")}],
        },
        "b": {
            "identity": "app",
            "resource": "https://b",
            "sinks": [{"type": "file", "path": str(tmp_path / "alias" / "x")}],
        },
        "c": {
            "identity": "app",
            "resource": "https://c",
            "sinks": [{"type": "file", "path": str(tmp_path / "adir")}],
        },
    }
    config = write_config(tmp_path / "c.yaml", document)
    checked = tokend("check", "-c", str(config))
    assert checked.returncode == 2
    problems = [line for line in checked.stderr.splitlines() if " WARNING " not in line]
    assert problems == [
        f"{config}: state_dir: it is not a directory",
        f"{config}: tokens.b.sinks.0: file {tmp_path / 'real' / 'x'} is also written by tokens.a.sinks.0",
        f"{config}: tokens.c.sinks.0: {tmp_path / 'adir'} is a directory, not a file",
    ]
    assert tokend("run", "-c", str(config)).returncode == 2


def test_check_warns_about_what_works_but_exposes(idp: FakeIdp, tmp_path: Path) -> None:
    document = _document(idp, tmp_path, listen=f"0.0.0.0:{free_port()}")
    document["tokens"]["crm"]["sinks"][0]["mode"] = "0644"
    config = write_config(tmp_path / "c.yaml", document)
    result = tokend("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert (
        f"mode 0644 lets every user on this machine read {tmp_path / 'crm.token'}" in result.stderr
    )
    assert "is reachable from other machines" in result.stderr


def test_a_flood_of_sighups_is_one_or_two_reloads_and_no_traceback(
    idp: FakeIdp, tmp_path: Path
) -> None:
    log = tmp_path / "tokend.log"
    config = write_config(tmp_path / "c.yaml", _document(idp, tmp_path))
    process = start_tokend("run", "-c", str(config), log=log)
    try:
        wait_for((tmp_path / "crm.token").exists, what="the first token")
        for _ in range(1200):
            os.kill(process.pid, signal.SIGHUP)
        wait_for(lambda: "reloaded:" in log.read_text(), what="a reload")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert "Traceback" not in text and "BlockingIOError" not in text
    assert 1 <= text.count("reloaded:") < 50  # signals that arrive meanwhile join a waiting reload


def test_sighups_then_sigterm_stop_cleanly(idp: FakeIdp, tmp_path: Path) -> None:
    """A reload still waiting when the stop begins is dropped, not run on a closing loop."""
    log = tmp_path / "tokend.log"
    config = write_config(tmp_path / "c.yaml", _document(idp, tmp_path))
    process = start_tokend("run", "-c", str(config), log=log)
    try:
        wait_for((tmp_path / "crm.token").exists, what="the first token")
        for _ in range(3):
            os.kill(process.pid, signal.SIGHUP)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert "Traceback" not in text and "Executor" not in text, text
    assert text.count("reloaded:") <= 1
    assert text.rstrip().endswith("stopped")


def test_a_failure_during_the_stop_claims_no_next_try(idp: FakeIdp, tmp_path: Path) -> None:
    """A request in flight when SIGTERM arrives finishes, and its failure is logged with its
    reason but no 'next try in': there will be none."""
    log = tmp_path / "tokend.log"
    config = write_config(tmp_path / "c.yaml", _document(idp, tmp_path))
    idp.fail(faults.hang(2))  # answers 504, two seconds after the request
    process = start_tokend("run", "-c", str(config), log=log)
    try:
        wait_for(lambda: idp.token_requests, what="the request in flight")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    failures = [line for line in log.read_text().splitlines() if "refresh failed" in line]
    assert len(failures) == 1, failures
    assert "HTTP 504" in failures[0] and failures[0].endswith("; no valid token")
    assert "next try" not in failures[0]


@pytest.mark.parametrize(
    "body",
    [
        b'{"tokens": ["not", "a", "mapping"]}',
        b"[" * 5000,  # nested past the stack: json raises RecursionError, not ValueError
        b"not json",
    ],
)
def test_status_from_something_that_is_not_tokend(body: bytes) -> None:
    async def status(request: Request) -> Response:
        return Response(body, media_type="application/json")

    with serve(Starlette(routes=[Route("/status", status)])) as url:
        result = tokend("status", "--url", url)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"cannot read tokend's status from {url}: it does not answer like tokend: "
        "/status is not tokend's"
    )


def test_status_into_a_closed_pipe(idp: FakeIdp, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.yaml", _document(idp, tmp_path, listen=f"127.0.0.1:{port}"))
    process = start_tokend("run", "-c", str(config))
    try:
        wait_for((tmp_path / "crm.token").exists, what="the first token")
        piped = subprocess.run(  # noqa: S602 - a fixed pipeline: the point is the closed pipe
            f"'{TOKEND}' status --json --url http://127.0.0.1:{port} | head -c 1",
            shell=True,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert piped.stdout == "{"
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def test_phase_tells_a_sink_that_has_not_got_the_token(idp: FakeIdp, tmp_path: Path) -> None:
    """`fresh` means a valid token in every sink: one sink failing says `sink_failing`."""
    document = _document(idp, tmp_path)
    document["tokens"]["crm"]["sinks"].append({"type": "file", "path": "/proc/self/nothing"})

    async def scenario() -> None:
        h = Harness(Config.model_validate(document))
        try:
            await h.start()
            await h.run_for(timedelta(seconds=1))
            view = h.engine.view("crm", h.clock.now())
            assert view is not None and view.valid and not view.published
            assert view.phase is Phase.SINK_FAILING
        finally:
            await h.stop()

    asyncio.run(scenario())
