"""The identity marker: how a canonizer tells the engine that a forward it installed is the identity.

A canonizer that folds a module into its neighbour (``merge_batchnorm`` folds a BatchNorm into the
layer before it) leaves that module computing nothing: its patched ``forward`` returns its input.
Marked with :func:`mark_identity`, such a forward lets the engine drop a pass-through rule on the
module entirely: no autograd node is made, because the identity's own gradient already hands the
relevance through unchanged (see :class:`zplug.engine.function.Binding`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute :func:`mark_identity` sets on a forward (to True); the engine reads nothing else.
IDENTITY_ATTRIBUTE = "__zplug_identity__"


def mark_identity(forward: F) -> F:
    """Declare that ``forward`` computes the identity of its one tensor argument; return ``forward``.

    Use it on a forward that a canonizer installs on a module (``forward(x)`` returns ``x``, or a
    copy of it). The engine then lets a rule that passes relevance through
    (:attr:`zplug.rules.Rule.passes_relevance`) cost nothing on that module. Marking a forward that
    is not the identity makes the relevance wrong: the forward's gradient replaces the rule.

    Raises
    ------
    TypeError
        If ``forward`` cannot carry an attribute (a bound method or a builtin); wrap it in a function.
    """
    try:
        setattr(forward, IDENTITY_ATTRIBUTE, True)
    except (AttributeError, TypeError):
        raise TypeError(
            f"mark_identity: cannot mark {forward!r} (it takes no attributes); wrap it in a function: "
            "mark_identity(lambda x: x)"
        ) from None
    return forward


def is_identity(forward: Callable[..., Any]) -> bool:
    """Return True if ``forward`` was marked with :func:`mark_identity`."""
    return getattr(forward, IDENTITY_ATTRIBUTE, False) is True


__all__ = ("IDENTITY_ATTRIBUTE", "is_identity", "mark_identity")
