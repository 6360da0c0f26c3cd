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
from typing import TYPE_CHECKING, ClassVar

import attrs

from zplug.errors import CanonizerError
from zplug.parts import Part

if TYPE_CHECKING:
    import torch


@attrs.frozen(kw_only=True)
class Canonizer(Part):
    """Base class of canonizers (a part, :mod:`zplug.parts`)."""

    #: Names of canonizers whose work this one already does (e.g. a model-family canonizer that
    #: merges BatchNorm covers ``"merge_batchnorm"``); :func:`auto_canonizers` drops those.
    covers: ClassVar[tuple[str, ...]] = ()

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Rewrite ``model`` for the duration of the ``with`` block; yields the model."""
        raise NotImplementedError
        yield model  # pragma: no cover

    def describe(self, model: torch.nn.Module) -> list[str]:
        """Say, one line per change, what :meth:`applied` would change in ``model``."""
        return []


@attrs.frozen(kw_only=True)
class CompositeCanonizer(Canonizer):
    """Several canonizers applied in order and reverted in reverse order.

    Subclasses (model-family canonizers) override :meth:`parts`; the base class applies the
    ``canonizers`` field.
    """

    name: ClassVar[str] = "composite"
    summary: ClassVar[str] = "apply several canonizers in order, revert them in reverse order"
    canonizers: tuple[Canonizer, ...] = attrs.field(default=(), converter=tuple)

    def parts(self) -> tuple[Canonizer, ...]:
        """Return the canonizers this one is made of, in the order they are applied."""
        return self.canonizers

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Apply :meth:`parts` in order; revert them in reverse order, also on errors."""
        with applied_canonizers(model, self.parts()):
            yield model

    def describe(self, model: torch.nn.Module) -> list[str]:
        """Concatenate the descriptions of :meth:`parts`."""
        return [line for part in self.parts() for line in part.describe(model)]


@contextmanager
def applied_canonizers(model: torch.nn.Module, canonizers: Sequence[Canonizer]) -> Iterator[torch.nn.Module]:
    """Apply ``canonizers`` in order and undo them in reverse order, also on errors."""
    with ExitStack() as stack:
        for canonizer in canonizers:
            stack.enter_context(canonizer.applied(model))
        yield model


def auto_canonizers(model: torch.nn.Module, registry=None) -> list[tuple[str, str, str]]:
    """The canonizers ``canonizers = "auto"`` chooses for ``model``: ``[(name, reason, plugin), ...]``.

    Every plugin's ``zplug_suggest_canonizers`` is asked; third-party (model-family) suggestions
    come first, then the built-in generic canonizers. A suggestion that another suggested canonizer already covers
    (its class attribute :attr:`Canonizer.covers`) is dropped, so a ResNet gets its family plugin's
    ``resnet`` canonizer rather than that plus the generic ``merge_batchnorm`` and ``residual_sum``.

    Parameters
    ----------
    model : torch.nn.Module
        The model to canonize.
    registry : zplug.registry.PluginRegistry or None
        Where to look the canonizers up; the default registry if ``None``.
    """
    from zplug.registry import BUILTIN, registry_or_default

    registry = registry_or_default(registry)

    # Model-specific canonizers first: a generic one applied first (residual_sum installs a
    # traced forward that inlines submodules) would hide the forwards a family canonizer replaces.
    suggested = sorted(registry.suggest_canonizers(model), key=lambda item: item[2] == BUILTIN)
    covered: set[str] = set()
    for name, _, plugin in suggested:
        qualified = f"{plugin}:{name}"
        cls = registry.canonizers[qualified if qualified in registry.canonizers else name]
        covered.update(getattr(cls, "covers", ()))
    return [(n, r, p) for n, r, p in suggested if n not in covered]


__all__ = ("Canonizer", "CanonizerError", "CompositeCanonizer", "applied_canonizers", "auto_canonizers")
