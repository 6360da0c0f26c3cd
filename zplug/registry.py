"""The plugin registry: built-in and third-party parts, by name, with provenance.

``default_registry()`` builds the registry on first use (never at ``import zplug``):
it registers the built-in plugin modules, then, on the first lookup, loads the entry
points of the group ``zplug`` once. Environment switches, read when a registry is created:

``ZPLUG_DISABLE_PLUGIN_AUTOLOAD=1``
    do not load entry points (built-ins only);
``ZPLUG_DISABLE_PLUGINS=a,b``
    skip the plugins named ``a`` and ``b``: entry-point names, distribution names
    (``zplug-example``, compared the way pip compares them: ``Zplug_Example`` is the same) or
    built-in module names (``zplug.layertypes``). A name that matches nothing is warned
    about; disabled plugins are listed as disabled by ``zplug plugins``.

Name clashes: an unqualified name registered by several plugins is an error where it is used
(``"plugin:name"`` selects one), except inside a registered preset, where names refer first to
the preset's own plugin and then to zplug's built-ins: a third-party plugin that registers a rule
called ``epsilon`` cannot change what the built-in presets mean.

A plugin that fails to import, or whose hook raises, is recorded with its error (see
:meth:`PluginRegistry.plugins` and ``zplug plugins``); every other plugin keeps working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

import attrs
import pluggy

from zplug import hookspecs
from zplug.errors import PluginConflictError, PluginLoadError, UnknownNameError, unknown_name_message
from zplug.preset.classes import LayerTypes, merge_layer_types

#: Modules that register zplug's own parts, through the same hooks plugins use.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "zplug.rules.hooks",
    "zplug.attributors.hooks",
    "zplug.canonizers.hooks",
    "zplug.layertypes",
    "zplug.preset.hooks",
    "zplug.demo.hooks",
    "zplug.coverage.treatments",
    "zplug.metrics.hooks",
)
BUILTIN = "zplug"  #: the plugin name that qualifies built-in parts: ``"zplug:epsilon"``
ENTRY_POINT_GROUP = "zplug"

T = TypeVar("T")

#: Plugins whose registrations win an unqualified name clash, innermost preset first (see :func:`preferring`).
_PREFERRED: ContextVar[tuple[str, ...]] = ContextVar("zplug_preferred_plugins", default=())


@contextmanager
def preferring(*plugins: str) -> Iterator[None]:
    """Within the block, an unqualified name registered by several plugins resolves to ``plugins``' first.

    Used while a registered preset is read, so that its names mean its own plugin's parts or zplug's
    built-ins whatever else is installed.
    """
    token = _PREFERRED.set(plugins)
    try:
        yield
    finally:
        _PREFERRED.reset(token)


def normalize_distribution(name: str) -> str:
    """A distribution name as pip compares it: lower case, runs of ``-``, ``_``, ``.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@attrs.frozen(kw_only=True)
class Entry(Generic[T]):
    """One registered part: the object, its name and the plugin that registered it."""

    name: str
    obj: T
    plugin: str


@attrs.frozen(kw_only=True)
class PluginInfo:
    """What ``zplug plugins`` shows about one plugin.

    Attributes
    ----------
    name : str
        The plugin's name: the entry-point name, or ``"zplug"`` for the built-ins.
    distribution, version : str or None
        The installed distribution that provides it (``None`` when registered by hand).
    builtin : bool
        Whether this is zplug's own plugin.
    modules : tuple of str
        The module(s) that implement its hooks (the entry point's value).
    hooks : tuple of str
        The hooks it implements.
    registered : Mapping[str, tuple of str]
        What it registered, by kind (``{"rules": ("epsilon_scaled",)}``).
    error : str or None
        Why it failed to load, or which of its hooks raised.
    disabled : bool
        Whether ``ZPLUG_DISABLE_PLUGINS`` (or ``disable=``) kept it from loading.
    extends_builtin : Mapping[str, tuple of str]
        Members it adds to zplug's built-in layer types (``{"activation": ("mypkg.Gate",)}``): these
        change which layers the built-in presets give those types' rules.
    """

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    modules: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    registered: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    error: str | None = None
    disabled: bool = False
    extends_builtin: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "modules": list(self.modules),
            "hooks": list(self.hooks),
            "registered": {kind: list(names) for kind, names in self.registered.items()},
            "error": self.error,
            "disabled": self.disabled,
            "extends_builtin": {kind: list(names) for kind, names in self.extends_builtin.items()},
        }


def _join(items: Iterable[str], last: str) -> str:
    """Join ``['a', 'b', 'c']`` as ``a, b and c`` (``last`` is ``"and"`` or ``"or"``)."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


class Catalog(Mapping[str, T]):
    """Read-only mapping from names to registered objects of one kind.

    ``catalog["epsilon"]`` returns the object; ``catalog["plugin:epsilon"]`` selects
    one plugin's registration explicitly. An unqualified name registered by two
    plugins raises :class:`PluginConflictError` naming both.

    Parameters
    ----------
    kind : str
        What the catalog holds, in words (``"rule"``), for messages.
    entries : iterable of Entry
        The registrations, in plugin order.
    failed : Mapping[str, str]
        ``{plugin: error}`` for plugins that failed; lookups of missing names mention them.
    """

    def __init__(self, kind: str, entries: Iterable[Entry[T]], failed: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.failed = dict(failed or {})
        self._by_name: dict[str, list[Entry[T]]] = {}
        for entry in entries:
            self._by_name.setdefault(entry.name, []).append(entry)

    def entry(self, name: str) -> Entry[T]:
        """Return the :class:`Entry` for ``name`` (qualified or not).

        Raises
        ------
        UnknownNameError
            If no plugin registered ``name`` (with a suggestion of the nearest name).
        PluginConflictError
            If ``name`` is unqualified and several plugins registered it.
        """
        plugin, sep, bare = name.rpartition(":")
        candidates = self._by_name.get(bare, [])
        if sep:
            candidates = [e for e in candidates if e.plugin == plugin]
        if not candidates:
            raise UnknownNameError(self._unknown(name, plugin if sep else None, bare))
        if len(candidates) > 1 and not sep:
            for preferred in _PREFERRED.get():
                chosen = [e for e in candidates if e.plugin == preferred]
                if chosen:
                    return chosen[0]
        if len(candidates) > 1:
            owners = _join((f"'{e.plugin}'" for e in candidates), "and")
            choices = _join((f"'{e.plugin}:{e.name}'" for e in candidates), "or")
            raise PluginConflictError(
                f"{self.kind} '{name}' is registered by plugins {owners}; "
                f"select one with {choices}, or disable a plugin with ZPLUG_DISABLE_PLUGINS"
            )
        return candidates[0]

    def _unknown(self, name: str, plugin: str | None, bare: str) -> str:
        if plugin is not None and plugin in self.failed:
            return f"unknown {self.kind} '{name}': plugin '{plugin}' failed to load ({self.failed[plugin]})"
        if plugin is not None and bare in self._by_name:
            owners = _join((f"'{e.plugin}:{bare}'" for e in self._by_name[bare]), "or")
            kind = self.kind
            return f"unknown {kind} '{name}': plugin '{plugin}' has no {kind} '{bare}' (did you mean {owners}?)"
        message = unknown_name_message(self.kind, name, self._by_name)
        if self.failed:
            broken = _join((f"'{p}'" for p in sorted(self.failed)), "and")
            message += f"; plugin {broken} failed to load, see `zplug plugins`"
        return message

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
        return {n: [e.plugin for e in es] for n, es in sorted(self._by_name.items()) if len(es) > 1}

    def is_ambiguous(self, name: str) -> bool:
        """Whether ``name`` is unqualified and registered by several plugins."""
        return ":" not in name and len(self._by_name.get(name, ())) > 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in os.environ.get(name, "").split(",") if p.strip())


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class PluginRegistry:
    """zplug's parts by name, collected from built-in and third-party plugins.

    Parameters
    ----------
    autoload : bool or None
        Load third-party plugins from the entry-point group ``zplug`` on first use.
        ``None`` reads ``ZPLUG_DISABLE_PLUGIN_AUTOLOAD``.
    disable : iterable of str or None
        Plugin (entry-point), distribution or built-in module names not to load.
        ``None`` reads ``ZPLUG_DISABLE_PLUGINS``.
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
        self._disabled_normalized = {normalize_distribution(n): n for n in self.disabled}
        self._disabled_used: set[str] = set()
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._owner: dict[str, str] = {}  # pluggy plugin name -> zplug plugin name
        self._loaded = False
        self._catalogs: dict[str, Catalog[Any]] = {}
        modules = [m for m in (BUILTIN_PLUGINS if builtins is None else builtins) if m not in self.disabled]
        self._disabled_used.update(m for m in (BUILTIN_PLUGINS if builtins is None else builtins) if m in self.disabled)
        for module_name in modules:
            self.pm.register(importlib.import_module(module_name), name=module_name)
            self._owner[module_name] = BUILTIN
        self.pm.check_pending()
        self._info[BUILTIN] = PluginInfo(
            name=BUILTIN, distribution="zplug", version=_version("zplug"), builtin=True, modules=tuple(modules)
        )

    # -- loading ---------------------------------------------------------------------------
    def register(
        self,
        plugin: object,
        name: str,
        *,
        distribution: str | None = None,
        version: str | None = None,
        module: str | None = None,
    ) -> None:
        """Register a plugin object (usually a module) under ``name``.

        Raises
        ------
        PluginLoadError
            If the name is taken, or the plugin implements a hook that does not exist
            (or with arguments its specification does not have).
        """
        if name in self._info:
            raise PluginLoadError(f"a plugin named '{name}' is already registered")
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            raise PluginLoadError(f"plugin '{name}': {exc}") from exc
        self._owner[name] = name
        if version is None and distribution:
            version = _version(distribution)
        module = module or getattr(plugin, "__name__", type(plugin).__name__)
        self._info[name] = PluginInfo(
            name=name, distribution=distribution, version=version, builtin=False, modules=(module,)
        )
        self._catalogs.clear()

    def unregister(self, name: str) -> None:
        """Remove the plugin registered under ``name`` (and any load error recorded for it)."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self._owner.pop(name, None)
        self._info.pop(name, None)
        self._catalogs.clear()

    def load_entry_points(self) -> None:
        """Load third-party plugins from the entry-point group ``zplug`` (once; later calls do nothing)."""
        if self._loaded:
            return
        self._loaded = True
        if not self.autoload:
            return
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            if self._is_disabled(ep.name, dist_name):
                if ep.name not in self._info:
                    self._info[ep.name] = PluginInfo(
                        name=ep.name, distribution=dist_name, version=version, builtin=False, modules=(ep.value,),
                        disabled=True,
                    )
                continue
            if ep.name in self._info:
                self._record_error(ep.name, f"{dist_name or ep.value} also uses the plugin name '{ep.name}'; ignored")
                continue
            try:
                self.register(ep.load(), ep.name, distribution=dist_name, version=version, module=ep.value)
            except Exception as exc:  # a broken plugin must not break the rest
                self._info[ep.name] = PluginInfo(
                    name=ep.name, distribution=dist_name, version=version, builtin=False, modules=(ep.value,)
                )
                self._record_error(ep.name, f"cannot load {ep.value}: {_describe(exc)}")

        unused = self.unmatched_disabled()
        if unused:
            installed = sorted(n for n, info in self._info.items() if not info.builtin)
            warnings.warn(
                f"ZPLUG_DISABLE_PLUGINS names {_join((repr(n) for n in unused), 'and')}, which match no installed "
                f"plugin (installed: {', '.join(installed) or 'none'}; built-in modules: {', '.join(BUILTIN_PLUGINS)})",
                RuntimeWarning,
                stacklevel=3,
            )

    def unmatched_disabled(self) -> list[str]:
        """Names given to disable that matched no plugin, distribution or built-in module (after loading)."""
        return sorted(n for n in self.disabled if n not in self._disabled_used)

    def _is_disabled(self, plugin: str, distribution: str | None) -> bool:
        """Whether a plugin is disabled by its entry-point name or its (normalised) distribution name."""
        hits = [n for n in (plugin, distribution) if n and n in self.disabled]
        for name in (plugin, distribution):
            if name and normalize_distribution(name) in self._disabled_normalized:
                hits.append(self._disabled_normalized[normalize_distribution(name)])
        self._disabled_used.update(hits)
        return bool(hits)

    def _record_error(self, name: str, error: str) -> None:
        info = self._info[name]
        if info.error and error in info.error.split("; "):
            return
        self._info[name] = attrs.evolve(info, error=f"{info.error}; {error}" if info.error else error)
        warnings.warn(f"zplug plugin '{name}' failed: {error}", RuntimeWarning, stacklevel=3)

    def _is_builtin(self, owner: str) -> bool:
        info = self._info.get(owner)
        return info is None or info.builtin

    def _failed(self) -> dict[str, str]:
        return {name: info.error for name, info in self._info.items() if info.error}

    # -- catalogs --------------------------------------------------------------------------
    def _collect(self, kind: str, hook_name: str, names_of: Callable[[Any], Iterable[tuple[str, Any]]]) -> Catalog[Any]:
        self.load_entry_points()
        if kind in self._catalogs:
            return self._catalogs[kind]
        entries = []
        # get_hookimpls() lists implementations in registration order (pluggy calls them in reverse)
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            owner = self._owner.get(impl.plugin_name, impl.plugin_name)
            try:
                pairs = list(names_of(impl.function() or ()))
            except Exception as exc:  # a broken plugin is reported, the others keep working
                if self._is_builtin(owner):
                    raise
                self._record_error(owner, f"{hook_name}() raised {_describe(exc)}")
                continue
            entries.extend(Entry(name=n, obj=o, plugin=owner) for n, o in pairs)
        catalog = Catalog(kind, entries, self._failed())
        self._catalogs[kind] = catalog
        return catalog

    @property
    def rules(self) -> Catalog[type]:
        """Rule classes by name."""
        return self._collect("rule", "zplug_register_rules", _rule_classes)

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
        return self._collect("model", "zplug_register_models", _named_items)

    @property
    def commands(self) -> Catalog[str]:
        """Command-line modules by command name (``{"explain-text": "zplug_transformers.cli"}``)."""
        return self._collect("command", "zplug_register_commands", _command_items)

    @property
    def metrics(self) -> Catalog[type]:
        """Metric classes by name."""
        return self._collect("metric", "zplug_register_metrics", _metric_classes)

    @property
    def layer_types(self) -> LayerTypes:
        """Layer-type names mapped to module classes, merged over all plugins (never a conflict).

        Members may be declared as dotted class paths; ``layer_types[name]`` gives the classes
        whose modules are imported, and names can be checked without importing anything
        (see :class:`zplug.preset.classes.LayerTypes`).
        """
        return merge_layer_types((entry.name, entry.obj) for entry in self._layer_type_catalog().entries())

    def _layer_type_catalog(self) -> Catalog[tuple[type, ...]]:
        return self._collect("layer type", "zplug_register_layer_types", _layer_type_pairs)

    @property
    def op_treatments(self) -> Any:
        """How operations without a rule are treated in the coverage analysis, over all plugins.

        A :class:`zplug.coverage.treatments.TreatmentTable`. A plugin's declaration overrides a
        built-in one; two plugins declaring different treatments for one key raise.

        Raises
        ------
        PluginConflictError
            If two plugins declare different treatments for the same operation.
        """
        self.load_entry_points()
        table = self._catalogs.get("op treatment")
        if table is None:
            table = self._catalogs["op treatment"] = self._treatment_table()  # type: ignore[assignment]
        return table

    def _treatment_table(self) -> Any:
        from zplug.coverage.treatments import TreatmentTable, as_treatment, check_key

        merged: dict[Any, tuple[Any, str]] = {}
        for impl in self.pm.hook.zplug_register_op_treatments.get_hookimpls():
            owner = self._owner.get(impl.plugin_name, impl.plugin_name)
            try:
                declared = {
                    check_key(k): as_treatment(v, f"operation {k!r}") for k, v in dict(impl.function() or {}).items()
                }
            except Exception as exc:  # a broken plugin is reported, the others keep working
                if self._is_builtin(owner):
                    raise
                self._record_error(owner, f"zplug_register_op_treatments() raised {_describe(exc)}")
                continue
            for key, treatment in declared.items():
                known = merged.get(key)
                if known is not None and known[0] != treatment and not self._is_builtin(known[1]):
                    raise PluginConflictError(
                        f"operation {key!r}: plugins '{known[1]}' and '{owner}' declare different treatments "
                        "for it; disable one with ZPLUG_DISABLE_PLUGINS"
                    )
                merged[key] = (treatment, owner)
        return TreatmentTable({key: treatment for key, (treatment, _) in merged.items()})

    def _ask(
        self, hook_name: str, model: Any, convert: Callable[[Any], T], **extra: Any
    ) -> Iterator[tuple[str, T]]:
        """Call every plugin's ``hook_name(model=model, **extra)``; yield ``(plugin, convert(answer))`` in order.

        Each implementation receives the arguments it names. A plugin whose hook raises (or whose
        answer ``convert`` rejects) is recorded as broken and skipped; a built-in plugin's error propagates.
        """
        self.load_entry_points()
        arguments = {"model": model, **extra}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            owner = self._owner.get(impl.plugin_name, impl.plugin_name)
            try:
                answer = convert(impl.function(**{k: v for k, v in arguments.items() if k in impl.argnames}))
            except Exception as exc:
                if self._is_builtin(owner):
                    raise
                self._record_error(owner, f"{hook_name}() raised {_describe(exc)}")
                continue
            yield owner, answer

    def suggest_canonizers(self, model: Any) -> list[tuple[str, str, str]]:
        """Ask every plugin for canonizers fitting ``model``: ``[(name, reason, plugin), ...]``.

        The first plugin to suggest a name gives the reason; a plugin whose hook raises is
        recorded as broken and skipped (built-in ones raise).
        """
        out: list[tuple[str, str, str]] = []
        for owner, items in self._ask("zplug_suggest_canonizers", model, lambda answer: list(answer or ())):
            for item in items:
                name, reason = (item, f"suggested by plugin '{owner}'") if isinstance(item, str) else item
                if name not in [n for n, _, _ in out]:
                    out.append((name, reason, owner))
        return out

    def input_convention(self, model: Any) -> tuple[dict[str, Any], str] | None:
        """Ask the plugins how images become ``model``'s inputs: ``(convention, plugin)`` or ``None``.

        The first plugin (in registration order) whose ``zplug_input_convention`` returns a
        mapping decides; see the hook's specification for the keys.
        """
        for owner, answer in self._ask("zplug_input_convention", model, _convention_mapping):
            if answer is not None:
                return answer, owner
        return None

    def explainer(self, model: Any, inputs: Any) -> tuple[Callable[..., Any], str] | None:
        """Ask who explains ``inputs`` that are not floating-point tensors: ``(function, plugin)`` or ``None``.

        The first plugin (in registration order) whose ``zplug_explain_inputs`` returns a callable decides.
        """
        for owner, answer in self._ask("zplug_explain_inputs", model, _explainer, inputs=inputs):
            if answer is not None:
                return answer, owner
        return None

    def _catalogs_by_kind(self) -> dict[str, Catalog[Any]]:
        return {
            "rules": self.rules,
            "canonizers": self.canonizers,
            "attributors": self.attributors,
            "presets": self.presets,
            "models": self.models,
            "metrics": self.metrics,
            "commands": self.commands,
            "layer_types": self._layer_type_catalog(),
        }

    def conflicts(self) -> dict[str, dict[str, list[str]]]:
        """Return ``{kind: {name: [plugin, ...]}}`` for every name registered by several plugins.

        Layer types are merged, never in conflict, so they are not listed.
        """
        catalogs = self._catalogs_by_kind()
        del catalogs["layer_types"]
        return {kind: c.conflicts() for kind, c in catalogs.items() if c.conflicts()}

    def plugins(self, *, include_builtin: bool = False) -> list[PluginInfo]:
        """Describe every plugin: what it registered, which hooks it implements, its error if any.

        Built-in parts are listed under the single plugin ``"zplug"`` when ``include_builtin``.
        """
        catalogs = self._catalogs_by_kind()  # loads entry points, and records hooks that raise
        extensions = self.builtin_type_extensions()
        hooks: dict[str, set[str]] = {}
        for name, plugin in self.pm.list_name_plugin():
            owner = self._owner.get(name, name)
            hooks.setdefault(owner, set()).update(caller.name for caller in self.pm.get_hookcallers(plugin) or ())
        result = []
        for info in self._info.values():
            if info.builtin and not include_builtin:
                continue
            registered = {
                kind: tuple(e.name for e in cat.entries() if e.plugin == info.name) for kind, cat in catalogs.items()
            }
            result.append(
                attrs.evolve(
                    info,
                    hooks=tuple(sorted(hooks.get(info.name, ()))),
                    registered={k: v for k, v in registered.items() if v},
                    extends_builtin=extensions.get(info.name, {}),
                )
            )
        return sorted(result, key=lambda i: (not i.builtin, i.name))

    def builtin_type_extensions(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """Return ``{plugin: {layer type: (class path, ...)}}`` for members plugins add to built-in layer types."""
        from zplug.preset.classes import class_path

        entries = self._layer_type_catalog().entries()
        builtin = {e.name: {class_path(m) for m in e.obj} for e in entries if e.plugin == BUILTIN}
        found: dict[str, dict[str, tuple[str, ...]]] = {}
        for entry in entries:
            if entry.plugin == BUILTIN or entry.name not in builtin:
                continue
            added = tuple(p for p in map(class_path, entry.obj) if p not in builtin[entry.name])
            if added:
                found.setdefault(entry.plugin, {})[entry.name] = added
        return found


def _named_classes(result: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    for cls in result:
        name = getattr(cls, "name", None) if isinstance(cls, type) else None
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls!r} is not a class with a 'name' class attribute")
        yield _checked_name(name), cls


def _rule_classes(result: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    from zplug.rules.base import Rule

    for name, cls in _named_classes(result):
        if not issubclass(cls, Rule):
            raise TypeError(f"rule class {cls.__qualname__} must subclass zplug.rules.Rule")
        yield name, cls


def _metric_classes(result: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    from zplug.metrics.base import Metric

    for name, cls in _named_classes(result):
        if not issubclass(cls, Metric):
            raise TypeError(f"metric class {cls.__qualname__} must subclass zplug.metrics.Metric")
        yield name, cls


def _stem_named(result: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    for path in result:
        yield _checked_name(path.name.rsplit(".", 1)[0]), path


def _command_items(result: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    for name, module in dict(result).items():
        if not (isinstance(module, str) and module.replace(".", "_").isidentifier()):
            raise TypeError(f"command '{name}': {module!r} is not a module name such as 'my_plugin.cli'")
        if not (isinstance(name, str) and name and name.replace("-", "_").isidentifier()):
            raise TypeError(f"{name!r} is not a command name such as 'explain-text'")
        yield name, module


def _named_items(result: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, obj in result.items():
        yield _checked_name(name), obj


def _layer_type_pairs(result: Mapping[str, Iterable[type | str]]) -> Iterator[tuple[str, tuple[type | str, ...]]]:
    for name, members in result.items():
        members = tuple(members)
        for member in members:
            if not isinstance(member, type) and not (isinstance(member, str) and "." in member):
                raise TypeError(f"layer type '{name}': {member!r} is neither a class nor a dotted class path")
        yield _checked_name(name), members


def _convention_mapping(answer: Any) -> dict[str, Any] | None:
    if answer is None:
        return None
    if not isinstance(answer, Mapping):
        raise TypeError(f"an input convention is a mapping or None, not {type(answer).__name__}")
    return dict(answer)


def _explainer(answer: Any) -> Callable[..., Any] | None:
    if answer is None or callable(answer):
        return answer
    raise TypeError(f"an explainer is a callable or None, not {type(answer).__name__}")


def _checked_name(name: str) -> str:
    if ":" in name:
        raise ValueError(f"name '{name}' contains ':', which separates a plugin from a name")
    return name


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


def registry_or_default(registry: PluginRegistry | None) -> PluginRegistry:
    """Return ``registry``, or the process-wide registry (:func:`default_registry`) if it is ``None``."""
    return default_registry() if registry is None else registry


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
    "registry_or_default",
    "set_default_registry",
)
