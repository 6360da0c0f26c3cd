"""Reading and writing preset TOML: one-line errors on read, a small writer for presets and mappings."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import Any

from zplug.errors import SpecError
from zplug.parts import is_tensor
from zplug.preset.records import TABLES, ParamRef
from zplug.preset.values import TensorLiteral

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


#: A preset larger than this is refused before it is parsed (presets are a few kilobytes).
MAX_PRESET_BYTES = 4 * 1024 * 1024
#: Arrays and tables nested deeper than this are refused (a preset needs four or five levels).
MAX_NESTING = 64


def parse_toml(text: str, *, file: str | None = None) -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes a :class:`SpecError` that keeps the line number.

    Raises
    ------
    SpecError
        For invalid TOML, or arrays/tables nested deeper than :data:`MAX_NESTING` levels.
    """
    too_deep = SpecError(
        f"arrays or tables nested more than {MAX_NESTING} levels deep; a preset needs a few", file=file
    )
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"invalid TOML: {exc}", file=file) from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise too_deep from None
    if _depth(doc) > MAX_NESTING:
        raise too_deep
    return doc


def _depth(doc: Any) -> int:
    """Nesting depth of parsed TOML, computed without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def read_text(source: Any, file: str) -> str:
    """Read a preset file (``Path`` or ``Traversable``) as UTF-8 text, with one-line errors.

    At most :data:`MAX_PRESET_BYTES` are read, so a device such as ``/dev/zero`` cannot exhaust memory.
    """
    try:
        with source.open("rb") as stream:
            data = stream.read(MAX_PRESET_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read preset file: {exc.strerror or exc}", file=file) from None
    if len(data) > MAX_PRESET_BYTES:
        raise SpecError(f"larger than {MAX_PRESET_BYTES // (1024 * 1024)} MiB; a preset is a few kilobytes", file=file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text (byte {exc.start})", file=file) from None


def dump_toml(doc: Mapping[str, Any]) -> str:
    """Write a preset document as TOML (top-level keys, ``[params]`` and arrays of tables)."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value) and key in TABLES:
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {toml_value(value)}")
    for key, value in tables:
        items = value if isinstance(value, list) else [value]
        for item in items:
            lines.append("")
            lines.append(f"[[{_key(key)}]]" if isinstance(value, list) else f"[{_key(key)}]")
            lines.extend(f"{_key(k)} = {toml_value(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """Format one value as TOML (inline tables for mappings; tensors as ``{ tensor = ... }``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # 'inf' and '-inf' are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, ParamRef):
        return f"{{ param = {toml_value(value.param)} }}"
    if isinstance(value, TensorLiteral):
        return toml_value(value.to_doc())
    if is_tensor(value):
        return toml_value(tensor_doc(value))
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise SpecError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def toml_value_safe(value: Any) -> str:
    """Like :func:`toml_value`, but never raises (falls back to ``repr``)."""
    try:
        return toml_value(value)
    except SpecError:
        return repr(value)


def tensor_doc(value: Any) -> dict[str, Any]:
    """Describe a torch tensor as TOML data: ``{ tensor = [flat values], shape = [...], dtype = "..." }``."""
    if not value.is_floating_point():
        value = value.double()
    doc: dict[str, Any] = {"tensor": value.detach().cpu().flatten().tolist(), "shape": list(value.shape)}
    dtype = str(value.dtype).replace("torch.", "")
    if dtype != "float32":
        doc["dtype"] = dtype
    return doc


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "_-" for c in key) and key.isascii()
    return key if bare else toml_value(key)


__all__ = ("dump_toml", "parse_toml", "read_text", "tensor_doc", "toml_value", "toml_value_safe")
