"""The preset records: plain, frozen data that a loaded and checked preset file becomes.

A preset has parameters with defaults, an optional list of canonizers, and four tables of
entries that select modules and name a rule for them. The records hold no torch objects: a
tensor written in TOML stays a :class:`~zplug.preset.values.TensorLiteral` until the preset is
bound to values (:meth:`Preset.bind`), so reading and checking presets never needs torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from zplug.errors import SpecError, unknown_name_message

if TYPE_CHECKING:
    from zplug.registry import PluginRegistry

SCHEMA = 1
#: The entry tables in order of precedence.
TABLES = ("name_map", "first_map", "last_map", "layer_map")
TOP_KEYS = ("schema", "summary", "extends", "canonizers", "params", *TABLES)
#: Names that cannot be preset parameters: they are keyword arguments of :func:`zplug.resolve`.
RESERVED_PARAMS = ("canonizers", "model", "preset", "registry", "strict")
GLOB_CHARS = "*?["


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

    def check_values(self, values: Mapping[str, Any]) -> None:
        """Raise :class:`SpecError` if ``values`` names a parameter the preset does not declare."""
        for key in values:
            if key not in self.params:
                raise SpecError(
                    unknown_name_message("parameter", key, self.params).replace(
                        "unknown parameter", f"preset '{self.name}' has no parameter", 1
                    )
                )

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return the parameter values: defaults overridden by ``values`` (``None`` means unset).

        Required parameters that have no value are left out; using them raises later. Tensors
        written in TOML (:class:`~zplug.preset.values.TensorLiteral`) become torch tensors here.

        Raises
        ------
        SpecError
            If ``values`` names a parameter the preset does not declare.
        """
        from zplug.preset.values import materialize

        self.check_values(values)
        bound = {}
        for name, decl in self.params.items():
            value = values.get(name)
            if value is not None:
                bound[name] = materialize(value)
            elif not decl.required:
                bound[name] = materialize(decl.default)
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
        from zplug.preset.toml import parse_toml

        return cls.from_dict(parse_toml(text, file=file), name=name, file=file, registry=registry)

    @classmethod
    def from_dict(
        cls, doc: Mapping[str, Any], *, name: str, file: str | None = None, registry: PluginRegistry | None = None
    ) -> Preset:
        """Build a preset from a parsed TOML document; see :meth:`from_toml`."""
        from zplug.preset.validate import build_preset

        return build_preset(doc, name=name, file=file, registry=registry)

    def merged_into(self, parent: Preset) -> Preset:
        """Return this preset extending ``parent``: own entries first, parameters overriding the parent's."""
        params = {**parent.params, **self.params}
        canonizers = parent.canonizers if self.canonizers is None else self.canonizers
        tables = {t: getattr(self, t) + getattr(parent, t) for t in TABLES}
        return attrs.evolve(self, params=params, canonizers=canonizers, **tables)


__all__ = (
    "GLOB_CHARS",
    "REQUIRED",
    "RESERVED_PARAMS",
    "SCHEMA",
    "TABLES",
    "TOP_KEYS",
    "MapEntry",
    "ParamDecl",
    "ParamRef",
    "PartSpec",
    "Preset",
)
