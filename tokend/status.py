"""What `/status` and `tokend status` report: per token its state, expiry, next refresh,
failures and last error, and per sink its last success and last error; a section per shared
client in use (Vault's health), as its resource kind reports it. No secret, no token."""

from __future__ import annotations

import http.client
import json
import re
import signal
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tokend.clock import format_span
from tokend.errors import ConfigError
from tokend.redaction import one_line
from tokend.transport import DEFAULT_LISTEN, USER_AGENT, is_loopback, url_shape_problem
from tokend.untrusted import json_or_none

if TYPE_CHECKING:
    from tokend.engine import Engine, SinkView, TokenView
    from tokend.errors import TokendError
    from tokend.resources import Resources


STATUS_BATCH = 200
"""Tokens per piece of a served `/status`. The listener hands the event loop back between
pieces: a view and its JSON take ~50 us a token, so 100,000 tokens in one go would hold up
refreshes, `/healthz` and `/readyz` for seconds (and build the whole document in memory)."""


def status_pieces(
    engine: Engine,
    now: datetime,
    resources: Resources | None = None,
    *,
    problems: bool = False,
    batch: int = STATUS_BATCH,
) -> Iterator[str]:
    """`/status` as JSON text in pieces of `batch` tokens: per token (as `token_status` says;
    with `problems`, only those that need attention, as `metrics.per_token: problems` picks
    them), then whether all are ready and how many there are, then a section per shared client
    in use (`vault`), as its kind reports it. Tokens a reload removes meanwhile are left out.
    Every batch is a piece, empty if it shows no token: the listener hands the event loop back
    after each piece, however few tokens are shown."""
    from tokend.engine.query import OVERDUE  # noqa: PLC0415 - the daemon's side only

    names, late = list(engine.jobs), now - OVERDUE
    ready, first, total = True, True, 0
    yield f'{{"time":{_json(_iso(now))},"tokens":{{'
    for start in range(0, len(names), batch):
        entries = []
        for name in names[start : start + batch]:
            view = engine.view(name, now)
            if view is None:
                continue
            total += 1
            ready = ready and view.ready
            if not problems or view.needs_attention(late):
                entries.append(f"{_json(name)}:{_json(token_status(view, now))}")
        yield ("" if first or not entries else ",") + ",".join(entries)
        first = first and not entries
    shown = "problems" if problems else "all"
    yield f'}},"ready":{_json(ready)},"tokens_shown":"{shown}","tokens_total":{total}'
    for kind, client in resources.in_use() if resources is not None else ():
        if kind.status is not None:
            yield f",{_json(kind.section)}:{_json(kind.status(client, now))}"
    yield "}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


ON_DEMAND = "on_demand"
"""The state of an on-demand token nobody has asked for yet."""


def token_status(view: TokenView, now: datetime) -> dict[str, Any]:
    expires_at = view.expires_at
    return {
        "state": ON_DEMAND if view.dormant else view.phase.value,
        "published": view.published,
        "ready": view.ready,
        "expires_at": _iso(expires_at),
        "expires_in_seconds": _seconds_until(expires_at, now) if expires_at else None,
        "next_refresh": _iso(view.next_refresh),
        "last_success": _iso(view.last_success),
        "consecutive_failures": view.failures,
        **_error(view.last_error),
        "sinks": {sink.name: sink_status(sink) for sink in view.sinks},
    }


def sink_status(sink: SinkView) -> dict[str, Any]:
    return {
        "holds_expires_at": _iso(sink.held_expires_at),
        "holds_valid_token": sink.holds_valid_token,
        "required_for_ready": sink.required_for_ready,
        "standby": sink.standby,
        "last_success": _iso(sink.last_success),
        "consecutive_failures": sink.failures,
        **_error(sink.last_error),
    }


def _error(error: TokendError | None) -> dict[str, str | None]:
    """The last failure: its one-line text, its stable code, and whether it may pass."""
    if error is None:
        return {"last_error": None, "last_error_code": None, "last_error_kind": None}
    return {"last_error": str(error), "last_error_code": error.code, "last_error_kind": error.kind}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(int((moment - now).total_seconds()), 0)


class StatusUnavailable(Exception):
    """No status could be read; the text says why in one line."""


class UnusableUrl(StatusUnavailable):
    """The URL cannot be tokend's listener (`url_problem`): nothing was asked."""


_URL_CHARACTERS = re.compile(r"[!-~]+")
"""Visible ASCII: a space or a control character breaks the request line, and the standard
library would raise on them rather than say so."""


def url_problem(url: str) -> str | None:
    """Why `url` cannot be tokend's listener, or None: the shape any HTTP client needs
    (`url_shape_problem`: the standard library would open a `file://` URL as gladly, and raise
    on a bad host or port mid-request), visible ASCII, and the listener's base URL alone."""
    if not _URL_CHARACTERS.fullmatch(url):
        return "a space, a control or a non-ASCII character in the URL"
    if problem := url_shape_problem(url):
        return problem
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        return "a query or fragment in the URL: give the listener's base URL"
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # no HTTP client in tokend follows a redirect: the 3xx is the answer


def listener_url(config: str | None) -> str:
    """The listener the config names (its `listen:` alone is read: the rest of the config is not
    this command's business); the default address when no config file is named or found.
    Raises `ConfigError` saying why there is none, in one line naming the file."""
    from tokend.configfile import config_path, listen_of  # noqa: PLC0415 - `tokend status` only

    path = config_path(config)
    if not config and not path.exists():
        return f"http://{DEFAULT_LISTEN}"
    listen = listen_of(path)
    if listen is None:
        raise ConfigError([f"{path}: listen is off: tokend serves no status (use --url)"])
    url = f"http://{listen}"
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError([f"{path}: listen: '{one_line(listen)}': {problem}"])
    return url


PROBLEMS_QUERY = "?tokens=problems"
"""`/status` with only the tokens that need attention."""
STATUS_LIMIT = 512 << 20
"""The most of `/status` that `tokend status` reads: tokend's takes ~600 bytes a token with one
sink (~60 MB at 100,000 tokens); what is larger is not tokend's."""
STATUS_DEADLINE = 30.0
"""Seconds for the whole exchange: connecting, asking, the whole answer. A socket's timeout
counts for each read alone, so a server sending a byte a second held `tokend status` for as long
as it liked. tokend's own `/status` at 100,000 tokens takes ~5 s (~12 s under heavy refreshing
on a slow host; `--problems` is far smaller)."""
CONNECT_TIMEOUT = 5.0
"""Seconds for each of connecting, sending and a read, within `STATUS_DEADLINE`."""


def fetch_status(
    url: str, *, problems: bool = False, deadline: float = STATUS_DEADLINE
) -> dict[str, Any]:
    """tokend's `/status` at `url` (its listener's base URL), with the standard library only, so
    `tokend status` starts in a blink; all of it within `deadline` seconds. Raises
    `StatusUnavailable`, also for a `url` that cannot be a listener (`url_problem`)."""
    problem = url_problem(url)
    if problem is not None:
        raise UnusableUrl(problem)
    request = urllib.request.Request(  # noqa: S310 - http(s) only: url_problem says so
        f"{url.rstrip('/')}/status{PROBLEMS_QUERY if problems else ''}",
        headers={"User-Agent": USER_AGENT},
    )
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        with _deadline(deadline):
            document = _get(request, loopback=is_loopback(host))
    except _Late:
        raise StatusUnavailable(f"no whole answer within {deadline:g} s") from None
    if not is_status(document):
        raise StatusUnavailable("it does not answer like tokend: /status is not tokend's")
    result: dict[str, Any] = document
    return result


def _get(request: urllib.request.Request, *, loopback: bool) -> Any:
    """The JSON `request` is answered with (None if it is not JSON). Raises `StatusUnavailable`
    saying what went wrong, in words of its own: the standard library's texts may quote the
    server (a 64 KiB status line)."""
    handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
    if loopback:
        handlers.append(urllib.request.ProxyHandler({}))  # loopback never through a proxy
    try:
        opener = urllib.request.build_opener(*handlers)
        with opener.open(request, timeout=CONNECT_TIMEOUT) as response:
            return json_or_none(_read_at_most(response, STATUS_LIMIT))
    except urllib.error.HTTPError as exc:
        raise StatusUnavailable(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, str) else getattr(exc.reason, "strerror", "")
        raise StatusUnavailable(f"cannot connect: {one_line(str(reason or exc.reason))}") from None
    except http.client.HTTPException as exc:
        raise StatusUnavailable(_http_problem(exc)) from None
    except (OSError, ValueError) as exc:
        raise StatusUnavailable(one_line(str(exc))[:200] or type(exc).__name__) from None


def _http_problem(exc: http.client.HTTPException) -> str:
    """What was wrong with the server's HTTP: not what http.client says, which quotes it."""
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(exc, http.client.BadStatusLine):
        return "not an HTTP answer: no valid status line"
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer broke off, or its chunked encoding is broken"
    return f"not a valid HTTP answer: {one_line(str(exc))[:200]}"  # too many or long lines


class _Late(Exception):
    """The exchange's deadline passed before the answer was whole."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """`_Late` in this thread once `seconds` have passed, whatever it is waiting for (connecting,
    a read, a name lookup that returns). A socket's timeout counts for each read alone: a server
    sending a byte a second held `tokend status` for as long as it liked. A timer signal, so the
    main thread only: `tokend status` runs nothing else."""

    def late(signum: int, frame: object) -> None:
        raise _Late

    previous = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _read_at_most(response: Any, limit: int) -> bytes:
    """The body, a megabyte at a time (a read of `limit` at once would allocate it whole)."""
    pieces, size = [], 0
    while piece := response.read(1 << 20):
        size += len(piece)
        if size > limit:
            raise StatusUnavailable(f"/status is larger than {limit >> 20} MiB")
        pieces.append(piece)
    return b"".join(pieces)


def is_status(document: Any) -> bool:
    """`document` has the shape of tokend's `/status`: every field `render_table` reads, with
    its type, and times that are ISO 8601 with a time zone. A server that is not tokend (or a
    broken one) is told apart here, in one line, rather than by a traceback in the table."""
    if not isinstance(document, dict) or not isinstance(document.get("tokens"), dict):
        return False
    if _moment(document.get("time")) is None or not isinstance(document.get("ready"), bool):
        return False
    if document.get("tokens_shown") == "problems" and not _is_count(document.get("tokens_total")):
        return False
    return all(_is_token(token) for token in document["tokens"].values())


def _is_token(token: Any) -> bool:
    return (
        isinstance(token, dict)
        and isinstance(token.get("state"), str)
        and _is_moment_or_none(token, "expires_at")
        and _is_moment_or_none(token, "next_refresh")
        and _is_count(token.get("consecutive_failures"))
        and _is_text_or_none(token, "last_error")
        and isinstance(token.get("sinks"), dict)
        and all(_is_sink(sink) for sink in token["sinks"].values())
    )


def _is_sink(sink: Any) -> bool:
    return (
        isinstance(sink, dict)
        and isinstance(sink.get("standby", False), bool)
        and isinstance(sink.get("required_for_ready", True), bool)
        and _is_moment_or_none(sink, "last_success")
        and _is_count(sink.get("consecutive_failures"))
        and _is_text_or_none(sink, "last_error")
    )


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_text_or_none(mapping: dict[str, Any], key: str) -> bool:
    return key in mapping and (mapping[key] is None or isinstance(mapping[key], str))


def _is_moment_or_none(mapping: dict[str, Any], key: str) -> bool:
    return key in mapping and (mapping[key] is None or _moment(mapping[key]) is not None)


def _moment(value: Any) -> datetime | None:
    """`value` as a time, if it is ISO 8601 text with a time zone (tokend's times all have one:
    a naive time cannot be compared with them)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else None


def render_table(status: dict[str, Any]) -> str:
    """`tokend status` output: one line per token, one indented line per sink; then, if only
    the tokens that need attention were asked for, how many of all they are. Every string the
    server sent is shown `one_line`."""
    problems_only = status.get("tokens_shown") == "problems"
    lines = _token_lines(status) if status["tokens"] or not problems_only else []
    for key, section in status.items():
        if isinstance(section, dict) and isinstance(section.get("summary"), str):
            lines.append(f"{one_line(key)} {one_line(section['summary'])}")
    if problems_only:
        shown, total = len(status["tokens"]), status["tokens_total"]
        lines.append(f"tokens that need attention: {shown} of {total}")
    lines.append(
        "ready"
        if status["ready"]
        else "NOT READY: some token is not valid in every sink that readiness waits for"
    )
    return "\n".join(line.rstrip() for line in lines)


def _token_lines(status: dict[str, Any]) -> list[str]:
    """The table: a header, a line per token and an indented line per sink."""
    now = datetime.fromisoformat(status["time"])
    tokens = status["tokens"]
    rows: list[tuple[str, ...]] = [
        ("TOKEN", "STATE", "EXPIRES IN", "NEXT TRY", "FAILURES", "LAST ERROR")
    ]
    rows += [_token_row(name, token, now) for name, token in tokens.items()]
    sinks: list[list[str]] = [[]]  # the header's
    sinks += [[_sink_line(n, sink, now) for n, sink in t["sinks"].items()] for t in tokens.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row, sink_lines in zip(rows, sinks, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[5]]))
        lines += [f"    {line}" for line in sink_lines]
    return lines


def _token_row(name: str, token: dict[str, Any], now: datetime) -> tuple[str, ...]:
    return (
        one_line(name),
        one_line(token["state"]),
        _until(token["expires_at"], now, past="expired"),
        _until(token["next_refresh"], now, past="now"),
        str(token["consecutive_failures"]),
        one_line(token["last_error"] or "-"),
    )


def _sink_line(name: str, sink: dict[str, Any], now: datetime) -> str:
    name = one_line(name)
    if sink.get("standby"):
        return f"sink {name}: standby (the leader writes it)"
    if not sink.get("required_for_ready", True):
        name += " (readiness does not wait for it)"
    when = (
        f"last success {_ago(sink['last_success'], now)}"
        if sink["last_success"]
        else "never written"
    )
    if sink["last_error"]:
        failures, error = sink["consecutive_failures"], one_line(sink["last_error"])
        return f"sink {name}: failing ({failures}x, {when}): {error}"
    return f"sink {name}: ok, {when}"


def _until(moment: str | None, now: datetime, past: str) -> str:
    if moment is None:
        return "-"
    delta = datetime.fromisoformat(moment) - now
    return format_span(delta) if delta.total_seconds() >= 1 else past


def _ago(moment: str, now: datetime) -> str:
    return format_span(now - datetime.fromisoformat(moment)) + " ago"
