"""Resolve a preset against a model: which rule each module gets, and which canonizers apply.

Matching, per module in ``model.named_modules()`` order (taken while the canonizers are
applied, so modules they add are included):

1. ``name_map``: the first entry whose ``names`` match the module's name (exactly, or as
   an ``fnmatch`` glob) and, if it has ``types``, whose types match too;
2. ``first_map``: only the first module, among those ``name_map`` left, that matches any
   entry (Zennit's first-layer rule; named_modules order, as Zennit);
3. ``last_map``: likewise, only the last such module (e.g. the output layer);
4. ``layer_map``: the first entry whose ``types`` match.

A child preset's entries come before its parent's in every table.

While the canonizers are applied, the coverage analysis (:mod:`zplug.coverage`) lists the
operations between the modules and whether a rule covers them; it is part of the mapping.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from zplug.errors import CoverageError, ModelMismatchError, SpecError, ZplugError
from zplug.mapping import CanonizerChoice, LayerMapping, MappedModule
from zplug.preset.binding import bind_preset
from zplug.preset.classes import layer_classes
from zplug.preset.records import GLOB_CHARS, MapEntry, ParamRef, PartSpec, Preset
from zplug.preset.validate import build_part
from zplug.preset.values import materialize
from zplug.registry import registry_or_default

if TYPE_CHECKING:
    from pathlib import Path

    from zplug.registry import PluginRegistry


def resolve(
    model: torch.nn.Module,
    preset: str | Path | Preset,
    *,
    strict: bool = False,
    canonizers: Sequence[str | Any] | str | None = None,
    registry: PluginRegistry | None = None,
    **params: Any,
) -> LayerMapping:
    """Resolve ``preset`` for ``model`` into an explicit :class:`~zplug.mapping.LayerMapping`.

    Parameters
    ----------
    model : torch.nn.Module
        The model. It is canonized temporarily while its modules are listed, and restored.
    preset : str, Path or Preset
        A registered preset name, a path to a TOML file, or a loaded :class:`~zplug.preset.Preset`.
    strict : bool
        Raise if a leaf module that holds parameters gets no rule, or if an operation on the path
        from the input to the output is not covered (see :mod:`zplug.coverage`; where torch.fx cannot
        trace the model, the mapping raises at its first call instead). Without it, the mapping
        warns (:class:`~zplug.errors.CoverageWarning`) when it is applied.
    canonizers : sequence, "auto" or None
        Overrides the preset's canonizers: names, canonizer instances, ``"auto"``, or ``[]``
        for none. ``None`` keeps the preset's choice.
    registry : PluginRegistry or None
        Where names are looked up (the default registry if ``None``).
    **params
        Values for the preset's parameters (floats, tensors, ...); they override defaults.

    Returns
    -------
    LayerMapping
        One entry per module, in ``named_modules()`` order.

    Raises
    ------
    SpecError
        For an unknown parameter, a required parameter without a value, or a value a rule rejects.
    ModelMismatchError
        If a ``name_map`` entry names a module the model lacks, or with ``strict=True`` when a
        module with parameters got no rule.
    CoverageError
        With ``strict=True``, when an operation is not covered (a subclass of ModelMismatchError).
    """
    from zplug.canonizers import applied_canonizers

    registry = registry_or_default(registry)
    bound = bind_preset(preset, params, registry=registry)
    preset, values = bound.preset, bound.values()
    notes: list[str] = []
    choices = _choose_canonizers(model, preset, canonizers, values, registry, notes)
    structure = None
    if not _is_gradient_method(preset, registry):
        from zplug.coverage import structure_key

        structure = (registry.op_treatments, structure_key(model, [c.canonizer for c in choices]))
    with applied_canonizers(model, [c.canonizer for c in choices]):
        named = list(model.named_modules())
        assignment = match_modules(preset, named, registry, model_type=type(model).__name__)
        rules: dict[int, Any] = {}
        entries = []
        for name, module in named:
            entry = assignment.get(name)
            rule = None
            if entry is not None:
                if id(entry) not in rules:
                    rules[id(entry)] = _build_rule(preset, entry, values, registry)
                rule = rules[id(entry)]
            entries.append(
                MappedModule(
                    name=name,
                    type=type(module).__name__,
                    module_class=type(module),
                    rule=rule,
                    matched=None if entry is None else preset.label(entry),
                    leaf=next(module.children(), None) is None,
                    has_params=next(module.parameters(recurse=False), None) is not None,
                )
            )
        _check_zero_params(preset, named, assignment, rules)
        ruled = {e.name: e.rule for e in entries if e.rule is not None}
        coverage, key = _coverage(model, structure, ruled, registry)
    mapping = LayerMapping(
        entries, canonizers=choices, preset=preset, params=values, model_type=type(model).__name__,
        coverage=coverage, notes=notes, strict=strict, coverage_key=key,
    )
    if strict and mapping.unmapped:
        listing = ", ".join(f"{n} ({mapping[n].type})" for n in mapping.unmapped)
        raise ModelMismatchError(
            f"preset '{preset.name}' gives no rule to {len(mapping.unmapped)} module(s) with parameters: {listing}; "
            "add an entry for them to the preset (e.g. [[layer_map]] with their types), or resolve without strict"
        )
    if strict and coverage is not None and coverage.uncovered:
        from zplug.coverage import problems, strict_message

        raise CoverageError(strict_message(problems(coverage), preset=mapping.label, model_type=mapping.model_type))
    return mapping


def _is_gradient_method(preset: Preset, registry: PluginRegistry) -> bool:
    """Whether every rule the preset names modifies a gradient (guided backprop, ...): nothing to check then."""
    from zplug.coverage import is_gradient_method

    classes = []
    for entry in preset.entries():
        try:
            classes.append(registry.rules[entry.rule.name])
        except ZplugError:
            return False  # reported where the rule is built
    return is_gradient_method(classes)


def _coverage(
    model: torch.nn.Module, structure: tuple | None, rules: Mapping[str, Any], registry: PluginRegistry
) -> tuple[Any, tuple | None]:
    """The coverage of the canonized ``model`` and its cache key (``structure`` None: a gradient method)."""
    from zplug.coverage import Coverage, analyse, rules_key

    if structure is None:
        return Coverage(gradient_method=True), None
    key = (*structure, rules_key(rules))
    return analyse(model, rules, registry=registry, key=key), key


def match_modules(
    preset: Preset,
    named: Sequence[tuple[str, torch.nn.Module]],
    registry: PluginRegistry,
    *,
    model_type: str = "model",
) -> dict[str, MapEntry]:
    """Return ``{module name: matching entry}`` following the precedence described in this module."""
    classes = _TypeCache(registry)
    names = [n for n, _ in named]
    _check_names(preset, names, model_type)
    chosen: dict[str, MapEntry] = {}
    for name, module in named:
        entry = next((e for e in preset.name_map if _names_match(e, name) and classes.match(e, module)), None)
        if entry is not None:
            chosen[name] = entry
    for table, order in (("first_map", named), ("last_map", list(reversed(named)))):
        entries = getattr(preset, table)
        for name, module in order:
            if name in chosen:
                continue
            entry = next((e for e in entries if classes.match(e, module)), None)
            if entry is not None:
                chosen[name] = entry
                break
    for name, module in named:
        if name not in chosen:
            entry = next((e for e in preset.layer_map if classes.match(e, module)), None)
            if entry is not None:
                chosen[name] = entry
    return chosen


class _TypeCache:
    def __init__(self, registry: PluginRegistry) -> None:
        self.registry = registry
        self.cache: dict[int, tuple[type, ...]] = {}

    def match(self, entry: MapEntry, module: torch.nn.Module) -> bool:
        if not entry.types:
            return True
        classes = self.cache.get(id(entry))
        if classes is None:
            found: list[type] = []
            for i, type_name in enumerate(entry.types):
                try:
                    found.extend(layer_classes(type_name, self.registry))
                except SpecError as exc:
                    raise exc.at(entry.table, entry.index, "types", i).in_file(entry.file or "") from None
            classes = self.cache[id(entry)] = tuple(found)
        return isinstance(module, classes)


def _names_match(entry: MapEntry, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) if _is_glob(p) else name == p for p in entry.names)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in GLOB_CHARS)


def _check_names(preset: Preset, names: Sequence[str], model_type: str) -> None:
    known = set(names)
    for entry in preset.name_map:
        for i, pattern in enumerate(entry.names):
            if _is_glob(pattern) or pattern in known:
                continue
            close = difflib.get_close_matches(pattern, [n for n in names if n], n=1)
            suggestion = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"{preset.label(entry)}.names[{i}]"
            prefix = f"{entry.file}: " if entry.file else ""
            raise ModelMismatchError(
                f"{prefix}{where}: the model {model_type} has no module '{pattern}'{suggestion}; "
                "run `zplug mapping` without this entry to list the module names"
            )


def _value(preset: Preset, value: Any, values: Mapping[str, Any]) -> Any:
    if not isinstance(value, ParamRef):
        return materialize(value)
    if value.param not in values:
        decl = preset.params[value.param]
        doc = f" ({decl.doc})" if decl.doc else ""
        raise SpecError(
            f"preset '{preset.name}' needs a value for parameter '{value.param}'{doc}: pass "
            f"resolve(..., {value.param}=...) or --param {value.param}=...",
            keypath=("params", value.param),
        )
    return values[value.param]


def _build_rule(preset: Preset, entry: MapEntry, values: Mapping[str, Any], registry: PluginRegistry) -> Any:
    try:
        params = {k: _value(preset, v, values) for k, v in entry.rule.params.items()}
    except SpecError as exc:
        raise (exc.in_file(preset.file) if preset.file else exc) from None
    try:
        return build_part("rule", registry.rules[entry.rule.name], params)
    except SpecError as exc:
        raise SpecError(exc.message, file=entry.file, keypath=(entry.table, entry.index, "rule")) from None


def _check_zero_params(
    preset: Preset,
    named: Sequence[tuple[str, torch.nn.Module]],
    assignment: Mapping[str, MapEntry],
    rules: Mapping[int, Any],
) -> None:
    """Refuse ``zero_params`` names that no layer given the rule has (a typo would otherwise zero nothing)."""
    from zplug.engine.ops import params_of

    available: dict[int, set[str]] = {}
    for name, module in named:
        entry = assignment.get(name)
        if entry is not None and getattr(rules[id(entry)], "zero_params", ()):
            available.setdefault(id(entry), set()).update(module._parameters, params_of(module))
    for entry in {id(e): e for e in assignment.values()}.values():
        have = available.get(id(entry))
        if not have:  # the rule applies to no layer with parameters: nothing to check against
            continue
        for unknown in (n for n in rules[id(entry)].zero_params if n not in have):
            close = difflib.get_close_matches(unknown, sorted(have), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "use one of these names"
            raise SpecError(
                f"zero_params names '{unknown}', which no layer given this rule has "
                f"(their parameters: {', '.join(sorted(have))}; {hint})",
                file=entry.file, keypath=(entry.table, entry.index, "rule"),
            )


def _choose_canonizers(
    model: torch.nn.Module,
    preset: Preset,
    override: Sequence[str | Any] | str | None,
    values: Mapping[str, Any],
    registry: PluginRegistry,
    notes: list[str],
) -> list[CanonizerChoice]:
    if override is not None:
        if override == "auto":
            return _auto(model, registry, notes)
        if isinstance(override, str):  # one name, e.g. canonizers="merge_batchnorm"
            override = [override]
        if not isinstance(override, Sequence):
            raise SpecError(
                "canonizers= must be 'auto', a canonizer name, a list of names or canonizer instances, or [] for none "
                f"(got {type(override).__name__})"
            )
        choices = []
        for item in override:
            if isinstance(item, str):
                try:
                    canonizer = _construct(PartSpec(name=item), preset, values, registry, ())
                except SpecError as exc:  # the name came from the caller, not from the preset file
                    raise SpecError(f"canonizers=: {exc.message}") from None
                choices.append(_choice(item, canonizer, "given to resolve()", model))
            else:
                choices.append(_choice(getattr(item, "name", type(item).__name__), item, "given to resolve()", model))
        return choices
    if preset.canonizers == "auto":
        return _auto(model, registry, notes)
    return [
        _choice(part.name, _construct(part, preset, values, registry, ("canonizers", i)), "listed in the preset", model)
        for i, part in enumerate(preset.canonizers or ())
    ]


def _auto(model: torch.nn.Module, registry: PluginRegistry, notes: list[str]) -> list[CanonizerChoice]:
    """The canonizers plugins suggest, ordered and de-duplicated by :func:`zplug.canonizers.auto_canonizers`.

    The generic suggestions need a torch.fx trace of the model; if there is none, ``notes`` gets why
    (the mapping shows it and warns), instead of a silent "canonizers: none". A family canonizer
    that covers ``residual_sum`` (a plugin's rewrite of the model's own blocks) makes the trace unneeded.
    """
    from zplug.canonizers import base
    from zplug.canonizers._trace import NotTraceableError, trace

    choose = getattr(base, "auto_canonizers", None)
    suggested = choose(model, registry) if choose is not None else registry.suggest_canonizers(model)
    choices, covered = [], set()
    for name, reason, plugin in suggested:
        qualified = f"{plugin}:{name}"
        cls = registry.canonizers[qualified if qualified in registry.canonizers else name]
        covered.update(getattr(cls, "covers", ()))
        choices.append(_choice(name, build_part("canonizer", cls, {}), f"auto: {reason}", model, plugin))
    if "residual_sum" not in covered:
        try:
            trace(model, "canonizers = 'auto'")
        except NotTraceableError as exc:
            reason = str(exc).split(". Typical causes")[0].removeprefix("canonizers = 'auto': ")
            notes.append(
                f"canonizers = 'auto' could not look for residual additions and BatchNorm pairs: {reason}; "
                "list the canonizers the model needs instead (canonizers=[...] or the preset's canonizers)"
            )
    return choices


def _construct(part: PartSpec, preset: Preset, values: Mapping[str, Any], registry: PluginRegistry, keypath) -> Any:
    try:
        params = {k: _value(preset, v, values) for k, v in part.params.items()}
        return build_part("canonizer", registry.canonizers[part.name], params)
    except SpecError as exc:
        raise SpecError(exc.message, file=preset.file, keypath=exc.keypath or keypath) from None
    except ZplugError as exc:
        raise SpecError(str(exc), file=preset.file, keypath=keypath) from None


def _choice(name: str, canonizer: Any, reason: str, model: torch.nn.Module, plugin: str | None = None):
    describe = getattr(canonizer, "describe", None)
    changes = tuple(describe(model)) if callable(describe) else ()
    return CanonizerChoice(name=name, canonizer=canonizer, reason=reason, plugin=plugin, changes=changes)


__all__ = ("match_modules", "resolve")
