"""Built-in presets, and finding and loading preset files.

The ``*.toml`` files next to this module are Zennit's nine composites, registered through
``zplug_register_presets`` exactly like a plugin's presets. A preset is named by its file
stem (``"epsilon_plus"``, or ``"plugin:name"`` to pick one plugin's) or given as a path.

``zplug.presets`` is this module, and calling it lists the presets:
``zplug.presets()`` returns ``{name: summary}``.
"""

from __future__ import annotations

import sys
import types
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zplug.hookspecs import hookimpl

if TYPE_CHECKING:
    from zplug.registry import PluginRegistry
    from zplug.spec import Preset

_MAX_DEPTH = 16


@hookimpl
def zplug_register_presets():
    """Register the built-in presets (Zennit's composites under Zennit's names)."""
    folder = files(__name__)
    return sorted((f for f in folder.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)


def is_path(name_or_path: str | Path) -> bool:
    """Whether a preset argument is a file path (a ``Path``, a ``.toml`` name, or a name with a slash)."""
    if isinstance(name_or_path, Path):
        return True
    return name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path


def find_preset(name_or_path: str | Path, *, registry: PluginRegistry | None = None) -> tuple[str, Any, str]:
    """Locate a preset: return ``(name, source, display_file)``.

    ``source`` has ``read_bytes()`` (a ``Path`` or a package resource); ``display_file`` is
    what messages call it: the path as given, or ``plugin:presets/stem.toml`` for a
    registered preset.

    Raises
    ------
    SpecError
        If a path does not exist.
    UnknownNameError
        If no plugin registered a preset of that name.
    """
    from zplug.errors import SpecError

    if is_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise SpecError("no such preset file", file=str(name_or_path))
        return path.name.rsplit(".", 1)[0], path, str(name_or_path)
    registry = _registry(registry)
    entry = registry.presets.entry(str(name_or_path))
    folder = getattr(getattr(entry.obj, "parent", None), "name", "") or ""
    display = f"{entry.plugin}:{folder + '/' if folder else ''}{entry.obj.name}"
    return entry.name, entry.obj, display


def load_preset(name_or_path: str | Path, *, registry: PluginRegistry | None = None) -> Preset:
    """Load and check a preset by name or path, following ``extends``.

    Parameters
    ----------
    name_or_path : str or Path
        A registered preset name (``"epsilon_plus"``, ``"plugin:name"``) or a TOML file.
    registry : PluginRegistry or None
        Where names are looked up; the default registry if ``None``.

    Returns
    -------
    Preset
        The validated preset, merged with its parents.

    Raises
    ------
    SpecError
        For any problem in the file(s), with file and key path.
    UnknownNameError
        For an unknown preset name.
    """
    return _load(name_or_path, _registry(registry), ())


def _load(name_or_path: str | Path, registry: PluginRegistry, chain: tuple[str, ...]) -> Preset:
    from zplug.errors import SpecError, ZplugError
    from zplug.spec import Preset, check_preset, read_text

    name, source, display = find_preset(name_or_path, registry=registry)
    preset = Preset.from_toml(read_text(source, display), name=name, file=display, registry=registry)
    if preset.extends is None:
        return preset
    if display in chain or len(chain) >= _MAX_DEPTH:
        cycle = " -> ".join((*chain, display))
        raise SpecError(f"presets extend each other in a cycle ({cycle})", file=display, keypath=("extends",))
    parent_ref: str | Path = preset.extends
    if is_path(parent_ref) and isinstance(source, Path) and not Path(parent_ref).is_absolute():
        parent_ref = source.parent / parent_ref
    try:
        find_preset(parent_ref, registry=registry)
    except SpecError as exc:  # the parent file does not exist
        raise SpecError(f"{exc.message} '{preset.extends}'", file=display, keypath=("extends",)) from None
    except ZplugError as exc:  # an unknown or ambiguous preset name
        raise SpecError(str(exc), file=display, keypath=("extends",)) from None
    parent = _load(parent_ref, registry, (*chain, display))
    merged = preset.merged_into(parent)
    check_preset(merged, registry)
    return merged


def list_presets(*, registry: PluginRegistry | None = None) -> dict[str, str]:
    """Return ``{name: summary}`` for every registered preset, sorted by name.

    A name registered by several plugins is listed once per plugin as ``plugin:name``.
    A preset that fails to load is listed with its error as the summary.
    """
    from zplug.errors import ZplugError

    registry = _registry(registry)
    catalog = registry.presets
    conflicts = catalog.conflicts()
    out = {}
    for entry in catalog.entries():
        name = f"{entry.plugin}:{entry.name}" if entry.name in conflicts else entry.name
        try:
            out[name] = load_preset(name, registry=registry).summary
        except ZplugError as exc:
            out[name] = f"(invalid: {exc})"
    return out


def _registry(registry: PluginRegistry | None) -> PluginRegistry:
    if registry is None:
        from zplug.registry import default_registry

        registry = default_registry()
    return registry


class _CallableModule(types.ModuleType):
    """``zplug.presets`` is both this module and the function that lists presets."""

    def __call__(self, *, registry: PluginRegistry | None = None) -> dict[str, str]:
        return list_presets(registry=registry)


sys.modules[__name__].__class__ = _CallableModule
#: ``zplug.presets`` resolves to this (callable) module itself, whichever way it is reached.
presets = sys.modules[__name__]

__all__ = ("find_preset", "is_path", "list_presets", "load_preset", "presets", "zplug_register_presets")
