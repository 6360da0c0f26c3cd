"""``zplug.explain``: one call from a model and inputs to output, relevance and ledger."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import attrs
import torch

from zplug.attributors.base import Attributor, Progress, as_mapping, make_attributor
from zplug.errors import SpecError


@attrs.frozen(kw_only=True)
class Explanation:
    """What :func:`explain` returns.

    Attributes
    ----------
    output : torch.Tensor
        The explained model output for the clean inputs (detached).
    relevance : torch.Tensor or tuple of torch.Tensor
        The relevance, shaped like the inputs (a tensor for a tensor, a tuple for a tuple).
    mapping : LayerMapping, RuleAssignment or None
        The rules that were applied (``None``: plain gradients).
    ledger : zplug.ledger.Ledger or None
        The conservation ledger, if it was requested.
    attributor : Attributor
        The attributor with its parameters.
    """

    output: torch.Tensor
    relevance: torch.Tensor | tuple[torch.Tensor, ...]
    mapping: Any = None
    ledger: Any = None
    attributor: Attributor


def explain(
    model: torch.nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: Any = None,
    *,
    preset: Any = None,
    attributor: str | Attributor = "gradient",
    mapping: Any = None,
    output_index: int | None = None,
    ledger: bool = False,
    progress: Progress | None = None,
    strict: bool = False,
    canonizers: Any = None,
    **params: Any,
) -> Explanation:
    """Explain ``model``'s output for ``inputs``: the output, the relevance and optionally the ledger.

    Parameters
    ----------
    model : torch.nn.Module
        The model, called as ``model(*inputs)``; put it in ``eval()`` mode yourself. It is
        restored exactly on return (rules removed, canonizers reverted).
    inputs : tensor or tuple of tensors
        Floating-point inputs sharing the batch dimension.
    target : None, int, sequence of int, tensor or callable
        ``None``: each sample's predicted class (largest output); an int: one class for all;
        a list or integer tensor: one class per sample; a floating-point tensor of the
        output's shape: the output relevance itself; a callable ``f(output) -> output
        relevance`` (Zennit's ``attr_output``). A class target starts from one-hot, so LRP
        relevance sums to about 1 per sample; pass ``lambda out: out * onehot`` to start
        from the logit instead.
    preset : str, Path, Preset or None
        Resolved with :func:`zplug.resolver.resolve` into the mapping (LRP).
    attributor : str or Attributor
        ``"gradient"`` (LRP with a preset), ``"smoothgrad"``, ``"integrated_gradients"``,
        ``"occlusion"``, a plugin's attributor name, or an instance.
    mapping : LayerMapping, ``{module name: rule}`` dict, or None
        Rules to use instead of a preset (not both).
    output_index : int or None
        For models returning a tuple or list: which output to explain.
    ledger : bool
        Record the conservation ledger (``gradient`` attributor only). Nothing is attached
        to the model when it is False.
    progress : callable or None
        ``progress(done, total)`` after each chunk of SmoothGrad, IG and occlusion.
    strict : bool
        With a preset: raise :class:`~zplug.errors.CoverageError` (and ModelMismatchError for
        unmapped modules) instead of warning about operations no rule covers.
    canonizers : sequence, "auto" or None
        With a preset: overrides its canonizers, as in :func:`zplug.resolve` (``[]`` for none).
    **params
        Split by name: a name that is a field of the attributor (``n_iter``, ``noise_level``,
        ``baseline``, ``method``, ``window``, ``stride``, ``fill``, ``chunk_size``) goes to the
        attributor; every other name goes to the preset (``epsilon``, ``gamma``, ``low``,
        ``high``, ...). A name both accept, or neither, is an error.

    Returns
    -------
    Explanation

    Warns
    -----
    CoverageWarning
        For each operation on the path from the input to the output that no rule covers (once
        per mapping; see :mod:`zplug.coverage` and the coverage section of ``str(result.mapping)``).

    Raises
    ------
    SpecError
        For unknown, ambiguous or invalid parameters and targets.
    UnknownNameError
        For an unknown preset or attributor name.
    CoverageError
        With ``strict=True``, for operations no rule covers.
    """
    if preset is not None and mapping is not None:
        raise SpecError("give either preset= or mapping=, not both")
    if preset is None and canonizers is not None:
        raise SpecError("canonizers= goes with preset= (a mapping= brings its own canonizers)")
    attributor_params, preset_params = _split_params(attributor, preset, params)
    if isinstance(attributor, str):
        from zplug.registry import default_registry

        attributor = make_attributor(default_registry().attributors[attributor], attributor_params)
    elif not isinstance(attributor, Attributor):
        raise SpecError(f"attributor must be a name or an Attributor instance (got {type(attributor).__name__})")
    if preset is not None:
        from zplug.resolver import resolve

        mapping = resolve(model, preset, strict=strict, canonizers=canonizers, **preset_params)
    mapping = as_mapping(mapping)
    book = None
    if ledger:
        if attributor.name != "gradient":
            raise SpecError(
                f"the ledger accounts for one backward pass: use attributor 'gradient' (got '{attributor.name}')"
            )
        from zplug.ledger import Ledger

        book = Ledger()
    session = attributor.session(
        model, mapping, output_index=output_index, observers=() if book is None else (book.observe,)
    )
    watching = nullcontext() if book is None else book.watching(model)
    with session, watching:
        output, relevance = session(
            inputs, target, progress=progress, before_backward=None if book is None else book.trace
        )
    if book is not None:
        book.finish((relevance,) if isinstance(relevance, torch.Tensor) else relevance)
    return Explanation(output=output, relevance=relevance, mapping=mapping, ledger=book, attributor=attributor)


def _split_params(attributor: Any, preset: Any, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send each parameter to the attributor or the preset (see :func:`explain`)."""
    if not params:
        return {}, {}
    if isinstance(attributor, str):
        from zplug.registry import default_registry

        cls = default_registry().attributors[attributor]
        attributor_names = [f.name for f in attrs.fields(cls)]
        attributor_label = f"attributor '{attributor}'"
    else:
        attributor_names = []
        attributor_label = "an attributor instance"
    preset_names: list[str] = []
    if preset is not None:
        from zplug.presets import load_preset
        from zplug.spec import Preset

        loaded = preset if isinstance(preset, Preset) else load_preset(preset)
        preset_names = list(loaded.params)
    to_attributor, to_preset = {}, {}
    for key, value in params.items():
        mine, theirs = key in attributor_names, key in preset_names
        if mine and theirs:
            raise SpecError(
                f"parameter '{key}' is ambiguous: both {attributor_label} and the preset accept it; set it on "
                f"the attributor instance (zplug.attributors.attributor(...)) and pass the preset's value to "
                f"zplug.resolve, then call explain with attributor= and mapping="
            )
        if mine:
            to_attributor[key] = value
        elif theirs or (preset is not None and not preset_names and not attributor_names):
            to_preset[key] = value
        else:
            valid = ", ".join([*attributor_names, *preset_names]) or "none"
            where = f"{attributor_label}" + (" or the preset" if preset is not None else " (and no preset is given)")
            raise SpecError(f"unknown parameter '{key}' for {where} (valid: {valid})")
    return to_attributor, to_preset


class _CallableModule(types.ModuleType):
    """``import zplug.explain`` makes ``zplug.explain`` this module; calling it still explains."""

    def __call__(self, *args: Any, **kwargs: Any) -> Explanation:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ("Explanation", "explain")
