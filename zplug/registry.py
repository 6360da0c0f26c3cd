"""The plugin registry: built-in and third-party parts, by name, with provenance.

``default_registry()`` builds the registry on first use (never at ``import zplug``):
it registers the built-in plugin modules, then loads the entry points of the group
``zplug`` once. Environment switches, read when a registry is created:

``ZPLUG_DISABLE_PLUGIN_AUTOLOAD=1``
    do not load entry points (built-ins only);
``ZPLUG_DISABLE_PLUGINS=a,b``
    skip the plugins named ``a`` and ``b`` (entry-point or distribution names).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import attrs
import pluggy

from zplug import hookspecs
from zplug.errors import PluginConflictError, PluginLoadError, UnknownNameError, unknown_name_message

#: Modules that register zplug's own parts, through the same hooks plugins use.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "zplug.rules.hooks",
    "zplug.layertypes",
)
BUILTIN = "zplug"  #: the plugin name that qualifies built-in parts: ``"zplug:epsilon"``
ENTRY_POINT_GROUP = "zplug"

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Entry(Generic[T]):
    """One registered part: the object, its name and the plugin that registered it."""

    name: str
    obj: T
    plugin: str


@attrs.frozen(kw_only=True)
class PluginInfo:
    """What ``zplug plugins`` shows about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    registered: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "registered": {kind: list(names) for kind, names in self.registered.items()},
            "error": self.error,
        }


class Catalog(Mapping[str, T]):
    """Read-only mapping from names to registered objects of one kind.

    ``catalog["epsilon"]`` returns the object; ``catalog["plugin:epsilon"]`` selects
    one plugin's registration explicitly. An unqualified name registered by two
    plugins raises :class:`PluginConflictError` naming both.
    """

    def __init__(self, kind: str, entries: Iterable[Entry[T]]) -> None:
        self.kind = kind
        self._by_name: dict[str, list[Entry[T]]] = {}
        for entry in entries:
            self._by_name.setdefault(entry.name, []).append(entry)

    def entry(self, name: str) -> Entry[T]:
        """Return the :class:`Entry` for ``name`` (qualified or not)."""
        plugin, sep, bare = name.rpartition(":")
        candidates = self._by_name.get(bare if sep else name, [])
        if sep:
            candidates = [e for e in candidates if e.plugin == plugin]
        if not candidates:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._by_name))
        if len(candidates) > 1:
            owners = " and ".join(f"'{e.plugin}'" for e in candidates)
            choices = ", ".join(f"'{e.plugin}:{e.name}'" for e in candidates)
            raise PluginConflictError(
                f"{self.kind} '{name}' is registered by both plugins {owners}; "
                f"select one as {choices}, or disable a plugin with ZPLUG_DISABLE_PLUGINS"
            )
        return candidates[0]

    def __getitem__(self, name: str) -> T:
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.entry(name)
        except UnknownNameError:
            return False
        except PluginConflictError:
            return True
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

    def entries(self) -> list[Entry[T]]:
        """Return every registration, conflicting ones included, sorted by name."""
        return [e for name in sorted(self._by_name) for e in self._by_name[name]]

    def conflicts(self) -> dict[str, list[str]]:
        """Return ``{name: [plugin, ...]}`` for names registered more than once."""
        return {n: [e.plugin for e in es] for n, es in self._by_name.items() if len(es) > 1}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in os.environ.get(name, "").split(",") if p.strip())


class PluginRegistry:
    """zplug's parts by name, collected from built-in and third-party plugins.

    Parameters
    ----------
    autoload : bool or None
        Load third-party plugins from the entry-point group ``zplug`` on first use.
        ``None`` reads ``ZPLUG_DISABLE_PLUGIN_AUTOLOAD``.
    disable : iterable of str or None
        Plugin (entry-point) or distribution names not to load. ``None`` reads
        ``ZPLUG_DISABLE_PLUGINS``.
    builtins : iterable of str or None
        Module names of built-in plugins; defaults to :data:`BUILTIN_PLUGINS`.
    """

    def __init__(
        self,
        *,
        autoload: bool | None = None,
        disable: Iterable[str] | None = None,
        builtins: Iterable[str] | None = None,
    ) -> None:
        self.autoload = not _env_flag("ZPLUG_DISABLE_PLUGIN_AUTOLOAD") if autoload is None else autoload
        self.disabled = frozenset(_env_list("ZPLUG_DISABLE_PLUGINS") if disable is None else disable)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._owner: dict[str, str] = {}  # pluggy plugin name -> zplug plugin name
        self._loaded = False
        self._catalogs: dict[str, Catalog[Any]] = {}
        for module_name in BUILTIN_PLUGINS if builtins is None else builtins:
            module = importlib.import_module(module_name)
            self.pm.register(module, name=module_name)
            self._owner[module_name] = BUILTIN
        self._info[BUILTIN] = PluginInfo(name=BUILTIN, distribution="zplug", version=_version("zplug"), builtin=True)

    # -- loading ---------------------------------------------------------------------------
    def register(self, plugin: object, name: str, *, distribution: str | None = None) -> None:
        """Register a plugin object (usually a module) under ``name``; clears cached catalogs."""
        if name in self._info:
            raise PluginLoadError(f"a plugin named '{name}' is already registered")
        self.pm.register(plugin, name=name)
        self.pm.check_pending()
        self._owner[name] = name
        version = _version(distribution) if distribution else None
        self._info[name] = PluginInfo(name=name, distribution=distribution, version=version, builtin=False)
        self._catalogs.clear()

    def unregister(self, name: str) -> None:
        """Remove the plugin registered under ``name``."""
        self.pm.unregister(name=name)
        self._owner.pop(name, None)
        self._info.pop(name, None)
        self._catalogs.clear()

    def load_entry_points(self) -> None:
        """Load third-party plugins from the entry-point group ``zplug`` (once)."""
        if self._loaded:
            return
        self._loaded = True
        if not self.autoload:
            return
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            if ep.name in self.disabled or (dist_name and dist_name in self.disabled):
                continue
            if ep.name in self._info:
                continue
            try:
                plugin = ep.load()
                self.register(plugin, ep.name, distribution=dist_name)
            except Exception as exc:  # a broken plugin must not break the rest
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                if self.pm.has_plugin(ep.name):
                    self.pm.unregister(name=ep.name)
                self._owner.pop(ep.name, None)
                self._info[ep.name] = PluginInfo(
                    name=ep.name, distribution=dist_name, version=_version(dist_name), builtin=False
                )
                self._record_error(ep.name, f"{ep.value}: {detail}")

    def _record_error(self, name: str, error: str) -> None:
        info = self._info[name]
        self._info[name] = attrs.evolve(info, error=f"{info.error}; {error}" if info.error else error)
        warnings.warn(f"zplug plugin '{name}' failed: {error}", RuntimeWarning, stacklevel=3)

    # -- catalogs --------------------------------------------------------------------------
    def _collect(self, kind: str, hook_name: str, names_of: Callable[[Any], Iterable[tuple[str, Any]]]) -> Catalog[Any]:
        self.load_entry_points()
        if kind in self._catalogs:
            return self._catalogs[kind]
        entries = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            owner = self._owner.get(impl.plugin_name, impl.plugin_name)
            try:
                pairs = list(names_of(impl.function() or ()))
            except Exception as exc:  # a broken plugin is reported, the others keep working
                if self._info[owner].builtin:
                    raise
                self._record_error(owner, f"{hook_name}(): {type(exc).__name__}: {exc}")
                continue
            entries.extend(Entry(name=n, obj=o, plugin=owner) for n, o in pairs)
        catalog = Catalog(kind, entries)
        self._catalogs[kind] = catalog
        return catalog

    @property
    def rules(self) -> Catalog[type]:
        """Rule classes by name."""
        return self._collect("rule", "zplug_register_rules", _named_classes)

    @property
    def canonizers(self) -> Catalog[type]:
        """Canonizer classes by name."""
        return self._collect("canonizer", "zplug_register_canonizers", _named_classes)

    @property
    def attributors(self) -> Catalog[type]:
        """Attributor classes by name."""
        return self._collect("attributor", "zplug_register_attributors", _named_classes)

    @property
    def presets(self) -> Catalog[Any]:
        """Preset files (``Traversable`` or ``Path``) by name (the file stem)."""
        return self._collect("preset", "zplug_register_presets", _stem_named)

    @property
    def models(self) -> Catalog[Callable[..., Any]]:
        """Model factories by name."""
        return self._collect("model", "zplug_register_models", lambda r: r.items())

    @property
    def layer_types(self) -> dict[str, tuple[type, ...]]:
        """Layer-type names mapped to module classes, merged over all plugins."""
        catalog = self._collect("layer type", "zplug_register_layer_types", _layer_type_pairs)
        merged: dict[str, tuple[type, ...]] = {}
        for entry in catalog.entries():
            merged[entry.name] = merged.get(entry.name, ()) + tuple(c for c in entry.obj if c not in merged.get(entry.name, ()))
        return merged

    def suggest_canonizers(self, model: Any) -> list[tuple[str, str, str]]:
        """Ask every plugin for canonizers fitting ``model``: ``[(name, reason, plugin), ...]``."""
        self.load_entry_points()
        out: list[tuple[str, str, str]] = []
        for impl in reversed(self.pm.hook.zplug_suggest_canonizers.get_hookimpls()):
            owner = self._owner.get(impl.plugin_name, impl.plugin_name)
            for item in impl.function(model=model) or ():
                name, reason = (item, f"suggested by plugin '{owner}'") if isinstance(item, str) else item
                if name not in [n for n, _, _ in out]:
                    out.append((name, reason, owner))
        return out

    def plugins(self, *, include_builtin: bool = False) -> list[PluginInfo]:
        """Describe every plugin: what it registered, and its load error if any."""
        self.load_entry_points()
        catalogs = {
            "rules": self.rules,
            "canonizers": self.canonizers,
            "attributors": self.attributors,
            "presets": self.presets,
            "models": self.models,
        }
        layer_types = self._catalogs["layer type"] if "layer type" in self._catalogs else None
        if layer_types is None:
            self.layer_types  # noqa: B018 - fills the cache
            layer_types = self._catalogs["layer type"]
        catalogs["layer_types"] = layer_types
        result = []
        for info in self._info.values():
            if info.builtin and not include_builtin:
                continue
            registered = {
                kind: tuple(e.name for e in cat.entries() if e.plugin == info.name) for kind, cat in catalogs.items()
            }
            result.append(attrs.evolve(info, registered={k: v for k, v in registered.items() if v}))
        return sorted(result, key=lambda i: (not i.builtin, i.name))


def _named_classes(result: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    for cls in result:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls!r} has no 'name' class attribute")
        yield name, cls


def _stem_named(result: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    for path in result:
        yield path.name.rsplit(".", 1)[0], path


def _layer_type_pairs(result: Mapping[str, Iterable[type]]) -> Iterator[tuple[str, tuple[type, ...]]]:
    for name, classes in result.items():
        yield name, tuple(classes)


def _version(distribution: str | None) -> str | None:
    if not distribution:
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_default: PluginRegistry | None = None


def default_registry() -> PluginRegistry:
    """Return the process-wide registry, creating it on first use."""
    global _default
    if _default is None:
        _default = PluginRegistry()
    return _default


def set_default_registry(registry: PluginRegistry | None) -> PluginRegistry | None:
    """Replace the process-wide registry (``None`` rebuilds it on next use); returns the old one."""
    global _default
    old, _default = _default, registry
    return old


__all__ = (
    "BUILTIN",
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "Catalog",
    "Entry",
    "PluginInfo",
    "PluginRegistry",
    "default_registry",
    "set_default_registry",
)
