"""Reading config files: YAML in, a validated `Config` out (with warnings), or `ConfigError`
with one clear line per problem, naming the file and the line or key concerned."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokend.config import Config, ConfigError, validate_config
from tokend.secrets import InlineSecret, secret_references
from tokend.yamlfile import read_yaml


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    source: Path
    warnings: list[str]


def config_path(explicit: str | None) -> Path:
    """The config to use: the command line, else `$TOKEND_CONFIG`, else ./config.yaml."""
    return Path(explicit or os.environ.get("TOKEND_CONFIG") or "config.yaml")


def load_config(path: Path) -> LoadedConfig:
    """Read and validate `path`. Raises `ConfigError` listing every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config: {type(exc).__name__}"]) from None
    return parse_config(text, label=str(path), source=path)


def parse_config(text: str, *, label: str, source: Path | None = None) -> LoadedConfig:
    document = _read_yaml(text, label)
    if not isinstance(document, dict):
        raise ConfigError([f"{label}: the config must be a mapping with identities and tokens"])
    config = validate_config(document, label=label)
    warnings = [
        f"{label}: {path}: secret written inline; prefer {{env: ...}}, {{file: ...}} "
        "or {credential: ...}"
        for path, ref in secret_references(config)
        if isinstance(ref, InlineSecret)
    ]
    return LoadedConfig(config=config, source=source or Path(label), warnings=warnings)


def _read_yaml(text: str, label: str) -> Any:
    try:
        return read_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise ConfigError([f"{where}: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: not valid YAML ({type(exc).__name__})"]) from None
