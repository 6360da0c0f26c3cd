"""The canonizer contract.

A canonizer is a frozen attrs class (its fields are its parameters, declared like rule
parameters) with a ``name`` and a context manager :meth:`Canonizer.applied`. Inside the
``with`` block the model computes the same function in a form rules can treat (BatchNorm
merged into the preceding layer, residual additions routed through a ``Sum`` module,
...); on exit every change is undone exactly. Canonizers must not write to parameters or
buffers: they swap ``forward`` attributes and present merged parameters to rules through
:func:`zplug.engine.ops.override_params`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import ClassVar

import attrs
import torch


@attrs.frozen(kw_only=True)
class Canonizer:
    """Base class of canonizers."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Rewrite ``model`` for the duration of the ``with`` block; yields the model."""
        raise NotImplementedError
        yield model  # pragma: no cover

    def describe(self, model: torch.nn.Module) -> list[str]:
        """Say, one line per change, what :meth:`applied` would change in ``model``."""
        return []


@contextmanager
def applied_canonizers(model: torch.nn.Module, canonizers: Sequence[Canonizer]) -> Iterator[torch.nn.Module]:
    """Apply ``canonizers`` in order and undo them in reverse order, also on errors."""
    with ExitStack() as stack:
        for canonizer in canonizers:
            stack.enter_context(canonizer.applied(model))
        yield model


__all__ = ("Canonizer", "applied_canonizers")
