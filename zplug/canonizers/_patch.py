"""Exactly reversible changes to modules: instance attributes and registered children."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from zplug.engine.attach import AttributePatch

_MISSING = object()


class ChildPatch:
    """Register ``child`` as ``parent._modules[name]`` and remember how to undo it exactly.

    A replaced child comes back in its old position; a new one is removed again, so the
    order of ``named_modules()`` and the ``state_dict`` keys are as before.
    """

    def __init__(self, parent: torch.nn.Module, name: str, child: torch.nn.Module) -> None:
        self.parent = parent
        self.name = name
        self.previous = parent._modules.get(name, _MISSING)
        parent._modules[name] = child

    def undo(self) -> None:
        """Restore the previous child, or remove ours."""
        if self.previous is _MISSING:
            self.parent._modules.pop(self.name, None)
        else:
            self.parent._modules[self.name] = self.previous


class PatchStack:
    """A list of patches undone in reverse order."""

    def __init__(self) -> None:
        self.patches: list[AttributePatch | ChildPatch] = []

    def attribute(self, obj: object, attribute: str, value: object) -> None:
        """Set an instance attribute (``obj.__dict__[attribute]``) until :meth:`undo`."""
        from zplug.engine.attach import AttributePatch  # the engine (and torch) load when a model is patched

        self.patches.append(AttributePatch(obj, attribute, value))

    def child(self, parent: torch.nn.Module, name: str, child: torch.nn.Module) -> None:
        """Register a child module until :meth:`undo`."""
        self.patches.append(ChildPatch(parent, name, child))

    def undo(self) -> None:
        """Undo every patch, last first."""
        while self.patches:
            self.patches.pop().undo()


@contextmanager
def patching() -> Iterator[PatchStack]:
    """Yield a :class:`PatchStack` whose patches are undone on exit, also on exceptions."""
    stack = PatchStack()
    try:
        yield stack
    finally:
        stack.undo()


def free_name(module: torch.nn.Module, base: str) -> str:
    """Return ``base`` (or ``base_1``, ``base_2``, ...) if no attribute of ``module`` has that name."""
    name, index = base, 0
    while hasattr(module, name) or name in module._modules:
        index += 1
        name = f"{base}_{index}"
    return name


__all__ = ("ChildPatch", "PatchStack", "free_name", "patching")
