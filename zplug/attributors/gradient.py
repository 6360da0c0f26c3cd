"""The (modified) gradient: with rules attached, this is LRP."""

from __future__ import annotations

import attrs

from zplug._lazy import lazy_module
from zplug.attributors.base import Attributor, Problem, Tensors, resolve_target

torch = lazy_module("torch")  # imported when relevance is computed, not to declare the attributor


@attrs.frozen(kw_only=True)
class Gradient(Attributor):
    """The gradient of the target output with respect to the inputs, in one forward and one backward pass.

    With a preset or mapping, the rules replace the gradient of their layers, and the result
    is the LRP relevance. The output is that of the same forward pass.
    """

    name = "gradient"
    summary = "the (rule-modified) gradient: one forward and one backward pass; LRP with a preset"

    def attribute(self, problem: Problem) -> tuple[torch.Tensor, Tensors]:
        """Return ``(output, relevance)``; the target's classes come from this same pass."""
        return problem.gradient(problem.inputs, lambda out: resolve_target(problem.target, out.detach())(out))


__all__ = ("Gradient",)
