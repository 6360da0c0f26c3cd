"""Checking a parsed preset document and building its records, with errors that name the key path.

Everything is checked when a file is loaded: unknown keys, unknown rule / canonizer / layer
type names, ill-typed rule parameters, references to undeclared parameters, and (where all
values are known) the constraints between a rule's parameters. :func:`zplug.resolve` then
only has to match modules. Rule and canonizer classes are looked up in the registry; nothing
here needs torch (see :mod:`zplug.preset.values` for tensors and :mod:`zplug.preset.classes`
for layer types).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from zplug.errors import SpecError, ZplugError, unknown_name_message
from zplug.parts import make_part
from zplug.preset.classes import check_layer_type
from zplug.preset.records import (
    REQUIRED,
    RESERVED_PARAMS,
    SCHEMA,
    TABLES,
    TOP_KEYS,
    MapEntry,
    ParamDecl,
    ParamRef,
    PartSpec,
    Preset,
)
from zplug.preset.values import (
    TENSOR_KEYS,
    TensorLiteral,
    check_keys,
    close_match,
    describe,
    literal,
    located,
    string,
    strings,
)
from zplug.registry import registry_or_default

if TYPE_CHECKING:
    from zplug.registry import PluginRegistry

_ENTRY_KEYS = {
    "name_map": ("names", "types", "rule"),
    "first_map": ("types", "rule"),
    "last_map": ("types", "rule"),
    "layer_map": ("types", "rule"),
}


def build_preset(
    doc: Mapping[str, Any], *, name: str, file: str | None = None, registry: PluginRegistry | None = None
) -> Preset:
    """Check a parsed preset document and return its :class:`Preset` (``extends`` is recorded, not followed).

    A preset without ``extends`` is checked whole (:func:`check_preset`); one with ``extends``
    is checked once merged with its parent.

    Raises
    ------
    SpecError
        For every invalid key or value, located by ``file`` and key path.
    """
    registry = registry_or_default(registry)
    try:
        preset = _build(doc, name=name, file=file, registry=registry)
        if preset.extends is None:
            check_preset(preset, registry)
        return preset
    except SpecError as exc:
        raise exc.in_file(file) if file else exc from None


def _build(doc: Mapping[str, Any], *, name: str, file: str | None, registry: PluginRegistry) -> Preset:
    check_keys(doc, TOP_KEYS, "a preset")
    if "schema" not in doc:
        raise SpecError(f"missing key 'schema' (add 'schema = {SCHEMA}' at the top of the file)")
    schema = doc["schema"]
    if isinstance(schema, bool) or schema != SCHEMA:
        with located("schema"):
            raise SpecError(f"unsupported schema {describe(schema)}; this version of zplug reads schema {SCHEMA}")
    summary = ""
    if "summary" in doc:
        with located("summary"):
            summary = string(doc["summary"])
    extends = None
    if "extends" in doc:
        with located("extends"):
            extends = string(doc["extends"], "a preset name or a path to a .toml file")
            if not extends:
                raise SpecError("must name a preset or a .toml file (got \"\")")
    params: dict[str, ParamDecl] = {}
    if "params" in doc:
        with located("params"):
            params = _params(doc["params"])
    canonizers: str | tuple[PartSpec, ...] | None = None
    if "canonizers" in doc:
        with located("canonizers"):
            canonizers = _canonizers(doc["canonizers"], registry)
    tables: dict[str, tuple[MapEntry, ...]] = {}
    for table in TABLES:
        if table in doc:
            with located(table):
                tables[table] = _table(table, doc[table], name=name, file=file, registry=registry)
    return Preset(name=name, summary=summary, params=params, canonizers=canonizers, extends=extends, file=file,
                  **tables)


def _params(table: Any) -> dict[str, ParamDecl]:
    if not isinstance(table, Mapping):
        raise SpecError(f"must be a table of parameters, e.g. [params] gamma = 0.25 (got {describe(table)})")
    params = {}
    for key, value in table.items():
        with located(key):
            if key in RESERVED_PARAMS:
                raise SpecError(f"'{key}' is reserved (an argument of zplug.resolve()); choose another name")
            if not key.isidentifier():
                raise SpecError(f"'{key}' is not a valid parameter name (use letters, digits and underscores)")
            params[key] = _param(key, value)
    return params


def _param(name: str, value: Any) -> ParamDecl:
    if isinstance(value, Mapping) and "param" in value:
        raise SpecError("a parameter cannot refer to another parameter; give it a value or a declaration")
    if isinstance(value, Mapping) and not any(k in value for k in TENSOR_KEYS):
        check_keys(value, ("default", "required", "doc"), "a parameter declaration")
        doc = ""
        if "doc" in value:
            with located("doc"):
                doc = string(value["doc"])
        required = value.get("required", False)
        if not isinstance(required, bool):
            with located("required"):
                raise SpecError(f"must be true or false (got {describe(required)})")
        if required and "default" in value:
            raise SpecError("a parameter cannot be both required and have a default; remove one of them")
        if not required and "default" not in value:
            raise SpecError("give a 'default', or 'required = true'")
        default = REQUIRED
        if "default" in value:
            with located("default"):
                default = literal(value["default"])
        return ParamDecl(name=name, default=default, doc=doc)
    return ParamDecl(name=name, default=literal(value))


def _part(value: Any, kind: str, catalog: Any) -> tuple[PartSpec, type]:
    """Parse ``"name"`` or ``{ name = "...", param = value, ... }`` and look the class up."""
    if isinstance(value, str):
        name, raw = value, {}
    elif isinstance(value, Mapping):
        if "name" not in value:
            raise SpecError(f"a {kind} table needs the key 'name', e.g. {{ name = \"epsilon\" }}")
        with located("name"):
            name = string(value["name"], f"a {kind} name")
        raw = {k: v for k, v in value.items() if k != "name"}
    else:
        raise SpecError(f"must be a {kind} name or a table {{ name = ..., ... }} (got {describe(value)})")
    try:
        entry = catalog.entry(name)
    except ZplugError as exc:
        raise SpecError(str(exc)) from None
    cls = entry.obj
    if catalog.is_ambiguous(name):  # settled by the preset's plugin: keep that choice when the rule is built
        name = f"{entry.plugin}:{name}"
    fields = {f.name: f for f in attrs.fields(cls)}
    params: dict[str, Any] = {}
    for key, item in raw.items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            close = close_match(key, list(fields))
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SpecError(f"{kind} '{cls.name}' has no parameter '{key}' ({hint}valid: {valid})")
        if isinstance(item, Mapping) and "param" in item:
            with located(key):
                check_keys(item, ("param",), "a parameter reference")
                with located("param"):
                    params[key] = ParamRef(string(item["param"], "a parameter name"))
            continue
        with located(key):
            params[key] = literal(item)
        check_value(kind, cls, key, params[key])
    return PartSpec(name=name, params=params), cls


def check_value(kind: str, cls: type, key: str, value: Any) -> None:
    """Check one parameter value with the field's converter and validator (as construction would).

    A tensor written in TOML is checked as a torch tensor if torch is loaded; otherwise it is
    only checked against the words of the field's ``kind`` (``"number or tensor"``), and the
    full check happens when the preset is resolved.
    """
    field = attrs.fields_dict(cls)[key]
    if isinstance(value, TensorLiteral):
        if "torch" not in sys.modules:
            words = field.metadata.get("kind", "")
            if words and "tensor" not in words:
                raise SpecError(f"{kind} '{cls.name}': parameter '{key}' must be a {words} (got a tensor)")
            return
        value = value.to_tensor()
    try:
        converted = field.converter(value) if callable(field.converter) else value
        if field.validator is not None:
            field.validator(None, field, converted)
    except SpecError as exc:
        raise SpecError(f"{kind} '{cls.name}': {exc.message}") from None
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{kind} '{cls.name}': parameter '{key}': {exc}") from None


def _canonizers(value: Any, registry: PluginRegistry) -> str | tuple[PartSpec, ...]:
    if value == "auto":
        return "auto"
    if not isinstance(value, list):
        raise SpecError(f"must be \"auto\" or an array of canonizer names, e.g. [\"merge_batchnorm\"] "
                        f"(got {describe(value)})")
    parts = []
    for i, item in enumerate(value):
        with located(i):
            parts.append(_part(item, "canonizer", registry.canonizers)[0])
    return tuple(parts)


def _table(table: str, value: Any, *, name: str, file: str | None, registry: PluginRegistry) -> tuple[MapEntry, ...]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise SpecError(f"must be an array of tables, written [[{table}]] (got {describe(value)})")
    entries = []
    for index, item in enumerate(value):
        with located(index):
            entries.append(_entry(table, index, item, name=name, file=file, registry=registry))
    return tuple(entries)


def _entry(
    table: str, index: int, item: Mapping[str, Any], *, name: str, file: str | None, registry: PluginRegistry
) -> MapEntry:
    check_keys(item, _ENTRY_KEYS[table], f"a {table} entry")
    selector = "names" if table == "name_map" else "types"
    if selector not in item:
        example = '["features.0"]' if selector == "names" else '["convolution"]'
        raise SpecError(f"missing key '{selector}' (e.g. {selector} = {example})")
    if "rule" not in item:
        raise SpecError("missing key 'rule' (e.g. rule = \"epsilon\" or rule = { name = \"gamma\", gamma = 0.25 })")
    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    if "names" in item:
        with located("names"):
            names = strings(item["names"], '["features.0", "classifier.*"]')
    if "types" in item:
        with located("types"):
            types = strings(item["types"], '["convolution", "torch.nn.Linear"]')
            for i, type_name in enumerate(types):
                with located(i):
                    check_layer_type(type_name, registry)
    with located("rule"):
        rule, _ = _part(item["rule"], "rule", registry.rules)
    return MapEntry(table=table, index=index, rule=rule, types=types, names=names, origin=name, file=file)


# -- whole-preset checks --------------------------------------------------------------------------
def check_preset(preset: Preset, registry: PluginRegistry | None = None) -> None:
    """Check references between parts of a (merged) preset and construct each rule where possible.

    Every ``{ param = ... }`` must name a declared parameter, the parameters' defaults must
    suit the rule parameters they feed, and rules whose parameters are all known are
    built once, to catch constraints between parameters (``alpha - beta = 1``).
    """
    registry = registry_or_default(registry)
    if isinstance(preset.canonizers, tuple):
        for i, part in enumerate(preset.canonizers):
            with located("canonizers", i):
                _check_part(preset, part, "canonizer", registry.canonizers)
    for entry in preset.entries():
        try:
            with located(entry.table, entry.index, "rule"):
                _check_part(preset, entry.rule, "rule", registry.rules)
        except SpecError as exc:
            raise exc.in_file(entry.file) if entry.file else exc from None


def _check_part(preset: Preset, part: PartSpec, kind: str, catalog: Any) -> None:
    try:
        cls = catalog[part.name]
    except ZplugError as exc:
        raise SpecError(str(exc)) from None
    values = {}
    complete = True
    for key, value in part.params.items():
        if isinstance(value, ParamRef):
            decl = preset.params.get(value.param)
            if decl is None:
                with located(key, "param"):
                    raise SpecError(
                        unknown_name_message("parameter", value.param, preset.params).replace(
                            "unknown parameter", "no parameter", 1
                        )[:-1]
                        + "; declare it under [params])"
                    )
            if decl.required:
                complete = complete and not _field_required(cls, key)
                continue
            value = decl.default
            try:
                check_value(kind, cls, key, value)
            except SpecError as exc:
                raise SpecError(f"{exc.message} (from params.{decl.name})") from None
        if isinstance(value, TensorLiteral):
            if "torch" not in sys.modules:  # checked by kind only; the rule is built when resolved
                complete = False
                continue
            value = value.to_tensor()
        values[key] = value
    if complete:
        build_part(kind, cls, values)


def _field_required(cls: type, key: str) -> bool:
    return attrs.fields_dict(cls)[key].default is attrs.NOTHING


def build_part(kind: str, cls: type, params: Mapping[str, Any]) -> Any:
    """Construct a rule or canonizer class from parameters, with :class:`SpecError` naming the parameter."""
    return make_part(kind, cls, params)


__all__ = ("build_part", "build_preset", "check_preset", "check_value")
