"""Coverage: every operation between a model's input and output, and whether LRP covers it.

A rule replaces the gradient of one module call. Everything else in the model (functional
operations such as ``x * gate``, ``torch.cat``, ``softmax``; modules without a rule) keeps its plain
gradient, which is right for LRP only where it copies input elements (see
:mod:`zplug.coverage.treatments`). The coverage analysis lists each operation on the
differentiable path from the input to the output with its treatment:

* ``rule``: a module call whose rule covers it;
* ``linear``: the plain gradient is exact (reshapes, concatenation, indexing, max-pooling, ...);
* ``not covered``: no rule, and the plain gradient is not LRP (``mul`` of two tensors, ``add`` of two
  tensors outside a ``Sum`` module, a scaling, softmax, a module without a rule, ...).

It also lists modules that hold a rule but are never called (their parent uses their weights
directly, as ``nn.MultiheadAttention`` does with ``out_proj``), and, as a note, rules that lose
relevance on a layer whose output is not rectified.

:func:`analyse` runs in :func:`zplug.resolve` with ``torch.fx`` (no input needed); where fx
cannot trace the model, the mapping's first application analyses the autograd graph of the first
call instead (:class:`~zplug.coverage.firstcall.FirstCall`). Results are cached per model
structure, canonizers, rules and (for the autograd graph) input shapes. The mapping shows the
result (``str(mapping)``) and :func:`report` turns it into warnings
(:class:`~zplug.errors.CoverageWarning`), or a :class:`~zplug.errors.CoverageError` in strict mode.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from zplug.errors import CoverageError, CoverageWarning

if TYPE_CHECKING:
    import torch

    from zplug.coverage.treatments import TreatmentTable
    from zplug.registry import PluginRegistry

#: The kinds of treatment an operation gets.
RULE, LINEAR, NOT_COVERED = "rule", "linear", "not covered"


@attrs.frozen(kw_only=True)
class Operation:
    """One operation on the path from the input to the output, with its treatment.

    Attributes
    ----------
    where : str
        The module in whose ``forward`` the operation happens (its own name for a module call;
        ``""`` for the model's own ``forward``).
    op : str
        The operation (``"mul"``, ``"softmax"``), or the class name of a called module (``"Conv2d"``).
    kind : str
        ``"rule"``, ``"linear"`` or ``"not covered"``.
    detail : str
        The rule's name for ``"rule"``; otherwise how the operation is treated (``"no rule"``, ...).
    calls : int
        How many times the operation occurs on the path.
    module : bool
        Whether it is a module call.
    """

    where: str
    op: str
    kind: str
    detail: str
    calls: int = 1
    module: bool = False

    @property
    def covered(self) -> bool:
        """Whether a rule covers the operation or its plain gradient is exact."""
        return self.kind != NOT_COVERED

    def describe(self) -> str:
        """``"features.3.se: mul (no rule)"``: where, what, and how it is treated."""
        return f"{self.where or '(model)'}: {self.op} ({self.detail})"


@attrs.frozen(kw_only=True)
class RuledModule:
    """A module with a rule, as the coverage section names it (unused rules, lossy rules)."""

    name: str
    type: str
    rule: str

    def describe(self) -> str:
        """``"head.out_proj (Linear, epsilon)"``."""
        return f"{self.name or '(model)'} ({self.type}, {self.rule})"


@attrs.frozen(kw_only=True)
class Coverage:
    """The coverage of one mapping on one model (see the module docstring).

    Attributes
    ----------
    method : str
        How the operations were found: ``"torch.fx"``, ``"autograd graph of the first call"``, or
        ``""`` when they were not (yet) analysed.
    operations : tuple of Operation
        Every operation on the differentiable path from the input to the output, in forward order
        (equal ones in the same module merged, with their count).
    idle : tuple of RuledModule
        Modules that hold a rule but are never called.
    lossy : tuple of RuledModule
        Modules whose rule loses relevance because their output is not rectified (a note).
    pending : str or None
        Why the operations are not known yet: torch.fx could not trace the model, so the first call
        under the mapping is analysed (:meth:`LayerMapping.analyse_coverage` does it on demand).
    gradient_method : bool
        The mapping's rules modify the gradient (guided backprop, ...): operations without a rule
        keep their plain gradient by design, and nothing is checked.
    """

    method: str = ""
    operations: tuple[Operation, ...] = ()
    idle: tuple[RuledModule, ...] = ()
    lossy: tuple[RuledModule, ...] = ()
    pending: str | None = None
    gradient_method: bool = False

    @property
    def uncovered(self) -> tuple[Operation, ...]:
        """The operations that are not covered."""
        return tuple(op for op in self.operations if not op.covered)

    @property
    def analysed(self) -> bool:
        """Whether the operations are known (or need no checking)."""
        return self.pending is None

    def lines(self) -> list[str]:
        """The coverage section of the mapping's table, one string per line."""
        if self.gradient_method:
            return [
                "coverage: not checked: the rules modify the gradient (not LRP), so operations without a rule "
                "keep their plain gradient by design"
            ]
        if self.pending is not None:
            return [
                f"coverage: not analysed yet: {self.pending}; the autograd graph of the first call under the "
                "mapping is analysed instead (or call mapping.analyse_coverage(model, inputs))"
            ]
        ops = self.operations
        total = sum(op.calls for op in ops)
        missing = sum(op.calls for op in ops if not op.covered)
        out = [f"coverage ({self.method}): {total} operation(s) from the input to the output, {missing} not covered"]
        if missing:
            out.append("  not covered (the plain gradient is used, which is not LRP):")
            out.extend(f"    {op.describe()}{_times(op.calls)}" for op in ops if not op.covered)
        rules = sum(op.calls for op in ops if op.kind == RULE)
        out.append(f"  rules: {rules} module call(s)")
        linear = _grouped(op for op in ops if op.kind == LINEAR)
        if linear:
            out.append(f"  linear (the plain gradient is exact): {linear}")
        if self.idle:
            out.append("  holds a rule but is never called (its parent computes without calling it):")
            out.extend(f"    {m.describe()}" for m in self.idle)
        if self.lossy:
            out.append("  lossy (a note): the rule loses relevance where the layer's output is not rectified:")
            out.extend(f"    {m.describe()}" for m in self.lossy)
        return out


def _times(calls: int) -> str:
    return f" x{calls}" if calls > 1 else ""


def _grouped(ops: Iterable[Operation]) -> str:
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.op] = counts.get(op.op, 0) + op.calls
    return ", ".join(f"{name} x{count}" for name, count in counts.items())


# -- analysis ------------------------------------------------------------------------------------
def treatment_table(registry: PluginRegistry | None = None) -> TreatmentTable:
    """The declared treatments of the registry's plugins (see :meth:`PluginRegistry.op_treatments`)."""
    if registry is None:
        from zplug.registry import default_registry

        registry = default_registry()
    return registry.op_treatments


#: ``{model: {key: Coverage}}``: results per model structure, canonizers, rules and input shapes.
_cache: weakref.WeakKeyDictionary[Any, dict[tuple, Coverage]] = weakref.WeakKeyDictionary()
_CACHE_SIZE = 16


def cached(model: Any, key: tuple | None) -> Coverage | None:
    """The cached coverage of ``model`` under ``key``, or ``None``."""
    if key is None:
        return None
    return _cache.get(model, {}).get(key)


def remember(model: Any, key: tuple | None, coverage: Coverage) -> Coverage:
    """Cache ``coverage`` for ``model`` under ``key`` (a few keys per model) and return it."""
    if key is not None:
        entries = _cache.setdefault(model, {})
        if len(entries) >= _CACHE_SIZE:
            entries.pop(next(iter(entries)))
        entries[key] = coverage
    return coverage


def structure_key(model: torch.nn.Module, canonizers: Sequence[Any]) -> tuple:
    """The part of a cache key that stands for ``model`` (not canonized) under ``canonizers``.

    The module objects (and classes), their instance ``forward`` attributes and training flags stand
    for the structure; canonizers count by their ``repr`` (name and parameters).
    """
    structure = tuple(
        (name, type(m), id(m), id(m.__dict__.get("forward")), m.training) for name, m in model.named_modules()
    )
    return structure, tuple(repr(c) for c in canonizers)


def rules_key(rules: Mapping[str, Any]) -> tuple:
    """The part of a cache key that stands for the rules: their modules, classes and what the analysis asks."""
    return tuple(
        (name, type(rule), needs_rectified_output(rule), passes_relevance(rule), getattr(rule, "recomputes", False))
        for name, rule in rules.items()
    )


def analyse(
    model: torch.nn.Module,
    rules: Mapping[str, Any],
    *,
    registry: PluginRegistry | None = None,
    key: tuple | None = None,
) -> Coverage:
    """Analyse the (canonized) ``model`` with torch.fx; if it cannot be traced, say why (``pending``).

    Parameters
    ----------
    model : torch.nn.Module
        The model, with the mapping's canonizers applied.
    rules : Mapping[str, Rule]
        ``{module name: rule}``.
    registry : PluginRegistry or None
        Where the declared treatments come from.
    key : tuple or None
        A cache key (:func:`structure_key`, :func:`rules_key`); ``None`` does not cache.
    """
    found = cached(model, key)
    if found is not None:
        return found
    from zplug.coverage.fx import FxTraceError, trace_steps

    table = treatment_table(registry)
    # A module whose rule recomputes it is covered by the rules inside it: trace into it.
    rules = {name: rule for name, rule in rules.items() if not getattr(rule, "recomputes", False)}
    try:
        steps, called = trace_steps(model, rules, table)
    except FxTraceError as exc:
        return remember(model, key, Coverage(pending=str(exc)))
    return remember(model, key, summarise("torch.fx", model, steps, called, rules, table))


def summarise(
    method: str,
    model: torch.nn.Module,
    steps: Sequence[Any],
    called: set[str],
    rules: Mapping[str, Any],
    table: TreatmentTable,
) -> Coverage:
    """Turn the operations of a graph (:class:`~zplug.coverage.steps.Step`) into a :class:`Coverage`."""
    from zplug.coverage.steps import judge, lossy_modules

    modules = dict(model.named_modules())
    merged: dict[tuple[str, str, str, str, bool], int] = {}
    for step in steps:
        kind, detail = judge(step, rules, table)
        key = (step.where, step.op, kind, detail, step.module is not None)
        merged[key] = merged.get(key, 0) + 1
    operations = tuple(
        Operation(where=w, op=o, kind=k, detail=d, calls=n, module=m) for (w, o, k, d, m), n in merged.items()
    )
    # An idle pass-through rule changes nothing: whatever the parent computes instead is a step of its own,
    # judged above (and a lookup table such as a language model's embedding is idle by design).
    # Modules inside a called module whose rule computes it as a whole (not ``recompute``) are not idle: that
    # rule stands for them, whether the module's forward calls them or computes without them (a fused kernel).
    wholes = tuple(
        f"{name}." for name, rule in rules.items() if name in called and not getattr(rule, "recomputes", False)
    )
    idle = tuple(
        RuledModule(name=name, type=type(modules[name]).__name__, rule=rule.name)
        for name, rule in rules.items()
        if name in modules and name not in called and not getattr(rule, "passes_relevance", False)
        and not (name.startswith(wholes) if name else False)
    )
    lossy = tuple(
        RuledModule(name=step.name, type=type(step.module).__name__, rule=rules[step.name].name)
        for step in lossy_modules(steps, rules, table, needs_rectified_output)
    )
    return Coverage(method=method, operations=operations, idle=idle, lossy=lossy)


def needs_rectified_output(rule: Any) -> bool:
    """Whether ``rule`` loses relevance on a layer whose output is not rectified (``Rule.needs_rectified_output``)."""
    method = getattr(rule, "needs_rectified_output", None)
    return bool(method()) if callable(method) else False


def passes_relevance(rule: Any) -> bool:
    """Whether ``rule`` declares that it hands the relevance through unchanged (``Rule.passes_relevance``)."""
    return bool(getattr(rule, "passes_relevance", False))


def is_gradient_method(rule_classes: Iterable[type]) -> bool:
    """Whether every one of ``rule_classes`` modifies a gradient rather than propagating relevance."""
    classes = list(rule_classes)
    return bool(classes) and all(getattr(cls, "gradient_method", False) for cls in classes)


# -- warnings and errors ---------------------------------------------------------------------------
def problems(coverage: Coverage) -> list[str]:
    """One line per uncovered operation, as warnings and errors name them."""
    return [op.describe() + _times(op.calls) for op in coverage.uncovered]


def report(
    coverage: Coverage,
    *,
    preset: str,
    model_type: str,
    notes: Sequence[str] = (),
    strict: bool = False,
) -> None:
    """Warn about each uncovered operation and each note, or raise in strict mode.

    Raises
    ------
    CoverageError
        With ``strict=True``, if an operation is not covered.
    """
    found = problems(coverage)
    if strict and found:
        raise CoverageError(strict_message(found, preset=preset, model_type=model_type))
    level = _user_stacklevel()
    for note in notes:
        warnings.warn(note, CoverageWarning, stacklevel=level)
    for line in found:
        warnings.warn(f"{line}: not covered by {preset}, its plain gradient is used", CoverageWarning, stacklevel=level)


def report_gradient_form(coverage: Coverage) -> None:
    """Warn about each addition of a constant, which gradient form treats like a bias (see ``zplug.engine``)."""
    from zplug.coverage.treatments import SHIFT

    level = _user_stacklevel()
    for op in coverage.operations:
        if op.kind == LINEAR and op.detail == SHIFT.summary:
            warnings.warn(
                f"{op.where or '(model)'}: {op.op}{_times(op.calls)} adds a constant: in gradient form the constant "
                "keeps its share of the relevance, as a bias does (relevance form gives all of it to the tensor)",
                CoverageWarning,
                stacklevel=level,
            )


def strict_message(found: Sequence[str], *, preset: str, model_type: str) -> str:
    """The one-line :class:`CoverageError` message for the uncovered operations ``found``."""
    return (
        f"{preset} does not cover {len(found)} operation(s) of {model_type}: {'; '.join(found)}; give them rules "
        "(a preset entry for the module, or a canonizer that routes the operation through a module) or run without "
        "strict to get warnings instead"
    )


def _library_dirs() -> tuple[str, ...]:
    import contextlib

    import torch

    return tuple(os.path.dirname(os.path.abspath(m.__file__)) for m in (sys.modules["zplug"], torch, contextlib))


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside zplug, torch and contextlib."""
    libraries = _library_dirs()
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(libraries):
            return level
        frame = frame.f_back
        level += 1
    return 1


def watch(mapping: Any, model: torch.nn.Module, on_result: Callable[[Coverage], None]) -> Any:
    """Analyse the first call of ``model`` (with the mapping applied) when torch.fx could not trace it.

    Returns the :class:`~zplug.coverage.firstcall.FirstCall` recorder (call ``remove()`` when done).
    """
    from zplug.coverage.firstcall import FirstCall

    return FirstCall(model, mapping.rules, treatment_table(), on_result, key=mapping.coverage_key)


__all__ = (
    "LINEAR",
    "NOT_COVERED",
    "RULE",
    "Coverage",
    "CoverageError",
    "CoverageWarning",
    "Operation",
    "RuledModule",
    "analyse",
    "is_gradient_method",
    "needs_rectified_output",
    "passes_relevance",
    "problems",
    "report",
    "report_gradient_form",
    "rules_key",
    "strict_message",
    "structure_key",
    "summarise",
)
