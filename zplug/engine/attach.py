"""Attach rules to a model's modules for the duration of a ``with`` block.

Nothing about the model is modified except, temporarily, the ``forward`` attribute of
each module that gets a rule and the ``inplace`` flag of in-place activations (an in-place
activation would overwrite a tensor that a rule needs). Both are restored on exit, in
reverse order, also when an exception or ``KeyboardInterrupt`` interrupts the block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from zplug.engine.function import Binding, Observer
from zplug.engine.gradient_form import check_form
from zplug.errors import ModelMismatchError, RelevanceError, unknown_name_message

if TYPE_CHECKING:
    from zplug.rules.base import Rule

_MISSING = object()


class AttributePatch:
    """Set an attribute of an object and remember how to undo it exactly."""

    def __init__(self, obj: object, attribute: str, value: object) -> None:
        self.obj = obj
        self.attribute = attribute
        self.previous = obj.__dict__.get(attribute, _MISSING)
        obj.__dict__[attribute] = value

    def undo(self) -> None:
        """Restore the previous instance attribute (or remove ours, uncovering the class attribute)."""
        if self.previous is _MISSING:
            self.obj.__dict__.pop(self.attribute, None)
        else:
            self.obj.__dict__[self.attribute] = self.previous


@contextmanager
def attach_rules(
    model: torch.nn.Module,
    assignment: Mapping[str, Rule],
    *,
    observers: tuple[Observer, ...] = (),
    form: str = "relevance",
) -> Iterator[dict[str, Binding]]:
    """Attach ``assignment`` (module name -> rule instance) to ``model`` inside a ``with`` block.

    Parameters
    ----------
    model : torch.nn.Module
        The model; module names are those of ``model.named_modules()`` (``""`` is the model).
    assignment : Mapping[str, Rule]
        Which rule each module gets. Modules not named keep their plain gradient.
    observers : tuple of callables
        Called after each rule computed relevance, as ``observer(binding, call, grad_outputs, relevance)``.
    form : {"relevance", "gradient"}
        What the backward pass carries between layers (:mod:`zplug.engine.gradient_form`). In gradient
        form, rules whose gradient form is the module's own gradient are not attached, and the caller
        converts at the model's boundaries (:func:`~zplug.engine.gradient_form.model_boundaries`).

    Yields
    ------
    dict[str, Binding]
        The bindings by module name.

    Raises
    ------
    ModelMismatchError
        If a name does not exist in ``model``.
    RelevanceError
        In gradient form, if a rule has no gradient form, or observers are given.
    """
    gradient = check_form(form) == "gradient"
    named = list(model.named_modules(remove_duplicate=False))  # one walk serves every check below
    modules = dict(named)
    unknown = [name for name in assignment if name not in modules]
    if unknown:
        known = [name for name in modules if name]
        raise ModelMismatchError(f"model {type(model).__name__}: {unknown_name_message('module', unknown[0], known)}")
    _check_aliases(named, assignment)
    forms = _gradient_forms(modules, assignment, observers) if gradient else {}
    patches: list[AttributePatch] = []
    bindings: dict[str, Binding] = {}
    try:
        for module in {id(m): m for _, m in named}.values():
            if module.__dict__.get("inplace") is True:
                patches.append(AttributePatch(module, "inplace", False))
        patched: set[int] = set()
        for name, rule in assignment.items():
            module = modules[name]
            if id(module) in patched:  # an alias of a module already bound (same rule, checked above)
                continue
            patched.add(id(module))
            if forms.get(name) == "plain":  # the module's own gradient is the rule's gradient form
                continue
            binding = Binding(module, name, rule, module.forward, gradient=gradient)
            binding.observers.extend(observers)
            patches.append(AttributePatch(module, "forward", binding))
            bindings[name] = binding
        yield bindings
    finally:
        for binding in bindings.values():
            binding.active = False  # graphs that outlive the block give plain gradients (as after Zennit's remove)
        for patch in reversed(patches):
            patch.undo()


def _gradient_forms(modules: dict, assignment: Mapping[str, Rule], observers: tuple) -> dict[str, str]:
    """Each rule's gradient form on its module; a RelevanceError where a rule has none."""
    if observers:
        raise RelevanceError(
            "gradient form: observers (the ledger) see relevance, which gradient form does not compute between "
            "layers; apply the mapping in relevance form"
        )
    forms = {}
    for name, rule in assignment.items():
        forms[name] = rule.gradient_form(modules[name])
        if forms[name] not in ("plain", "rule"):
            raise RelevanceError(
                f"gradient form: rule '{rule.name}' on layer '{name}' ({type(modules[name]).__name__}) has no gradient "
                "form; apply the mapping in relevance form"
            )
    return forms


def _check_aliases(named: list[tuple[str, torch.nn.Module]], assignment: Mapping[str, Rule]) -> None:
    """A module registered under two names must not get two different rules."""
    seen: dict[int, tuple[str, Rule]] = {}
    for name, module in named:
        if name not in assignment:
            continue
        other = seen.get(id(module))
        if other is not None and other[1] != assignment[name]:
            raise ModelMismatchError(
                f"modules '{other[0]}' and '{name}' are the same object but were given different rules "
                f"({other[1].name} and {assignment[name].name}); give both the same rule"
            )
        seen[id(module)] = (name, assignment[name])


__all__ = ("AttributePatch", "attach_rules")
