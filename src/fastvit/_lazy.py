"""Lazy package attributes (PEP 562): a package names its public API without importing it.

``import fastvit`` then costs nothing but the standard library; torch and timm (several
seconds to import, most of it timm importing torchvision.models) load on the first use of a
model. ``fastvit --version``, ``fastvit list`` and a cached ``fastvit info`` never import them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_attributes(
    package: str,
    exports: Mapping[str, str],
    subpackages: tuple[str, ...] = (),
    defined: tuple[str, ...] = (),
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module
    that defines it; ``subpackages`` are importable as attributes too; ``defined`` are public
    names the package defines itself (listed by ``dir``)."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is not None:
            mod = importlib.import_module(module)
            # bind every name this module exports on the package, once: later lookups are
            # plain attributes, and a submodule import cannot shadow an exported name later
            pkg = sys.modules[package]
            for other, where in exports.items():
                if where == module:
                    setattr(pkg, other, getattr(mod, other))
            return getattr(mod, name)
        if name in subpackages:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*exports, *subpackages, *defined})

    return __getattr__, __dir__
