"""Writing presets that ``zplug tune`` produces: plain TOML documents, never code."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zplug.errors import OutputExistsError


def toml_value(value: Any) -> str:
    """One value as TOML (see :func:`zplug.preset.toml.toml_value`)."""
    from zplug.preset import toml_value as spec_toml_value

    return spec_toml_value(value)


def preset_text(document: Mapping[str, Any], comments: list[str] = ()) -> str:
    """A preset document as TOML, after ``#`` comment lines."""
    from zplug.preset import dump_toml

    head = "".join(f"# {line}\n" for line in comments)
    return head + dump_toml(document)


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse an existing file unless ``overwrite`` (the user's files are never replaced silently)."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"'{path}' exists; choose another output or pass --overwrite to replace it")
    if path.exists() and path.is_dir():
        raise OutputExistsError(f"'{path}' is a folder; it cannot be replaced by a file")


def write_text(path: Path, text: str, *, overwrite: bool) -> None:
    """Write ``text`` to ``path`` (parents created), refusing an existing file unless ``overwrite``."""
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


__all__ = ("OutputExistsError", "check_writable", "preset_text", "toml_value", "write_text")
