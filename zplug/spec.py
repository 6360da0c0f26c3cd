"""Preset records and how they are built from TOML, with errors that name the key path.

A preset is plain data: parameters with defaults, an optional list of canonizers, and
four tables of entries that select modules and name a rule for them. Everything here is
checked when the file is loaded (unknown keys, unknown rule / layer type / canonizer
names, ill-typed rule parameters), so that :func:`zplug.resolve` only has to match
modules. The format is documented in ``docs/presets.md``.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs
import torch

from zplug.errors import SpecError, ZplugError, unknown_name_message

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from zplug.registry import PluginRegistry

SCHEMA = 1
#: The entry tables in order of precedence.
TABLES = ("name_map", "first_map", "last_map", "layer_map")
TOP_KEYS = ("schema", "summary", "extends", "canonizers", "params", *TABLES)
#: Names that cannot be preset parameters: they are keyword arguments of :func:`zplug.resolve`.
RESERVED_PARAMS = ("canonizers", "model", "preset", "registry", "strict")
GLOB_CHARS = "*?["
_ENTRY_KEYS = {
    "name_map": ("names", "types", "rule"),
    "first_map": ("types", "rule"),
    "last_map": ("types", "rule"),
    "layer_map": ("types", "rule"),
}
_TENSOR_KEYS = ("tensor", "shape", "dtype")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


class _Required:
    """Marks a preset parameter without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@attrs.frozen
class ParamRef:
    """A reference to a preset parameter, written ``{ param = "gamma" }`` in TOML."""

    param: str


@attrs.frozen(kw_only=True, eq=False)
class ParamDecl:
    """A preset parameter: its default (or :data:`REQUIRED`) and one line of documentation."""

    name: str
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        """Whether the parameter has no default."""
        return self.default is REQUIRED


@attrs.frozen(kw_only=True, eq=False)
class PartSpec:
    """A rule or canonizer by registered name, with parameters (values or :class:`ParamRef`)."""

    name: str
    params: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True, eq=False)
class MapEntry:
    """One entry of ``name_map``, ``first_map``, ``last_map`` or ``layer_map``.

    Attributes
    ----------
    table, index : str, int
        Where the entry is written (``layer_map``, 2), in the preset named ``origin``.
    rule : PartSpec
        The rule for matching modules.
    types : tuple of str
        Layer type names or dotted class paths; a module matches if it is an instance of any.
    names : tuple of str
        Module names or ``fnmatch`` globs (``name_map`` only).
    origin : str
        The preset that wrote the entry (differs from the loaded preset for ``extends``).
    file : str or None
        The file that preset came from.
    """

    table: str
    index: int
    rule: PartSpec
    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    origin: str = ""
    file: str | None = None

    @property
    def where(self) -> str:
        """``layer_map[2]``: the entry's key path in its own file."""
        return f"{self.table}[{self.index}]"


@attrs.frozen(kw_only=True, eq=False)
class Preset:
    """A validated preset. Build it with :meth:`from_toml` or :func:`zplug.load_preset`.

    Attributes
    ----------
    name : str
        The preset's name (the file stem).
    summary : str
        One line for listings.
    params : Mapping[str, ParamDecl]
        Declared parameters, those of ``extends`` parents included.
    canonizers : str, tuple of PartSpec, or None
        ``"auto"``, or the canonizers to apply, in order; ``None`` if the file does not say
        (a preset that extends another then inherits its parent's; otherwise none are applied).
    name_map, first_map, last_map, layer_map : tuple of MapEntry
        The entries, a child's before its parent's.
    extends : str or None
        The parent preset as written in the file.
    file : str or None
        Where the preset was read from (for messages).
    """

    name: str
    summary: str = ""
    params: Mapping[str, ParamDecl] = attrs.field(factory=dict)
    canonizers: str | tuple[PartSpec, ...] | None = None
    name_map: tuple[MapEntry, ...] = ()
    first_map: tuple[MapEntry, ...] = ()
    last_map: tuple[MapEntry, ...] = ()
    layer_map: tuple[MapEntry, ...] = ()
    extends: str | None = None
    file: str | None = None

    def entries(self) -> Iterator[MapEntry]:
        """Yield every entry, tables in order of precedence."""
        for table in TABLES:
            yield from getattr(self, table)

    def label(self, entry: MapEntry) -> str:
        """Say which entry matched: ``layer_map[2]``, or ``epsilon_plus:layer_map[2]`` if inherited."""
        return entry.where if entry.origin == self.name else f"{entry.origin}:{entry.where}"

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return the parameter values: defaults overridden by ``values`` (``None`` means unset).

        Required parameters that have no value are left out; using them raises later.

        Raises
        ------
        SpecError
            If ``values`` names a parameter the preset does not declare.
        """
        for key in values:
            if key not in self.params:
                raise SpecError(
                    unknown_name_message("parameter", key, self.params).replace(
                        "unknown parameter", f"preset '{self.name}' has no parameter", 1
                    )
                )
        bound = {}
        for name, decl in self.params.items():
            value = values.get(name)
            if value is not None:
                bound[name] = value
            elif not decl.required:
                bound[name] = decl.default
        return bound

    @classmethod
    def from_toml(
        cls, text: str, *, name: str, file: str | None = None, registry: PluginRegistry | None = None
    ) -> Preset:
        """Parse and check one preset file (``extends`` is recorded, not followed).

        Parameters
        ----------
        text : str
            The TOML text.
        name : str
            The preset's name (the file stem).
        file : str or None
            The file name used in messages.
        registry : PluginRegistry or None
            Where rule, canonizer and layer type names are looked up (default: the default registry).

        Raises
        ------
        SpecError
            For invalid TOML and every invalid key or value, located by file and key path.
        """
        return cls.from_dict(parse_toml(text, file=file), name=name, file=file, registry=registry)

    @classmethod
    def from_dict(
        cls, doc: Mapping[str, Any], *, name: str, file: str | None = None, registry: PluginRegistry | None = None
    ) -> Preset:
        """Build a preset from a parsed TOML document; see :meth:`from_toml`."""
        registry = _registry(registry)
        try:
            preset = _build(doc, name=name, file=file, registry=registry)
            if preset.extends is None:
                check_preset(preset, registry)
            return preset
        except SpecError as exc:
            raise exc.in_file(file) if file else exc from None

    def merged_into(self, parent: Preset) -> Preset:
        """Return this preset extending ``parent``: own entries first, parameters overriding the parent's."""
        params = {**parent.params, **self.params}
        canonizers = parent.canonizers if self.canonizers is None else self.canonizers
        tables = {t: getattr(self, t) + getattr(parent, t) for t in TABLES}
        return attrs.evolve(self, params=params, canonizers=canonizers, **tables)


# -- TOML -----------------------------------------------------------------------------------------
def parse_toml(text: str, *, file: str | None = None) -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes a :class:`SpecError` that keeps the line number."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"invalid TOML: {exc}", file=file) from None


def read_text(source: Any, file: str) -> str:
    """Read a preset file (``Path`` or ``Traversable``) as UTF-8 text, with one-line errors."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read preset file: {exc.strerror or exc}", file=file) from None
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
    if isinstance(value, torch.Tensor):
        return toml_value(tensor_doc(value))
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise SpecError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def tensor_doc(value: torch.Tensor) -> dict[str, Any]:
    """Describe a tensor as TOML data: ``{ tensor = [flat values], shape = [...], dtype = "..." }``."""
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


# -- building -------------------------------------------------------------------------------------
@contextmanager
def _at(*keys: str | int) -> Iterator[None]:
    """Prepend ``keys`` to the key path of a :class:`SpecError` raised inside the block."""
    try:
        yield
    except SpecError as exc:
        raise exc.at(*keys) from None


def _registry(registry: PluginRegistry | None) -> PluginRegistry:
    if registry is None:
        from zplug.registry import default_registry

        registry = default_registry()
    return registry


def _describe(value: Any) -> str:
    """Say what a TOML value is, for 'must be ... (got ...)' messages."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return f"an array {toml_value_safe(value)}" if len(value) < 6 else "an array"
    return toml_value_safe(value)


def toml_value_safe(value: Any) -> str:
    """Like :func:`toml_value`, but never raises (falls back to ``repr``)."""
    try:
        return toml_value(value)
    except SpecError:
        return repr(value)


def _check_keys(table: Mapping[str, Any], valid: Sequence[str], what: str) -> None:
    for key in table:
        if key not in valid:
            close = [k for k in valid if k.lower() == str(key).lower()] or _close(str(key), valid)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SpecError(f"unknown key '{key}' in {what} ({hint}valid keys: {', '.join(valid)})")


def _close(name: str, valid: Sequence[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, list(valid), n=1)


def _string(value: Any, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise SpecError(f"must be {what} (got {_describe(value)})")
    return value


def _strings(value: Any, example: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"must be a non-empty array of strings, e.g. {example} (got {_describe(value)})")
    for i, item in enumerate(value):
        with _at(i):
            _string(item)
    return tuple(value)


def _build(doc: Mapping[str, Any], *, name: str, file: str | None, registry: PluginRegistry) -> Preset:
    _check_keys(doc, TOP_KEYS, "a preset")
    if "schema" not in doc:
        raise SpecError(f"missing key 'schema' (add 'schema = {SCHEMA}' at the top of the file)")
    schema = doc["schema"]
    if isinstance(schema, bool) or schema != SCHEMA:
        with _at("schema"):
            raise SpecError(f"unsupported schema {_describe(schema)}; this version of zplug reads schema {SCHEMA}")
    summary = ""
    if "summary" in doc:
        with _at("summary"):
            summary = _string(doc["summary"])
    extends = None
    if "extends" in doc:
        with _at("extends"):
            extends = _string(doc["extends"], "a preset name or a path to a .toml file")
            if not extends:
                raise SpecError("must name a preset or a .toml file (got \"\")")
    params: dict[str, ParamDecl] = {}
    if "params" in doc:
        with _at("params"):
            params = _params(doc["params"])
    canonizers: str | tuple[PartSpec, ...] | None = None
    if "canonizers" in doc:
        with _at("canonizers"):
            canonizers = _canonizers(doc["canonizers"], registry)
    tables: dict[str, tuple[MapEntry, ...]] = {}
    for table in TABLES:
        if table in doc:
            with _at(table):
                tables[table] = _table(table, doc[table], name=name, file=file, registry=registry)
    return Preset(name=name, summary=summary, params=params, canonizers=canonizers, extends=extends, file=file,
                  **tables)


def _params(table: Any) -> dict[str, ParamDecl]:
    if not isinstance(table, Mapping):
        raise SpecError(f"must be a table of parameters, e.g. [params] gamma = 0.25 (got {_describe(table)})")
    params = {}
    for key, value in table.items():
        with _at(key):
            if key in RESERVED_PARAMS:
                raise SpecError(f"'{key}' is reserved (an argument of zplug.resolve()); choose another name")
            if not key.isidentifier():
                raise SpecError(f"'{key}' is not a valid parameter name (use letters, digits and underscores)")
            params[key] = _param(key, value)
    return params


def _param(name: str, value: Any) -> ParamDecl:
    if isinstance(value, Mapping) and "param" in value:
        raise SpecError("a parameter cannot refer to another parameter; give it a value or a declaration")
    if isinstance(value, Mapping) and not any(k in value for k in _TENSOR_KEYS):
        _check_keys(value, ("default", "required", "doc"), "a parameter declaration")
        doc = ""
        if "doc" in value:
            with _at("doc"):
                doc = _string(value["doc"])
        required = value.get("required", False)
        if not isinstance(required, bool):
            with _at("required"):
                raise SpecError(f"must be true or false (got {_describe(required)})")
        if required and "default" in value:
            raise SpecError("a parameter cannot be both required and have a default; remove one of them")
        if not required and "default" not in value:
            raise SpecError("give a 'default', or 'required = true'")
        default = REQUIRED
        if "default" in value:
            with _at("default"):
                default = literal(value["default"])
        return ParamDecl(name=name, default=default, doc=doc)
    return ParamDecl(name=name, default=literal(value))


def literal(value: Any) -> Any:
    """Turn a TOML value into a parameter value: ``{ tensor = ... }`` becomes a tensor."""
    if isinstance(value, Mapping):
        if "param" in value:
            raise SpecError("a parameter reference { param = ... } can only be used in a rule or canonizer")
        return _tensor(value)
    return value


def _tensor(table: Mapping[str, Any]) -> torch.Tensor:
    _check_keys(table, _TENSOR_KEYS, "a tensor")
    if "tensor" not in table:
        raise SpecError("a tensor needs the key 'tensor' (numbers, e.g. { tensor = [0.1, 0.2], shape = [1, 2] })")
    data = table["tensor"]
    with _at("tensor"):
        if not _numbers(data):
            raise SpecError(f"must be a number or a (nested) array of numbers (got {_describe(data)})")
    dtype = torch.float32
    if "dtype" in table:
        with _at("dtype"):
            name = table["dtype"]
            if name not in _DTYPES:
                raise SpecError(f"unknown dtype {_describe(name)} (known: {', '.join(_DTYPES)})")
            dtype = _DTYPES[name]
    try:
        tensor = torch.tensor(data, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        with _at("tensor"):
            raise SpecError("nested arrays must be rectangular (all rows of the same length)") from None
    if "shape" in table:
        shape = table["shape"]
        with _at("shape"):
            if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                      for s in shape):
                raise SpecError(f"must be an array of sizes >= 0, e.g. [1, 3, 1, 1] (got {_describe(shape)})")
            if math.prod(shape) != tensor.numel():
                raise SpecError(f"shape {shape} holds {math.prod(shape)} values, the tensor has {tensor.numel()}")
        tensor = tensor.reshape(shape)
    return tensor


def _numbers(data: Any, depth: int = 0) -> bool:
    if isinstance(data, bool):
        return False
    if isinstance(data, (int, float)):
        return True
    if isinstance(data, list) and depth < 8:
        return all(_numbers(item, depth + 1) for item in data)
    return False


def _part(value: Any, kind: str, catalog: Any) -> tuple[PartSpec, type]:
    """Parse ``"name"`` or ``{ name = "...", param = value, ... }`` and look the class up."""
    if isinstance(value, str):
        name, raw = value, {}
    elif isinstance(value, Mapping):
        if "name" not in value:
            raise SpecError(f"a {kind} table needs the key 'name', e.g. {{ name = \"epsilon\" }}")
        with _at("name"):
            name = _string(value["name"], f"a {kind} name")
        raw = {k: v for k, v in value.items() if k != "name"}
    else:
        raise SpecError(f"must be a {kind} name or a table {{ name = ..., ... }} (got {_describe(value)})")
    try:
        cls = catalog[name]
    except ZplugError as exc:
        raise SpecError(str(exc)) from None
    fields = {f.name: f for f in attrs.fields(cls)}
    params: dict[str, Any] = {}
    for key, item in raw.items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            close = _close(key, list(fields))
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SpecError(f"{kind} '{cls.name}' has no parameter '{key}' ({hint}valid: {valid})")
        if isinstance(item, Mapping) and "param" in item:
            with _at(key):
                _check_keys(item, ("param",), "a parameter reference")
                with _at("param"):
                    params[key] = ParamRef(_string(item["param"], "a parameter name"))
            continue
        with _at(key):
            params[key] = literal(item)
        check_value(kind, cls, key, params[key])
    return PartSpec(name=name, params=params), cls


def check_value(kind: str, cls: type, key: str, value: Any) -> None:
    """Check one parameter value with the field's converter and validator (as construction would)."""
    field = attrs.fields_dict(cls)[key]
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
                        f"(got {_describe(value)})")
    parts = []
    for i, item in enumerate(value):
        with _at(i):
            parts.append(_part(item, "canonizer", registry.canonizers)[0])
    return tuple(parts)


def _table(table: str, value: Any, *, name: str, file: str | None, registry: PluginRegistry) -> tuple[MapEntry, ...]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise SpecError(f"must be an array of tables, written [[{table}]] (got {_describe(value)})")
    entries = []
    for index, item in enumerate(value):
        with _at(index):
            entries.append(_entry(table, index, item, name=name, file=file, registry=registry))
    return tuple(entries)


def _entry(
    table: str, index: int, item: Mapping[str, Any], *, name: str, file: str | None, registry: PluginRegistry
) -> MapEntry:
    valid = _ENTRY_KEYS[table]
    _check_keys(item, valid, f"a {table} entry")
    selector = "names" if table == "name_map" else "types"
    if selector not in item:
        example = '["features.0"]' if selector == "names" else '["convolution"]'
        raise SpecError(f"missing key '{selector}' (e.g. {selector} = {example})")
    if "rule" not in item:
        raise SpecError("missing key 'rule' (e.g. rule = \"epsilon\" or rule = { name = \"gamma\", gamma = 0.25 })")
    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    if "names" in item:
        with _at("names"):
            names = _strings(item["names"], '["features.0", "classifier.*"]')
    if "types" in item:
        with _at("types"):
            types = _strings(item["types"], '["convolution", "torch.nn.Linear"]')
            for i, type_name in enumerate(types):
                with _at(i):
                    layer_classes(type_name, registry)
    with _at("rule"):
        rule, _ = _part(item["rule"], "rule", registry.rules)
    return MapEntry(table=table, index=index, rule=rule, types=types, names=names, origin=name, file=file)


# -- layer types ----------------------------------------------------------------------------------
def layer_classes(type_name: str, registry: PluginRegistry) -> tuple[type, ...]:
    """Return the module classes of a layer type name or a dotted class path (``"torch.nn.Conv2d"``)."""
    layer_types = registry.layer_types
    if type_name in layer_types:
        return tuple(layer_types[type_name])
    if "." not in type_name:
        message = unknown_name_message("layer type", type_name, layer_types)
        raise SpecError(message[:-1] + "; or a class path such as 'torch.nn.Conv2d')")
    cls = import_class(type_name)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise SpecError(f"'{type_name}' is not a torch.nn.Module class")
    return (cls,)


def import_class(path: str) -> Any:
    """Import ``package.module.Class`` (the longest importable module prefix, then attributes)."""
    parts = path.split(".")
    if not all(p.isidentifier() for p in parts):
        raise SpecError(f"'{path}' is not a dotted class path such as 'torch.nn.Conv2d'")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            continue
        except Exception as exc:  # a module that fails on import must not crash the loader
            raise SpecError(f"cannot import '{module_name}' ({type(exc).__name__}: {exc})") from None
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise SpecError(f"cannot find class '{path}' (module '{module_name}' has no '{attr}')")
            obj = getattr(obj, attr)
        return obj
    raise SpecError(f"cannot import '{path}' (no module '{parts[0]}')")


# -- whole-preset checks --------------------------------------------------------------------------
def check_preset(preset: Preset, registry: PluginRegistry | None = None) -> None:
    """Check references between parts of a (merged) preset and construct each rule where possible.

    Every ``{ param = ... }`` must name a declared parameter, the parameters' defaults must
    suit the rule parameters they feed, and rules whose parameters are all known are
    built once, to catch constraints between parameters (``alpha - beta = 1``).
    """
    registry = _registry(registry)
    if isinstance(preset.canonizers, tuple):
        for i, part in enumerate(preset.canonizers):
            with _at("canonizers", i):
                _check_part(preset, part, "canonizer", registry.canonizers)
    for entry in preset.entries():
        try:
            with _at(entry.table, entry.index, "rule"):
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
                with _at(key, "param"):
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
        values[key] = value
    if complete:
        build_part(kind, cls, values)


def _field_required(cls: type, key: str) -> bool:
    return attrs.fields_dict(cls)[key].default is attrs.NOTHING


def build_part(kind: str, cls: type, params: Mapping[str, Any]) -> Any:
    """Construct a rule or canonizer class from parameters, with :class:`SpecError` naming the parameter."""
    from zplug.parts import make_part

    return make_part(kind, cls, params)


__all__ = (
    "GLOB_CHARS",
    "REQUIRED",
    "RESERVED_PARAMS",
    "SCHEMA",
    "TABLES",
    "MapEntry",
    "ParamDecl",
    "ParamRef",
    "PartSpec",
    "Preset",
    "build_part",
    "check_preset",
    "dump_toml",
    "import_class",
    "layer_classes",
    "literal",
    "parse_toml",
    "read_text",
    "toml_value",
)
