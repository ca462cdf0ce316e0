"""Package faces that cost nothing to import: a package lists what it exports and from which
private module, and each name is imported the first time someone asks for it (PEP 562).

`tokend version` and `tokend status` then load no HTTP client, no scheduler and no pydantic;
`tokend check` no scheduler and no HTTP client; `tokend once` no listener and no metrics. Type
checkers see the real imports, which each package makes under `TYPE_CHECKING`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, modules: Mapping[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: each name of `modules[module]` is imported from
    `module` when first asked for."""
    namespace = importlib.import_module(package).__dict__
    names = {name: module for module, exported in modules.items() for name in exported}

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # asked once: a plain attribute from then on
        return value

    return __getattr__
