"""Rules for element-wise layers: pass-through and the ReLU gradient variants."""

from __future__ import annotations

import attrs
import torch

from zplug.errors import RelevanceError
from zplug.rules.base import Rule, number, parameter


def _single(call, grad_outputs, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(input, upper relevance)`` of a one-input, one-output layer of equal shapes."""
    if len(call.inputs) != 1 or len(grad_outputs) != 1:
        raise RelevanceError(
            f"rule '{rule}' needs a layer with one input and one output; layer '{call.name}' has "
            f"{len(call.inputs)} input(s) and {len(grad_outputs)} output(s)"
        )
    x, relevance = call.inputs[0], grad_outputs[0]
    if x.shape != relevance.shape:
        raise RelevanceError(
            f"rule '{rule}' needs input and output of the same shape; layer '{call.name}' maps "
            f"{tuple(x.shape)} to {tuple(relevance.shape)}"
        )
    return x, relevance


@attrs.frozen(kw_only=True)
class Pass(Rule):
    """Pass the upper relevance through unchanged (element-wise layers: activations, BatchNorm)."""

    name = "pass"
    summary = "pass relevance through unchanged (activations, normalisation)"

    def backward(self, call, grad_outputs):
        _, relevance = _single(call, grad_outputs, self.name)
        return (relevance,)


@attrs.frozen(kw_only=True)
class ReLUDeconvNet(Rule):
    """DeconvNet: keep the positive part of the upper signal, ignoring the forward mask."""

    name = "relu_deconvnet"
    summary = "DeconvNet ReLU: positive part of the upper signal"

    def backward(self, call, grad_outputs):
        _, relevance = _single(call, grad_outputs, self.name)
        return (relevance.clamp(min=0),)


@attrs.frozen(kw_only=True)
class ReLUGuidedBackprop(Rule):
    """Guided backpropagation: the ReLU gradient, restricted to positive upper signal."""

    name = "relu_guided_backprop"
    summary = "guided backprop ReLU: gradient where input and upper signal are positive"

    def backward(self, call, grad_outputs):
        x, relevance = _single(call, grad_outputs, self.name)
        return (torch.where((x > 0) & (relevance > 0), relevance, torch.zeros_like(relevance)),)


@attrs.frozen(kw_only=True)
class ReLUBetaSmooth(Rule):
    """Softplus surrogate gradient: ``sigmoid(beta_smooth * x) * R`` (for second-order use)."""

    name = "relu_beta_smooth"
    summary = "beta-smooth ReLU: softplus surrogate gradient sigmoid(beta x)"
    beta_smooth: float = parameter(10.0, doc="sharpness of the softplus surrogate", kind="number", check=number)

    def backward(self, call, grad_outputs):
        x, relevance = _single(call, grad_outputs, self.name)
        return (torch.sigmoid(self.beta_smooth * x) * relevance,)


__all__ = ("Pass", "ReLUBetaSmooth", "ReLUDeconvNet", "ReLUGuidedBackprop")
