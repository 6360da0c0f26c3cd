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
from zplug.errors import ModelMismatchError, unknown_name_message

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

    Yields
    ------
    dict[str, Binding]
        The bindings by module name.

    Raises
    ------
    ModelMismatchError
        If a name does not exist in ``model``.
    """
    named = list(model.named_modules(remove_duplicate=False))  # one walk serves every check below
    modules = dict(named)
    unknown = [name for name in assignment if name not in modules]
    if unknown:
        known = [name for name in modules if name]
        raise ModelMismatchError(f"model {type(model).__name__}: {unknown_name_message('module', unknown[0], known)}")
    _check_aliases(named, assignment)
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
            binding = Binding(module, name, rule, module.forward)
            binding.observers.extend(observers)
            patches.append(AttributePatch(module, "forward", binding))
            bindings[name] = binding
        yield bindings
    finally:
        for binding in bindings.values():
            binding.active = False  # graphs that outlive the block give plain gradients (as after Zennit's remove)
        for patch in reversed(patches):
            patch.undo()


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
