"""Presets: records, TOML, checks, finding and loading files, and binding parameters.

==================  ==========================================================================
module              what it holds
==================  ==========================================================================
``records``         the frozen records: :class:`Preset`, :class:`MapEntry`, :class:`PartSpec`, ...
``toml``            reading and writing TOML (:func:`parse_toml`, :func:`dump_toml`, ...)
``values``          parameter values written in TOML, tensors as :class:`TensorLiteral`
``validate``        checking a parsed document and building the records (:func:`check_preset`)
``classes``         layer types and class paths, resolved to classes late (:class:`LayerTypes`)
``loading``         finding and loading files by name or path (:func:`load_preset`)
``binding``         (preset, parameters) to a loaded preset and values (:func:`bind_preset`)
``hooks``           the built-in plugin that registers ``presets/*.toml``
==================  ==========================================================================

The names below are imported lazily, and nothing here imports torch: a preset can be read and
checked (``zplug check``) without it. The file format is documented in ``docs/presets.md``.
"""

from __future__ import annotations

from zplug._lazy import lazy_attributes

_LAZY = {
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
    "dump_toml": "zplug.preset.toml",
    "parse_toml": "zplug.preset.toml",
    "read_text": "zplug.preset.toml",
    "toml_value": "zplug.preset.toml",
    "TensorLiteral": "zplug.preset.values",
    "literal": "zplug.preset.values",
    "materialize": "zplug.preset.values",
    "build_part": "zplug.preset.validate",
    "check_preset": "zplug.preset.validate",
    "LayerTypes": "zplug.preset.classes",
    "import_class": "zplug.preset.classes",
    "layer_classes": "zplug.preset.classes",
    "find_preset": "zplug.preset.loading",
    "is_path": "zplug.preset.loading",
    "list_presets": "zplug.preset.loading",
    "load_preset": "zplug.preset.loading",
    "BoundPreset": "zplug.preset.binding",
    "bind_preset": "zplug.preset.binding",
}

__getattr__ = lazy_attributes("zplug.preset", _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = tuple(sorted(_LAZY))
