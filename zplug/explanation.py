"""One call from a model and inputs to output, relevance and ledger: :func:`explain` (``zplug.explain``)."""

from __future__ import annotations

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
    form: str = "relevance",
    **params: Any,
) -> Explanation:
    """Explain ``model``'s output for ``inputs``: the output, the relevance and optionally the ledger.

    Parameters
    ----------
    model : torch.nn.Module
        The model, called as ``model(*inputs)``; put it in ``eval()`` mode yourself (a model in
        training mode with BatchNorm running statistics is refused: a forward pass would change
        them). It is restored exactly on return (rules removed, canonizers reverted).
    inputs : tensor or tuple of tensors
        Floating-point inputs sharing the batch dimension. Other inputs (the token ids of a
        language model) go to the plugin whose ``zplug_explain_inputs`` hook offers to explain
        them (zplug-transformers for Hugging Face models), which receives every argument and
        returns its own :class:`Explanation` subclass.
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
    form : {"relevance", "gradient"}
        What the backward pass carries between layers: ``"gradient"`` is faster and keeps less where
        every rule has a gradient form (see :meth:`zplug.LayerMapping.applied`); not with the ledger.
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
    ModelMismatchError
        For a model in training mode whose forward pass would update running statistics.
    InputError
        For inputs holding NaN or infinite values.
    RelevanceError
        If the output or the relevance holds NaN or infinite values (the message names the first
        layer where they appear).
    """
    if not _floating(inputs):
        from zplug.registry import default_registry

        found = default_registry().explainer(model, inputs)
        if found is not None:
            return found[0](
                model, inputs, target, preset=preset, attributor=attributor, mapping=mapping, output_index=output_index,
                ledger=ledger, progress=progress, strict=strict, canonizers=canonizers, **params,
            )  # fmt: skip
    from zplug.evalmode import check_eval_mode
    from zplug.finite import check_inputs_finite, check_output_finite, check_relevance_finite

    check_eval_mode(model)
    check_inputs_finite(inputs)
    if preset is not None and mapping is not None:
        raise SpecError("give either preset= or mapping=, not both")
    if preset is None and canonizers is not None:
        raise SpecError("canonizers= goes with preset= (a mapping= brings its own canonizers)")
    from zplug.preset.binding import bind_preset
    from zplug.registry import default_registry

    bound = bind_preset(preset, params, attributor=attributor)
    if isinstance(attributor, str):
        attributor = make_attributor(default_registry().attributors[attributor], bound.attributor_params)
    elif not isinstance(attributor, Attributor):
        raise SpecError(f"attributor must be a name or an Attributor instance (got {type(attributor).__name__})")
    if bound.preset is not None:
        from zplug.resolver import resolve

        mapping = resolve(model, bound.preset, strict=strict, canonizers=canonizers, **bound.preset_params)
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
        model, mapping, output_index=output_index, observers=() if book is None else (book.observe,), form=form
    )
    watching = nullcontext() if book is None else book.watching(model)
    with session, watching:
        output, relevance = session(
            inputs, target, progress=progress, before_backward=None if book is None else book.trace
        )
    check_output_finite(model, (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs), output)

    def rerun(observer) -> None:
        with attributor.session(model, mapping, output_index=output_index, observers=(observer,)) as again:
            again(inputs, target)

    check_relevance_finite(relevance, rerun)
    if book is not None:
        book.finish((relevance,) if isinstance(relevance, torch.Tensor) else relevance)
    return Explanation(output=output, relevance=relevance, mapping=mapping, ledger=book, attributor=attributor)


def _floating(inputs: Any) -> bool:
    """Whether ``inputs`` is a floating-point tensor or a non-empty tuple or list of them."""
    if isinstance(inputs, torch.Tensor):
        return inputs.is_floating_point()
    return isinstance(inputs, (tuple, list)) and bool(inputs) and all(
        isinstance(x, torch.Tensor) and x.is_floating_point() for x in inputs
    )


__all__ = ("Explanation", "explain")
