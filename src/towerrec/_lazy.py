"""Lazy package attributes (PEP 562): a name is imported from its module on first use.

``import towerrec`` then costs almost nothing (no torch, no polars) and no
import circle can arise through a package ``__init__``: each name resolves only
when asked for, after every module it needs can be imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str], submodules: tuple[str, ...] = ()
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to its module.

    ``submodules`` are subpackages or modules of ``package`` reachable as attributes
    (``towerrec.metrics``) without an explicit import. A resolved name is cached in the
    package's namespace, so each costs one import.

    Raises (from ``__getattr__``):
        AttributeError: a name that is neither exported nor a listed submodule.
    """

    def __getattr__(name: str) -> Any:
        namespace = importlib.import_module(package).__dict__
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        namespace = importlib.import_module(package).__dict__
        return sorted(set(namespace) | set(exports) | set(submodules))

    return __getattr__, __dir__
