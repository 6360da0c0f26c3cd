"""Rules for element-wise layers: pass-through and the ReLU gradient variants."""

from __future__ import annotations

import attrs

from zplug._lazy import lazy_module
from zplug.errors import RelevanceError
from zplug.rules.base import Rule, number, parameter

torch = lazy_module("torch")  # imported when a rule first computes relevance, not to declare the rules
_stabilize = lazy_module("zplug.engine.stabilize")


def _single(call, grad_outputs, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(input, upper relevance)`` of a one-input, one-output layer of equal shapes."""
    if len(call.inputs) != 1 or len(grad_outputs) != 1:
        raise RelevanceError(
            f"rule '{rule}' needs a layer with one input and one output; layer '{call.name}' has "
            f"{len(call.inputs)} input(s) and {len(grad_outputs)} output(s)"
        )
    x, relevance = call.inputs[0], grad_outputs[0]
    _check_shape(call, x, relevance, rule)
    return x, relevance


def _check_shape(call, x: torch.Tensor, relevance: torch.Tensor, rule: str) -> None:
    if x.shape != relevance.shape:
        raise RelevanceError(
            f"rule '{rule}' needs input and output of the same shape; layer '{call.name}' maps "
            f"{tuple(x.shape)} to {tuple(relevance.shape)}"
        )


@attrs.frozen(kw_only=True)
class Pass(Rule):
    """Pass the upper relevance through unchanged (element-wise layers: activations, BatchNorm).

    A layer with as many outputs as inputs passes the relevance of output ``k`` to input ``k``.
    """

    name = "pass"
    summary = "pass relevance through unchanged (activations, normalisation)"
    passes_relevance = True

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        if len(call.inputs) == len(grad_outputs) > 1:  # one output per input, e.g. a tuple of activations
            for x, relevance in zip(call.inputs, grad_outputs):
                _check_shape(call, x, relevance, self.name)
            return tuple(grad_outputs)
        _, relevance = _single(call, grad_outputs, self.name)
        return (relevance,)

    def gradient_form(self, module):
        """The module's own gradient on ReLU (its gradient is ``out / in``) and dropout; otherwise :meth:`gradient`."""
        plain = (torch.nn.ReLU, torch.nn.Identity, torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d)
        forwards = {cls.forward for cls in plain}
        return "plain" if type(module).forward in forwards and "forward" not in vars(module) else "rule"

    def gradient(self, call, grad_outputs):
        """``G * out / in`` per input (0 where the input is 0): the output's relevance, divided by the input."""
        if len(call.inputs) == len(grad_outputs) > 1:
            pairs = list(zip(call.inputs, grad_outputs))
            for x, g in pairs:
                _check_shape(call, x, g, self.name)
        else:
            pairs = [_single(call, grad_outputs, self.name)]
        # 0 where the input is 0: there the relevance x * G is 0 whatever G is
        return tuple(_stabilize.divide_where_nonzero(g * out, x) for (x, g), out in zip(pairs, call.outputs))


@attrs.frozen(kw_only=True)
class ReLUDeconvNet(Rule):
    """DeconvNet: keep the positive part of the upper signal, ignoring the forward mask."""

    name = "relu_deconvnet"
    gradient_method = True
    summary = "DeconvNet ReLU: positive part of the upper signal"

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        _, relevance = _single(call, grad_outputs, self.name)
        return (relevance.clamp(min=0),)


@attrs.frozen(kw_only=True)
class ReLUGuidedBackprop(Rule):
    """Guided backpropagation: the layer's gradient, restricted to positive upper signal.

    On a ReLU this is ``R * 1[x > 0] * 1[R > 0]``; on other element-wise layers the layer's own
    vector-Jacobian product replaces ``R * 1[x > 0]``.
    """

    name = "relu_guided_backprop"
    gradient_method = True
    summary = "guided backprop ReLU: gradient where input and upper signal are positive"

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        x, relevance = _single(call, grad_outputs, self.name)
        if isinstance(call.module, torch.nn.ReLU):
            gradient = torch.where(x > 0, relevance, torch.zeros_like(relevance))
        else:  # any other element-wise module: its own gradient (as Zennit does)
            (gradient,) = call.op.transpose(relevance, call.inputs, call.params())
        return (gradient * (relevance > 0),)


@attrs.frozen(kw_only=True)
class ReLUBetaSmooth(Rule):
    """Softplus surrogate gradient: ``sigmoid(beta_smooth * x) * R`` (for second-order use)."""

    name = "relu_beta_smooth"
    gradient_method = True
    summary = "beta-smooth ReLU: softplus surrogate gradient sigmoid(beta x)"
    beta_smooth: float = parameter(10.0, doc="sharpness of the softplus surrogate", kind="number", check=number)

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        x, relevance = _single(call, grad_outputs, self.name)
        return (torch.sigmoid(self.beta_smooth * x) * relevance,)


__all__ = ("Pass", "ReLUBetaSmooth", "ReLUDeconvNet", "ReLUGuidedBackprop")
