"""Gradient form: relevance travels between layers divided by the activation it belongs to.

In relevance form (the default, as Zennit computes) the backward pass carries the relevance ``R``
of every activation, and each rule turns the relevance of its outputs into that of its inputs. In
gradient form it carries ``G = R / a`` for each activation ``a`` instead. For most rules this is the
cheaper form: where a rule's relevance is ``x * J^T (R / z)`` (epsilon with no stabiliser, the
proportional split of a sum, the softmax rule) its gradient form is the module's own gradient, so
the module needs no rule node at all, keeps only what autograd keeps, and skips the divisions and
products that relevance form makes at every layer. The relevance of the model's inputs is the same
(up to round-off): the model's output relevance ``R`` enters as ``R / out``, and the inputs receive
``x * G``.

Rules declare their gradient form (:meth:`zplug.rules.Rule.gradient_form`); a mapping in which some
rule has none cannot be applied in gradient form. Operations without a rule keep their plain
gradient in both forms, which is the same relevance for the operations the coverage analysis calls
linear (copies, reshapes, masks), except one: an added constant (``x + c``) passes all relevance to
``x`` in relevance form, and keeps its share ``c / (x + c)`` in gradient form, as a bias does (the
mapping warns about each such addition once its coverage is known).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from zplug.errors import RelevanceError, SpecError

FORMS = ("relevance", "gradient")


class _ToRelevance(torch.autograd.Function):
    """Identity on a model input; the backward pass turns ``G`` into the input's relevance ``x * G``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clone()  # a copy: the model may change its input in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * x


class _ToGradient(torch.autograd.Function):
    """Identity on a model output; the backward pass turns the output relevance ``R`` into ``R / out``."""

    @staticmethod
    def forward(ctx, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        zero = out == 0
        if bool(zero.any()):
            if bool((relevance.masked_select(zero) != 0).any()):
                raise RelevanceError(
                    "gradient form: relevance was given to a model output that is exactly 0, which gradient form "
                    "cannot carry (it divides by the output); apply the mapping in relevance form"
                )
            return torch.where(zero, torch.zeros_like(relevance), relevance / out.masked_fill(zero, 1.0))
        return relevance / out


def _wants_relevance(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.requires_grad


def _inputs_to_relevance(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if not torch.is_grad_enabled():
        return None
    args = tuple(_ToRelevance.apply(a) if _wants_relevance(a) else a for a in args)
    kwargs = {k: _ToRelevance.apply(v) if _wants_relevance(v) else v for k, v in kwargs.items()}
    return args, kwargs


def _outputs_to_gradient(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    if not torch.is_grad_enabled():
        return None
    if isinstance(output, torch.Tensor):
        return _ToGradient.apply(output) if _wants_relevance(output) else output
    if type(output) in (tuple, list):
        return type(output)(_ToGradient.apply(o) if _wants_relevance(o) else o for o in output)
    raise RelevanceError(
        f"gradient form: the model {type(module).__name__} returned a {type(output).__name__}; gradient form needs "
        "a tensor or a tuple or list of tensors as output (apply the mapping in relevance form)"
    )


@contextmanager
def model_boundaries(model: torch.nn.Module) -> Iterator[None]:
    """Convert at the model's call: inputs receive ``x * G``, outputs pass ``R / out`` (for a ``with`` block).

    The input hook runs before any other forward pre-hook of the model and the output hook after the
    others, so hooks that look at the model's call (the coverage analysis) see its own inputs and outputs.
    """
    handles = [
        model.register_forward_pre_hook(_inputs_to_relevance, with_kwargs=True, prepend=True),
        model.register_forward_hook(_outputs_to_gradient, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_form(form: str) -> str:
    """Return ``form`` if it is ``"relevance"`` or ``"gradient"``; raise a SpecError otherwise."""
    if form not in FORMS:
        raise SpecError(f"form must be 'relevance' or 'gradient' (got {form!r})")
    return form


__all__ = ("FORMS", "check_form", "model_boundaries")
