"""Deprecated: the preset records and functions moved to :mod:`zplug.preset`.

``from zplug.spec import Preset`` still works and warns once per name; import from
``zplug.preset`` (or ``zplug.Preset``) instead.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

#: The names the old module had; each now lives where :mod:`zplug.preset` imports it from.
OLD_NAMES = (
    "GLOB_CHARS",
    "REQUIRED",
    "RESERVED_PARAMS",
    "SCHEMA",
    "TABLES",
    "MapEntry",
    "ParamDecl",
    "ParamRef",
    "PartSpec",
    "Preset",
    "build_part",
    "check_preset",
    "dump_toml",
    "import_class",
    "layer_classes",
    "literal",
    "parse_toml",
    "read_text",
    "toml_value",
)


def __getattr__(name: str) -> Any:
    if name not in OLD_NAMES:
        raise AttributeError(f"module 'zplug.spec' has no attribute '{name}'")
    from zplug.preset import _LAZY

    module = _LAZY[name]
    warnings.warn(
        f"zplug.spec is deprecated: import {name} from zplug.preset (it lives in {module})",
        DeprecationWarning,
        stacklevel=2,
    )
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = tuple(sorted(OLD_NAMES))
