"""Command line: `tokend run | once | check | login | dev | status | endpoint env | version`.

Exit status: 0 success; 1 a runtime failure (`once` could not publish everything, `status` found
tokend unreachable or not ready); 2 the config or the command line is wrong.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokend import __version__
from tokend.logs import setup_logging

if TYPE_CHECKING:
    from tokend.configfile import LoadedConfig

log = logging.getLogger("tokend")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    # tokend uses no pydantic plugins; looking for them reads the metadata of every installed
    # package at the first model (milliseconds on every start). A value set outside wins.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    args = _parser().parse_args(argv)
    setup_logging(args.log_level or "info", args.log_format or "text")
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tokend status --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokend",
        description="Keeps OAuth2 access tokens fresh and publishes them to files, Vault "
        "and Kubernetes Secrets.",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["text", "json"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    config_help = "config file (default: $TOKEND_CONFIG, else ./config.yaml)"
    command("run", _run, "run the daemon: keep every token fresh until stopped").add_argument(
        "-c", "--config", help=config_help
    )
    once = command(
        "once",
        _once,
        "acquire and publish every token once, retrying what may pass (network, 5xx, 429) until "
        "--timeout; exit 0 only if all succeeded",
    )
    once.add_argument("-c", "--config", help=config_help)
    once.add_argument(
        "--timeout",
        type=_seconds,
        default=120.0,
        help="give up retrying after this long, e.g. 90s or 5m (default: 2m); a refusal that "
        "only an operator can fix ends at once",
    )
    command(
        "check",
        _check,
        "validate the config, resolve every secret reference and check every sink's target "
        "(exit 2 on error)",
    ).add_argument("-c", "--config", help=config_help)
    login = command(
        "login",
        _login,
        "sign in once, interactively (device code), for a token whose identity has "
        "credential type device_login; run it as tokend's user",
    )
    login.add_argument("token", metavar="TOKEN", help="the token (its identity signs in)")
    login.add_argument("-c", "--config", help=config_help)
    dev = command("dev", _dev, "run against a built-in development identity provider")
    dev.add_argument("-c", "--config", help="config to run (default: the bundled dev.yaml)")
    status = command("status", _status, "show the state of every token of a running tokend")
    status.add_argument(
        "-c", "--config", help="ask the listener this config names (default: as for run)"
    )
    status.add_argument(
        "--url", help="tokend's listener, e.g. http://127.0.0.1:9464 (overrides -c)"
    )
    status.add_argument(
        "--problems",
        action="store_true",
        help="only the tokens that need attention: no valid token, failed attempts, a sink "
        "failing, or a refresh a minute overdue",
    )
    status.add_argument("--json", action="store_true", help="print the raw /status JSON")
    status.add_argument(
        "--timeout",
        type=_positive_seconds,
        help="give up when the whole answer has not come within this long, e.g. 5s (default: 30s)",
    )
    endpoint = command(
        "endpoint", _endpoint, "the local token endpoint: `env` prints the variables to export"
    )
    endpoint.add_argument("action", choices=["env"])
    endpoint.add_argument("-c", "--config", help=config_help)
    command("version", _version, "print the version")
    return parser


def _load(args: argparse.Namespace) -> LoadedConfig | None:
    """Load the config named on the command line; print its problems and return None if bad."""
    from tokend.configfile import config_path, load_config
    from tokend.errors import ConfigError

    try:
        loaded = load_config(config_path(args.config))
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return None
    _apply_log_options(args, loaded)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    return loaded


def _load_usable(args: argparse.Namespace) -> LoadedConfig | None:
    """`_load`, then what this machine alone says would fail (the checks `tokend check` makes
    without asking any service): a config tokend cannot run with is refused at once (exit 2)
    instead of failing at every retry."""
    from tokend.check import local_problems, warnings

    loaded = _load(args)
    if loaded is None:
        return None
    problems = local_problems(loaded, listen=False)  # the listener reports its own address
    for line in problems:
        print(line, file=sys.stderr)
    for warning in warnings(loaded):
        log.warning("%s", warning)
    return None if problems else loaded


def _apply_log_options(args: argparse.Namespace, loaded: LoadedConfig) -> None:
    """The config's log settings apply unless the command line chose otherwise."""
    options = loaded.config.log
    setup_logging(args.log_level or options.level, args.log_format or options.format)


def _run(args: argparse.Namespace) -> int:
    loaded = _load_usable(args)
    if loaded is None:
        return EXIT_USAGE
    return _serve(loaded, args)


def _reloader(args: argparse.Namespace, source: Path) -> LoadedConfig:
    """Read the config again for a reload, applying its log settings as a start would, and
    refuse it (`ConfigError`) on what `tokend check` would find without asking any service."""
    from tokend.check import local_problems
    from tokend.configfile import load_config
    from tokend.errors import ConfigError

    loaded = load_config(source)
    if problems := local_problems(loaded, listen=False):
        raise ConfigError(problems)
    _apply_log_options(args, loaded)
    return loaded


def _serve(
    loaded: LoadedConfig,
    args: argparse.Namespace,
    *,
    announce: str | None = None,
    dev_idp: bool = False,
) -> int:
    from tokend.daemon import run_daemon
    from tokend.server import ListenError

    reload_config = functools.partial(_reloader, args, loaded.source)
    try:
        return run_daemon(
            loaded.config, reload_config=reload_config, announce=announce, dev_idp=dev_idp
        )
    except ListenError as exc:
        log.error("%s", exc)
        return EXIT_USAGE


def _positive_seconds(text: str) -> float:
    seconds = _seconds(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not more than 0 seconds")
    return seconds


def _seconds(text: str) -> float:
    from tokend.durations import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _once(args: argparse.Namespace) -> int:
    import asyncio

    from tokend.once import run_once

    loaded = _load_usable(args)
    if loaded is None:
        return EXIT_USAGE
    return EXIT_OK if asyncio.run(run_once(loaded.config, timeout=args.timeout)) else EXIT_FAILED


def _check(args: argparse.Namespace) -> int:
    from tokend.check import preflight, warnings

    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    for warning in warnings(loaded):
        log.warning("%s", warning)
    problems = preflight(loaded)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return EXIT_USAGE
    config = loaded.config
    sinks = sum(len(token.sinks) for token in config.tokens.values())
    print(
        f"{loaded.source}: OK: {len(config.identities)} identities, {len(config.tokens)} tokens, "
        f"{sinks} sinks; every secret reference resolved, every sink can be written"
    )
    return EXIT_OK


def _login(args: argparse.Namespace) -> int:
    import asyncio

    from tokend.login import login

    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    return asyncio.run(login(loaded.config, args.token, sys.stdout))


def _dev(args: argparse.Namespace) -> int:
    import secrets  # here, not at the top: `tokend version` then loads no hmac or hashlib

    from tokend.devidp import DEV_IDP_LISTEN, DEV_SECRET_ENV, dev_config_path

    os.environ.setdefault(DEV_SECRET_ENV, secrets.token_urlsafe(24))
    args.config = args.config or str(dev_config_path().resolve())
    loaded = _load_usable(args)
    if loaded is None:
        return EXIT_USAGE
    tokens_dir = Path("var/tokens").absolute()
    listen = loaded.config.listen
    lines = [
        "tokend dev is running. Ctrl-C stops it.",
        f"  identity provider  http://{DEV_IDP_LISTEN}  (development only, loopback)",
        f"  config             {loaded.source}",
        f"  tokens             {tokens_dir}/",
    ]
    if listen:
        lines += [
            f"  metrics            http://{listen}/metrics",
            f"  status             http://{listen}/status",
        ]
    announce = "\n".join(lines)
    return _serve(loaded, args, announce=announce, dev_idp=True)


def _status(args: argparse.Namespace) -> int:
    """Standard library and YAML only: scripts and probes call this often. Whatever the config,
    the URL or the server, one line on stderr and a non-zero exit, never a traceback."""
    import json

    from tokend.errors import ConfigError
    from tokend.redaction import one_line
    from tokend.status import (
        STATUS_DEADLINE,
        StatusUnavailable,
        UnusableUrl,
        fetch_status,
        listener_url,
        render_table,
    )

    try:
        url = args.url or listener_url(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    try:
        deadline = STATUS_DEADLINE if args.timeout is None else args.timeout
        status = fetch_status(url, problems=args.problems, deadline=deadline)
    except StatusUnavailable as exc:
        print(f"cannot read tokend's status from {one_line(url)}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UnusableUrl) else EXIT_FAILED
    print(json.dumps(status, indent=2) if args.json else render_table(status))
    return EXIT_OK if status.get("ready") else EXIT_FAILED


def _endpoint(args: argparse.Namespace) -> int:
    from tokend.endpoint.service import EnvironmentUnknown, client_environment

    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    if loaded.config.endpoint is None:
        print(f"{loaded.source}: no endpoint: block: the endpoint is off", file=sys.stderr)
        return EXIT_USAGE
    try:
        sys.stdout.write(client_environment(loaded.config.endpoint))
    except EnvironmentUnknown as exc:
        print(f"{loaded.source}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _version(args: argparse.Namespace) -> int:
    print(f"tokend {__version__}")
    return EXIT_OK
