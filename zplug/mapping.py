"""The layer mapping: which rule each module of a model gets, and why.

A :class:`LayerMapping` is what :func:`zplug.resolve` returns. It is plain data that can be
printed (``str(mapping)``), inspected (``mapping["features.0"]``, ``mapping.unmapped``),
saved as a fully explicit preset (``mapping.to_toml()``) and applied to the model
(``with mapping.applied(model) as m: ...``). Its coverage section (:mod:`zplug.coverage`) lists
the operations between the modules and whether a rule covers them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs
import torch

from zplug.errors import ModelMismatchError

if TYPE_CHECKING:
    from zplug.coverage import Coverage
    from zplug.preset.records import Preset
    from zplug.rules.base import Rule


@attrs.frozen(kw_only=True, eq=False)
class MappedModule:
    """One module of the model and what it gets.

    Attributes
    ----------
    name : str
        The name in ``model.named_modules()`` (``""`` is the model itself).
    type : str
        The module's class name.
    module_class : type
        The module's class.
    rule : Rule or None
        The rule instance, or ``None``: the module keeps its plain gradient.
    matched : str or None
        The preset entry that chose the rule (``"layer_map[2]"``, ``"epsilon_plus:first_map[0]"``).
    leaf : bool
        Whether the module has no children.
    has_params : bool
        Whether the module holds parameters itself (not counting its children).
    """

    name: str
    type: str
    module_class: type
    rule: Rule | None
    matched: str | None
    leaf: bool
    has_params: bool

    @property
    def rule_name(self) -> str | None:
        """The rule's registered name, or ``None``."""
        return None if self.rule is None else self.rule.name

    @property
    def params(self) -> dict[str, Any]:
        """The rule's resolved parameters (empty without a rule)."""
        return {} if self.rule is None else self.rule.params()

    @property
    def unmapped(self) -> bool:
        """A leaf module that holds parameters but got no rule (its gradient passes silently)."""
        return self.rule is None and self.leaf and self.has_params


@attrs.frozen(kw_only=True, eq=False)
class CanonizerChoice:
    """A canonizer the mapping applies, and why it was chosen."""

    name: str
    canonizer: Any
    reason: str
    plugin: str | None = None
    changes: tuple[str, ...] = ()


class LayerMapping(Sequence[MappedModule]):
    """The resolved assignment of rules to the modules of one model.

    Entries follow ``model.named_modules()`` order, taken while the canonizers were
    applied (so modules that canonizers add, such as a ``Sum``, are included).

    Parameters
    ----------
    entries : sequence of MappedModule
        One per module.
    canonizers : sequence of CanonizerChoice
        The canonizers to apply before the rules, in order.
    preset : Preset or None
        The preset it was resolved from.
    params : Mapping[str, Any]
        The preset parameter values used.
    model_type : str
        The model's class name (for display and ``to_toml``).
    coverage : Coverage or None
        The coverage analysis (:mod:`zplug.coverage`); ``None``: not analysed.
    notes : sequence of str
        What the resolver could not do (e.g. ``canonizers = "auto"`` could not trace the model);
        shown with the canonizers and issued as :class:`~zplug.errors.CoverageWarning`.
    strict : bool
        Raise :class:`~zplug.errors.CoverageError` instead of warning about uncovered operations.
    coverage_key : tuple or None
        The cache key of the coverage analysis (for the analysis of a first call).
    """

    def __init__(
        self,
        entries: Sequence[MappedModule],
        *,
        canonizers: Sequence[CanonizerChoice] = (),
        preset: Preset | None = None,
        params: Mapping[str, Any] | None = None,
        model_type: str = "",
        coverage: Coverage | None = None,
        notes: Sequence[str] = (),
        strict: bool = False,
        coverage_key: tuple | None = None,
    ) -> None:
        self.entries = tuple(entries)
        self.canonizers = tuple(canonizers)
        self.preset = preset
        self.params = dict(params or {})
        self.model_type = model_type
        self.notes = tuple(notes)
        self.strict = strict
        self.coverage_key = coverage_key
        self._coverage = coverage
        self._reported: set[str] = set()
        #: The form of the application in progress (see :meth:`applied`).
        self._form = "relevance"
        self._by_name = {e.name: e for e in self.entries}

    # -- sequence / lookup --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key):  # type: ignore[override]
        """Index by position, or look a module up by name (``mapping["features.0"]``)."""
        if isinstance(key, str):
            try:
                return self._by_name[key]
            except KeyError:
                raise KeyError(f"no module named '{key}' in the mapping") from None
        return self.entries[key]

    def __iter__(self) -> Iterator[MappedModule]:
        return iter(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name if isinstance(name, str) else name in self.entries

    @property
    def rules(self) -> dict[str, Rule]:
        """``{module name: rule instance}`` for every module that gets a rule."""
        return {e.name: e.rule for e in self.entries if e.rule is not None}

    @property
    def unmapped(self) -> tuple[str, ...]:
        """Names of leaf modules that hold parameters but got no rule (they keep the plain gradient)."""
        return tuple(e.name for e in self.entries if e.unmapped)

    @property
    def coverage(self) -> Coverage | None:
        """The coverage analysis: every operation from the input to the output and its treatment.

        ``coverage.pending`` says why it is not known yet (torch.fx could not trace the model): the
        first call under :meth:`applied`, or :meth:`analyse_coverage`, analyses the autograd graph.
        """
        return self._coverage

    def analyse_coverage(
        self, model: torch.nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor]
    ) -> Coverage | None:
        """Analyse the autograd graph of ``model(*inputs)`` if torch.fx could not (one forward pass).

        Nothing is run when the coverage is known already. Warnings are not issued here (see
        :meth:`report_coverage`).

        Returns
        -------
        Coverage or None
            The coverage (``None`` for a mapping without analysis).
        """
        coverage = self._coverage
        if coverage is None or coverage.analysed:
            return coverage
        from zplug.coverage import watch

        found: list[Coverage] = []
        xs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        with self._applied(model, (), "relevance"):
            recorder = watch(self, model, found.append)
            try:
                with torch.enable_grad():
                    model(*(x.detach().requires_grad_(x.is_floating_point()) for x in xs))
            finally:
                recorder.remove()
        if found:
            self._coverage = found[0]
        return self._coverage

    def report_coverage(self) -> None:
        """Issue the notes and the uncovered operations as warnings (once per mapping), or raise in strict mode.

        Raises
        ------
        CoverageError
            With ``strict=True``, if an operation is not covered.
        """
        from zplug.coverage import report

        coverage = self._coverage
        notes = () if "notes" in self._reported else self.notes
        self._reported.add("notes")
        known = coverage is not None and coverage.analysed and "operations" not in self._reported
        if known:
            self._reported.add("operations")
        if notes or known:
            from zplug.coverage import Coverage

            report(coverage if known else Coverage(), preset=self.label, model_type=self.model_type, notes=notes,
                   strict=self.strict)
        if self._form == "gradient" and coverage is not None and coverage.analysed and "shifts" not in self._reported:
            self._reported.add("shifts")
            from zplug.coverage import report_gradient_form

            report_gradient_form(coverage)

    @property
    def label(self) -> str:
        """``"preset 'epsilon_plus'"``, or ``"the mapping"`` without a preset (for messages)."""
        return f"preset '{self.preset.name}'" if self.preset is not None else "the mapping"

    def same_as(self, other: LayerMapping) -> bool:
        """Whether both map the same module names to equal rules, with the same canonizers."""
        if [c.name for c in self.canonizers] != [c.name for c in other.canonizers]:
            return False
        if any(a.canonizer != b.canonizer for a, b in zip(self.canonizers, other.canonizers)):
            return False
        mine, theirs = self.rules, other.rules
        return mine.keys() == theirs.keys() and all(
            type(mine[k]) is type(theirs[k]) and mine[k] == theirs[k] for k in mine
        )

    # -- application --------------------------------------------------------------------------
    @contextmanager
    def applied(
        self, model: torch.nn.Module, observers: Sequence[Any] = (), *, form: str = "relevance"
    ) -> Iterator[torch.nn.Module]:
        """Apply the canonizers (in order), then the rules, for the duration of a ``with`` block.

        Inside the block, ``torch.autograd.grad(model(x), x, grad_outputs=r)`` returns the
        relevance of ``x``. On exit, also after an exception, the model is restored exactly.

        Parameters
        ----------
        model : torch.nn.Module
            The model the mapping was resolved for (or one of the same architecture).
        observers : sequence of callables
            Passed to :func:`zplug.engine.attach_rules`: called after each rule computed
            relevance, as ``observer(binding, call, grad_outputs, relevance)``.
        form : {"relevance", "gradient"}
            What the backward pass carries between layers: each activation's relevance (as Zennit), or
            the relevance divided by the activation, which is faster and keeps less (the relevance of
            the model's inputs is the same; see :mod:`zplug.engine.gradient_form` for the one
            difference, added constants). Gradient form needs every rule to have one, no observers, and
            a model that returns tensors; relevance is read at the model's floating-point inputs.

        Yields
        ------
        torch.nn.Module
            The model.

        Warns
        -----
        CoverageWarning
            Once per mapping, for each operation no rule covers (:attr:`coverage`); where torch.fx could
            not trace the model, after the first call with an input that requires a gradient.

        Raises
        ------
        ModelMismatchError
            If the model lacks a mapped module, or a mapped module has another type.
        CoverageError
            With ``strict=True``, for operations no rule covers (at the first call where torch.fx could
            not trace the model).
        RelevanceError
            In gradient form, if a rule has none or observers are given.
        """
        with self._applied(model, observers, form):
            previous, self._form = self._form, form
            self.report_coverage()
            recorder = None
            if self._coverage is not None and not self._coverage.analysed:
                from zplug.coverage import watch

                recorder = watch(self, model, self._first_call_analysed)
            try:
                if form == "gradient":
                    from zplug.engine.gradient_form import model_boundaries

                    with model_boundaries(model):
                        yield model
                else:
                    yield model
            finally:
                self._form = previous
                if recorder is not None:
                    recorder.remove()

    def _first_call_analysed(self, coverage: Coverage) -> None:
        self._coverage = coverage
        self.report_coverage()

    @contextmanager
    def _applied(self, model: torch.nn.Module, observers: Sequence[Any], form: str) -> Iterator[torch.nn.Module]:
        from zplug.canonizers import applied_canonizers
        from zplug.engine import attach_rules

        with applied_canonizers(model, [c.canonizer for c in self.canonizers]):
            self._check_model(model)
            with attach_rules(model, self.rules, observers=tuple(observers), form=form):
                yield model

    def _check_model(self, model: torch.nn.Module) -> None:
        modules = dict(model.named_modules())
        for entry in self.entries:
            if entry.rule is None:
                continue
            module = modules.get(entry.name)
            if module is None:
                raise ModelMismatchError(
                    f"the mapping gives module '{entry.name}' a rule, but the model {type(model).__name__} has no "
                    "such module; resolve the preset for this model"
                )
            if type(module) is not entry.module_class:
                raise ModelMismatchError(
                    f"module '{entry.name}' is a {type(module).__name__}, but the mapping was resolved for a "
                    f"{entry.type}; resolve the preset for this model"
                )

    # -- display ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        preset = f" preset={self.preset.name!r}" if self.preset is not None else ""
        return f"<LayerMapping{preset} model={self.model_type} modules={len(self)} rules={len(self.rules)}>"

    def __str__(self) -> str:
        return format_mapping(self)

    def to_toml(self) -> str:
        """Write a fully explicit preset that resolves to this mapping on the same architecture.

        Every mapped module is named in a ``[[name_map]]`` entry (modules with equal rules
        share one) with all rule parameters written out; canonizers are listed explicitly
        (also those chosen by ``"auto"``). Tensor parameters are written as
        ``{ tensor = [...], shape = [...] }``.

        Raises
        ------
        SpecError
            If a parameter cannot be written as TOML (e.g. a callable stabilizer).
        """
        from zplug.preset.toml import dump_toml

        return dump_toml(mapping_document(self))


# -- the table -------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """Format a parameter value compactly for the table."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, torch.Tensor):
        if value.numel() <= 4:
            values = ", ".join(f"{v:g}" for v in value.detach().flatten().tolist())
            return f"tensor([{values}], shape={tuple(value.shape)})"
        return f"tensor(shape={tuple(value.shape)})"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value) if isinstance(value, str) else str(value)


def format_params(params: Mapping[str, Any]) -> str:
    """``k=v, ...``, leaving out empty lists (``zero_params=()``)."""
    shown = {k: v for k, v in params.items() if not (isinstance(v, (tuple, list)) and not v)}
    return ", ".join(f"{k}={format_value(v)}" for k, v in shown.items())


def format_mapping(mapping: LayerMapping) -> str:
    """Render the mapping as a header and a table of modules (leaves, and others with a rule)."""
    lines = []
    preset = f"preset '{mapping.preset.name}'" if mapping.preset is not None else "mapping"
    n_unmapped = len(mapping.unmapped)
    lines.append(
        f"{preset} on {mapping.model_type}: {len(mapping.rules)} module(s) with a rule, {n_unmapped} unmapped"
    )
    if mapping.params:
        lines.append(f"parameters: {format_params(mapping.params) or '(defaults)'}")
    if mapping.canonizers:
        lines.append("canonizers, applied in this order:")
        for choice in mapping.canonizers:
            lines.append(f"  {choice.name}: {choice.reason}")
            lines.extend(f"    {change}" for change in choice.changes)
    else:
        lines.append("canonizers: none")
    lines.extend(f"note: {note}" for note in mapping.notes)
    rows = [("module", "type", "rule", "parameters", "matched")]
    for entry in mapping.entries:
        if not entry.leaf and entry.rule is None:
            continue
        rule = entry.rule_name or ("UNMAPPED" if entry.unmapped else "-")
        params = format_params(entry.params) if entry.rule is not None else "(plain gradient)"
        rows.append((entry.name or "(model)", entry.type, rule, params, entry.matched or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for i, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in [*widths, len(row[4])]))
    if n_unmapped:
        lines.append(
            f"unmapped: {', '.join(mapping.unmapped)} hold parameters but got no rule, so their plain gradient "
            "is used; add a preset entry for them, or pass strict=True (--strict) to make this an error"
        )
    if mapping.coverage is not None:
        lines.extend(mapping.coverage.lines())
    return "\n".join(lines)


# -- the explicit preset ---------------------------------------------------------------------------
def _toml_data(value: Any, where: str) -> Any:
    from zplug.errors import SpecError

    if isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, (tuple, list)):
        return [_toml_data(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _toml_data(v, where) for k, v in value.items()}
    raise SpecError(f"{where}: cannot write {type(value).__name__} value {format_value(value)} to TOML")


def _init_params(obj: Any) -> dict[str, Any]:
    """The constructor arguments of an attrs instance that differ from their defaults."""
    if not attrs.has(type(obj)):
        return {}
    params = {}
    for field in attrs.fields(type(obj)):
        if not field.init:
            continue
        value = getattr(obj, field.name)
        default = field.default
        if isinstance(default, attrs.Factory) and not default.takes_self:  # type: ignore[arg-type]
            default = default.factory()
        try:
            if default is not attrs.NOTHING and bool(value == default):
                continue
        except Exception:  # e.g. tensors: keep the value  # noqa: BLE001, S110
            pass
        params[field.alias or field.name] = value
    return params


def mapping_document(mapping: LayerMapping) -> dict[str, Any]:
    """The explicit preset of a mapping as TOML data (see :meth:`LayerMapping.to_toml`)."""
    source = f" of preset '{mapping.preset.name}'" if mapping.preset is not None else ""
    doc: dict[str, Any] = {"schema": 1, "summary": f"explicit mapping{source} for {mapping.model_type}"}
    canonizers = []
    for choice in mapping.canonizers:
        params = _toml_data(_init_params(choice.canonizer), f"canonizer '{choice.name}'")
        canonizers.append({"name": choice.name, **params} if params else choice.name)
    doc["canonizers"] = canonizers
    groups: list[tuple[Rule, list[str]]] = []
    for entry in mapping.entries:
        rule = entry.rule
        if rule is None:
            continue
        for other, names in groups:
            if type(other) is type(rule) and other == rule:
                names.append(entry.name)
                break
        else:
            groups.append((rule, [entry.name]))
    doc["name_map"] = [
        {"names": names, "rule": {"name": rule.name, **_toml_data(rule.params(), f"module '{names[0]}'")}}
        for rule, names in groups
    ]
    return doc


__all__ = ("CanonizerChoice", "LayerMapping", "MappedModule", "format_mapping", "mapping_document")
