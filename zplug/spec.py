"""Deprecated: the preset records and functions moved to :mod:`zplug.preset`.

``from zplug.spec import Preset`` still works and warns once per name; import from
``zplug.preset`` (or ``zplug.Preset``) instead.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

#: Where each name of the old module lives now.
MOVED = {
    "GLOB_CHARS": "zplug.preset.records",
    "REQUIRED": "zplug.preset.records",
    "RESERVED_PARAMS": "zplug.preset.records",
    "SCHEMA": "zplug.preset.records",
    "TABLES": "zplug.preset.records",
    "MapEntry": "zplug.preset.records",
    "ParamDecl": "zplug.preset.records",
    "ParamRef": "zplug.preset.records",
    "PartSpec": "zplug.preset.records",
    "Preset": "zplug.preset.records",
    "build_part": "zplug.preset.validate",
    "check_preset": "zplug.preset.validate",
    "dump_toml": "zplug.preset.toml",
    "import_class": "zplug.preset.classes",
    "layer_classes": "zplug.preset.classes",
    "literal": "zplug.preset.values",
    "parse_toml": "zplug.preset.toml",
    "read_text": "zplug.preset.toml",
    "toml_value": "zplug.preset.toml",
}


def __getattr__(name: str) -> Any:
    module = MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'zplug.spec' has no attribute '{name}'")
    warnings.warn(
        f"zplug.spec is deprecated: import {name} from zplug.preset (it lives in {module})",
        DeprecationWarning,
        stacklevel=2,
    )
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = tuple(sorted(MOVED))
