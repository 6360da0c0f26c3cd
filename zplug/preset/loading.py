"""Finding and loading preset files: by registered name (``"epsilon_plus"``, ``"plugin:name"``) or path.

A preset is named by its file stem. Registered presets come from ``zplug_register_presets``
(zplug's own are the ``presets/*.toml`` files of this package, Zennit's composites under
Zennit's names); any other argument that looks like a path is read from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zplug.errors import SpecError, ZplugError
from zplug.preset.records import Preset
from zplug.preset.toml import read_text
from zplug.preset.validate import check_preset
from zplug.registry import BUILTIN, preferring, registry_or_default

if TYPE_CHECKING:
    from zplug.registry import PluginRegistry

_MAX_DEPTH = 32  # a longer extends chain is a mistake, not a design


def is_path(name_or_path: str | Path) -> bool:
    """Whether a preset argument is a file path (a ``Path``, a ``.toml`` name, or a name with a slash)."""
    if isinstance(name_or_path, Path):
        return True
    return name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path


def find_preset(name_or_path: str | Path, *, registry: PluginRegistry | None = None) -> tuple[str, Any, str]:
    """Locate a preset: return ``(name, source, display_file)``.

    ``source`` has ``open("rb")`` (a ``Path`` or a package resource); ``display_file`` is
    what messages call it: the path as given, or ``plugin:presets/stem.toml`` for a
    registered preset.

    Raises
    ------
    SpecError
        If a path does not exist.
    UnknownNameError
        If no plugin registered a preset of that name.
    """
    if is_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise SpecError("no such preset file", file=str(name_or_path))
        return path.name.rsplit(".", 1)[0], path, str(name_or_path)
    entry = registry_or_default(registry).presets.entry(str(name_or_path))
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
    return _load(name_or_path, registry_or_default(registry), ())


def _identity(name: str, source: Any) -> str:
    """What makes two presets the same: a file's real path (links resolved), else the registered name."""
    if isinstance(source, Path):
        try:
            return str(source.resolve())
        except OSError:
            return str(source)
    return f"{name}@{source}"


def _load(name_or_path: str | Path, registry: PluginRegistry, chain: tuple[tuple[str, Any, str], ...]) -> Preset:
    if is_path(name_or_path):
        return _load_found(name_or_path, registry, chain)
    # A registered preset's names mean its own plugin's parts, then zplug's: a clash elsewhere cannot change it.
    with preferring(*dict.fromkeys((registry.presets.entry(str(name_or_path)).plugin, BUILTIN))):
        return _load_found(name_or_path, registry, chain)


def _load_found(name_or_path: str | Path, registry: PluginRegistry, chain: tuple[tuple[str, Any, str], ...]) -> Preset:
    name, source, display = find_preset(name_or_path, registry=registry)
    preset = Preset.from_toml(read_text(source, display), name=name, file=display, registry=registry)
    if preset.extends is None:
        return preset
    here = _identity(name, source)
    seen = [_identity(name_, source_) for name_, source_, _ in chain]
    if here in seen:
        cycle = " -> ".join((*(display for _, _, display in chain[seen.index(here):]), display))
        raise SpecError(f"presets extend each other in a cycle ({cycle})", file=display, keypath=("extends",))
    if len(chain) >= _MAX_DEPTH:
        raise SpecError(
            f"the extends chain is more than {_MAX_DEPTH} presets deep; merge some of them",
            file=display, keypath=("extends",),
        )
    parent_ref: str | Path = preset.extends
    if is_path(parent_ref) and isinstance(source, Path) and not Path(parent_ref).is_absolute():
        parent_ref = source.parent / parent_ref
    try:
        find_preset(parent_ref, registry=registry)
    except SpecError as exc:  # the parent file does not exist
        raise SpecError(f"{exc.message} '{preset.extends}'", file=display, keypath=("extends",)) from None
    except ZplugError as exc:  # an unknown or ambiguous preset name
        raise SpecError(str(exc), file=display, keypath=("extends",)) from None
    parent = _load(parent_ref, registry, (*chain, (name, source, display)))
    merged = preset.merged_into(parent)
    check_preset(merged, registry)
    return merged


def list_presets(*, registry: PluginRegistry | None = None) -> dict[str, str]:
    """Return ``{name: summary}`` for every registered preset, sorted by name (``zplug.presets()``).

    A name registered by several plugins is listed once per plugin as ``plugin:name``.
    A preset that fails to load is listed with its error as the summary.
    """
    registry = registry_or_default(registry)
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


#: ``zplug.presets()`` lists the registered presets.
presets = list_presets

__all__ = ("find_preset", "is_path", "list_presets", "load_preset", "presets")
