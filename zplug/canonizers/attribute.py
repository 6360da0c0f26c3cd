"""Attribute canonizers: temporarily replace attributes (usually ``forward``) of modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import attrs

from zplug._lazy import lazy_module
from zplug.canonizers._patch import PatchStack, patching
from zplug.canonizers.base import Canonizer, CanonizerError

torch = lazy_module("torch")  # imported when a model is canonized, not to declare the canonizer
AttributeMap = Callable[[str, "torch.nn.Module"], "Mapping[str, Any] | None"]


def apply_attributes(stack: PatchStack, name: str, module: torch.nn.Module, attributes: Mapping[str, Any]) -> None:
    """Set ``attributes`` on ``module`` through ``stack`` (undone by the stack, in reverse order).

    A :class:`torch.nn.Module` value is registered as a child (so rules can be attached to
    it and it shows in ``named_modules()``); any other value becomes an instance attribute.
    Pre-existing instance attributes and children come back exactly on undo.

    Raises
    ------
    CanonizerError
        If an attribute would shadow a parameter or buffer, or replace a child by a non-module.
    """
    for key, value in attributes.items():
        where = f"module '{name}' ({type(module).__name__})" if name else f"the model ({type(module).__name__})"
        if key in module._parameters or key in module._buffers:
            raise CanonizerError(f"cannot replace attribute '{key}' of {where}: it is a parameter or buffer")
        if isinstance(value, torch.nn.Module):
            if key in module.__dict__:
                raise CanonizerError(f"cannot register module '{key}' on {where}: an attribute of that name exists")
            stack.child(module, key, value)
        else:
            if key in module._modules:
                raise CanonizerError(f"cannot replace submodule '{key}' of {where} by a {type(value).__name__}")
            stack.attribute(module, key, value)


@attrs.frozen(kw_only=True)
class AttributeCanonizer(Canonizer):
    """Replace attributes of every module for which ``attributes(name, module)`` returns a mapping.

    Unlike Zennit's ``AttributeCanonizer`` (which deletes the attributes on removal), a
    pre-existing *instance* attribute is restored, not lost.

    Parameters
    ----------
    attributes : Callable[[str, Module], Mapping[str, Any] | None]
        Called for each ``(name, module)`` of ``model.named_modules()``; returns the attributes
        to set (values that are modules become registered children), or ``None``.
    """

    name: ClassVar[str] = "attributes"
    summary: ClassVar[str] = "temporarily replace attributes (e.g. forward) of selected modules"
    attributes: AttributeMap = attrs.field()

    def _plan(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, Mapping[str, Any]]]:
        plan = []
        for name, module in list(model.named_modules()):
            attributes = self.attributes(name, module)
            if attributes:
                plan.append((name, module, attributes))
        return plan

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Set the attributes; restore the previous ones on exit (also on errors)."""
        plan = self._plan(model)
        with patching() as stack:
            for name, module, attributes in plan:
                apply_attributes(stack, name, module, attributes)
            yield model

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per module: which attributes are replaced."""
        return [
            f"{name or '<model>'} ({type(module).__name__}): replace {', '.join(sorted(attributes))}"
            for name, module, attributes in self._plan(model)
        ]


def bound(function: Callable[..., Any], module: torch.nn.Module) -> Callable[..., Any]:
    """Bind ``function(self, ...)`` to ``module``, for use as a replacement ``forward``."""
    return function.__get__(module, type(module))


__all__ = ("AttributeCanonizer", "apply_attributes", "bound")
