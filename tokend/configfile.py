"""Reading config files: YAML in, a validated `Config` out (with warnings), or `ConfigError`
with one clear line per problem, naming the file and the line or key concerned."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tokend.errors import ConfigError
from tokend.files import MiB, RefusedFile, open_regular_file, read_regular_file, size_text
from tokend.transport import DEFAULT_LISTEN, split_listen
from tokend.yamlfile import read_yaml

if TYPE_CHECKING:
    from tokend.config import Config


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    source: Path
    warnings: list[str]


def config_path(explicit: str | None) -> Path:
    """The config to use: the command line, else `$TOKEND_CONFIG`, else ./config.yaml."""
    return Path(explicit or os.environ.get("TOKEND_CONFIG") or "config.yaml")


_last: dict[Path, tuple[bytes, LoadedConfig]] = {}
"""The last config loaded from each file, by a digest of all it was built from. A reload of an
unchanged 100,000-token file then costs a read and a hash instead of ~8 s of parsing and
validation (loading is a pure function of the bytes, the environment and the working
directory: secrets are read at use, not here)."""
_CHUNK = 1 << 20
"""An unchanged file is hashed this many bytes at a time, never held whole (13.8 MB at 100,000
tokens, most of what a reload added to the daemon's peak memory)."""
MAX_CONFIG_SIZE = 256 * MiB
"""No config is larger: 100,000 tokens take 13.8 MB, so this leaves room for 18 times that (or
for generous comments) while a mistaken `-c /dev/zero`-like file stops here instead of
reading until memory runs out."""


def _digest(chunks: Iterable[bytes]) -> bytes:
    inputs = hashlib.sha256()
    for chunk in chunks:
        inputs.update(chunk)
    inputs.update(repr((sorted(os.environ.items()), os.getcwd())).encode())
    return inputs.digest()


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes, `_CHUNK` at a time; `RefusedFile` for what `load_config` would refuse."""
    size = 0
    with open_regular_file(path) as file:
        while chunk := file.read(_CHUNK):
            size += len(chunk)
            if size > MAX_CONFIG_SIZE:
                raise RefusedFile(f"larger than {size_text(MAX_CONFIG_SIZE)}")
            yield chunk


def load_config(path: Path) -> LoadedConfig:
    """Read and validate `path` (or reuse what the same inputs gave last time: see `_last`).
    Raises `ConfigError` listing every problem found."""
    with _reading(path):
        last = _last.get(path)
        if last is not None and _digest(_chunks(path)) == last[0]:
            return last[1]
        raw = read_regular_file(path, MAX_CONFIG_SIZE)
    text = _decoded(raw, path)
    loaded = parse_config(text, label=str(path), source=path)
    _last.clear()  # one file in use; a reload of a changed one frees the older config
    _last[path] = (_digest([raw]), loaded)  # of the bytes parsed, whatever the file holds now
    return loaded


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A config file that cannot be read, or that tokend will not read (a FIFO, a device, too
    large), is `ConfigError`: one line naming it and why (not an exception's class name)."""
    try:
        yield
    except RefusedFile as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise ConfigError([f"{path}: cannot read config: {reason}"]) from None


def _decoded(raw: bytes, path: Path) -> str:
    """`raw` as text, or `ConfigError` saying where the first byte that is not UTF-8 is."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _position(raw, exc.start)
        message = f"not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        raise ConfigError([f"{path}:{line}:{column}: {message}"]) from None


def _position(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of byte `offset`."""
    before = raw[:offset]
    return before.count(b"\n") + 1, offset - (before.rfind(b"\n") + 1) + 1


def listen_of(path: Path) -> str | None:
    """The `listen:` of the config at `path`, read without validating the rest (for `tokend
    status`, which must start fast and needs nothing else). Raises `ConfigError` (one line, as
    `tokend check` would say it)."""
    with _reading(path):
        raw = read_regular_file(path, MAX_CONFIG_SIZE)
    document = _mapping(_read_yaml(_decoded(raw, path), str(path)), str(path))
    listen = document.get("listen", DEFAULT_LISTEN)
    if listen is None:
        return None
    if not isinstance(listen, str):
        raise ConfigError([f"{path}: listen: not host:port"])
    try:
        split_listen(listen)
    except ValueError as exc:
        raise ConfigError([f"{path}: listen: {exc}"]) from None
    return listen


def parse_config(text: str, *, label: str, source: Path | None = None) -> LoadedConfig:
    document = _mapping(_read_yaml(text, label), label)
    from tokend.config import validate_config  # pydantic and the kinds' schemas: not for status
    from tokend.secret_fields import secret_references
    from tokend.secrets import InlineSecret

    config = validate_config(document, label=label)
    warnings = [
        f"{label}: {path}: secret written inline; prefer {{env: ...}}, {{file: ...}} "
        "or {credential: ...}"
        for path, ref in secret_references(config)
        if isinstance(ref, InlineSecret)
    ]
    return LoadedConfig(config=config, source=source or Path(label), warnings=warnings)


def _mapping(document: Any, label: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ConfigError([f"{label}: the config must be a mapping with identities and tokens"])
    return document


def _read_yaml(text: str, label: str) -> Any:
    try:
        return read_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise ConfigError([f"{where}: {exc.problem or exc.context}"]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, controls)
        line, column = _position(text.encode(), len(text[: exc.position].encode()))
        character = repr(chr(exc.character)) if isinstance(exc.character, int) else "a byte"
        raise ConfigError(
            [f"{label}:{line}:{column}: the character {character} is not allowed in YAML"]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: not valid YAML ({type(exc).__name__})"]) from None
