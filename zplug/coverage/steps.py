"""The operations of one forward pass as a small graph, shared by the torch.fx and autograd analyses."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from zplug.coverage.treatments import (
    RECTIFIER_MODULES,
    RECTIFIERS,
    SHIFT,
    UNCOVERED,
    Treatment,
    TreatmentTable,
    class_paths,
)


@attrs.define(eq=False, kw_only=True)
class Step:
    """One operation on the differentiable path from the input to the output.

    Attributes
    ----------
    where : str
        The module in whose forward it happens (the module itself for a module call).
    op : str
        The operation's name, or the module's class name.
    operands : int
        How many of its inputs are on the differentiable path (the others are constants).
    target : object
        The torch.fx call target (matched against declared functions), or ``None``.
    module : torch.nn.Module or None
        The called module, for a module call.
    name : str or None
        The called module's name, for a module call.
    consumers : list of Step
        The operations on the path that use its result.
    output : bool
        Whether its result is (part of) the model's output.
    """

    where: str
    op: str
    operands: int = 1
    target: Any = None
    module: Any = None
    name: str | None = None
    consumers: list[Step] = attrs.field(factory=list)
    output: bool = False


def treatment(step: Step, rules: Mapping[str, Any], table: TreatmentTable) -> Treatment | None:
    """The treatment of a step without a rule (``None`` for a module call with a rule)."""
    if step.module is not None:
        if step.name in rules:
            return None
        return table.module(step.module) or UNCOVERED
    return table.classify(step.op, step.operands, step.target)


def judge(step: Step, rules: Mapping[str, Any], table: TreatmentTable) -> tuple[str, str]:
    """``(kind, detail)`` of a step: ``("rule", rule name)``, ``("linear", ...)`` or ``("not covered", ...)``."""
    found = treatment(step, rules, table)
    if found is None:
        return "rule", rules[step.name].name
    return ("linear" if found.covered else "not covered"), found.summary


def lossy_modules(
    steps: list[Step],
    rules: Mapping[str, Any],
    table: TreatmentTable,
    needs_rectified: Callable[[Any], bool],
) -> Iterator[Step]:
    """The module calls whose rule needs a rectified output and does not get one (each module once)."""
    from zplug.coverage import passes_relevance

    memo: dict[int, bool] = {}

    def transparent(step: Step) -> bool:
        """Whether relevance passes ``step`` as it is, so what follows it decides."""
        found = treatment(step, rules, table)
        if found is None:
            return passes_relevance(rules[step.name])
        return found.covered and found is not SHIFT

    def rectifies(step: Step) -> bool:
        if step.module is not None:
            return any(path in RECTIFIER_MODULES for path in class_paths(step.module))
        return step.op in RECTIFIERS

    def rectified(step: Step) -> bool:
        if id(step) in memo:
            return memo[id(step)]
        memo[id(step)] = False  # a cycle cannot occur in a forward graph; this only guards the recursion
        result = not step.output and bool(step.consumers) and all(
            rectifies(c) or (transparent(c) and rectified(c)) for c in step.consumers
        )
        memo[id(step)] = result
        return result

    seen: set[str] = set()
    for step in steps:
        if step.module is None or step.name not in rules or step.name in seen:
            continue
        if needs_rectified(rules[step.name]) and not rectified(step):
            seen.add(step.name)
            yield step


__all__ = ("Step", "judge", "lossy_modules", "treatment")
