"""Lazy imports: package attributes imported when first used, and modules imported when first used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` that imports ``table[name]`` and caches the attribute in ``namespace``."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module attribute hook
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


class LazyModule:
    """Stands for a module and imports it on first attribute access (``torch = lazy_module("torch")``).

    Used where a module's functions and methods need the module but defining them does not, so
    that importing the defining module (to register or list its parts) does not import it.
    """

    __slots__ = ("_lazy_name", "_lazy_module")

    def __init__(self, name: str) -> None:
        self._lazy_name = name
        self._lazy_module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        module = self._lazy_module
        if module is None:
            module = self._lazy_module = importlib.import_module(self._lazy_name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        state = "imported" if self._lazy_module is not None else "not imported yet"
        return f"<lazy module '{self._lazy_name}' ({state})>"


def lazy_module(name: str) -> Any:
    """Return a :class:`LazyModule` for ``name``: the module is imported when an attribute is first used."""
    return LazyModule(name)
