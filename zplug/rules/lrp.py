"""LRP rules for layers that are linear in their input (dense, convolution, pooling, sums).

The arithmetic follows Zennit 0.5.1 term by term (see docs/zennit-differences.md for the
few deliberate differences), but each term is one explicit operator call: the layer's
stored output replaces Zennit's re-run of the forward pass where the math allows, and
terms that vanish because the input has no negative entries are skipped (they add exact
zeros, so the numbers do not change).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from zplug._lazy import lazy_module
from zplug.errors import RelevanceError
from zplug.rules.base import (
    Absorption,
    Rule,
    names,
    non_negative,
    non_negative_or_callable,
    number_or_tensor,
    parameter,
    relevance_total,
    to_names,
)

if TYPE_CHECKING:
    import torch

    from zplug.engine.function import LayerCall

    Tensors = tuple[torch.Tensor, ...]
    ParamMap = dict[str, torch.Tensor | None]
else:
    # Declaring the rules (to register, list or check them in presets) needs no torch: it and
    # the engine are imported when a rule first computes relevance.
    torch = lazy_module("torch")
ops = lazy_module("zplug.engine.ops")
_stabilize = lazy_module("zplug.engine.stabilize")


def divide_stabilized(relevance: torch.Tensor, stabilizer, z: torch.Tensor) -> torch.Tensor:
    """``relevance / stabilised z``: :func:`zplug.engine.stabilize.divide_stabilized`."""
    return _stabilize.divide_stabilized(relevance, stabilizer, z)


def apply_stabilizer(stabilizer, z: torch.Tensor) -> torch.Tensor:
    """The stabilised ``z``: :func:`zplug.engine.stabilize.apply_stabilizer`."""
    return _stabilize.apply_stabilizer(stabilizer, z)


def _modify(params: ParamMap, fn: Callable[[torch.Tensor], torch.Tensor], zero: tuple[str, ...] = ()) -> ParamMap:
    """Apply ``fn`` to every parameter; parameters named in ``zero`` become zeros."""
    return {k: None if v is None else (torch.zeros_like(v) if k in zero else fn(v)) for k, v in params.items()}


def _same(p: torch.Tensor) -> torch.Tensor:
    return p


def _positive(p: torch.Tensor) -> torch.Tensor:
    return p.clamp(min=0)


def _negative(p: torch.Tensor) -> torch.Tensor:
    return p.clamp(max=0)


def _no_bias(zero: tuple[str, ...]) -> tuple[str, ...]:
    return zero if "bias" in zero else (*zero, "bias")


def _relevance_out(call: LayerCall, grad_outputs: Tensors, rule: str) -> torch.Tensor:
    if len(grad_outputs) != 1:
        raise RelevanceError(f"rule '{rule}' needs a layer with one output; '{call.name}' has {len(grad_outputs)}")
    return grad_outputs[0]


def _scaled(grad_outputs: Tensors, outputs: Tensors, stabilizer) -> torch.Tensor | Tensors:
    """Return ``R_k / stab(z_k)`` for every output ``k`` (a tensor for a single output)."""
    if len(grad_outputs) != len(outputs):
        raise RelevanceError(f"got relevance for {len(grad_outputs)} outputs but the layer has {len(outputs)}")
    scaled = tuple(divide_stabilized(r, stabilizer, z) for r, z in zip(grad_outputs, outputs))
    return scaled[0] if len(scaled) == 1 else scaled


def _gradient_scaled(grad_outputs: Tensors, outputs: Tensors, stabilized: Tensors, stabilizer) -> Tensors:
    """``G_k * z_k / stab(z'_k)`` per output: the gradient form's counterpart of ``R_k / stab(z'_k)``.

    ``z`` is the layer's output (``R = z * G``), ``z'`` the one the rule divides by (with zeroed parameters).
    """
    if len(grad_outputs) != len(outputs):
        raise RelevanceError(f"got relevance for {len(grad_outputs)} outputs but the layer has {len(outputs)}")
    return tuple(_stabilize.gradient_scaled(g, stabilizer, z, s) for g, z, s in zip(grad_outputs, outputs, stabilized))


def _plain_if_unstabilized(stabilizer, zero_params: tuple[str, ...] = ()) -> str:
    """``"plain"`` when the rule divides by the output itself (no stabiliser, no zeroed parameter), else ``"rule"``."""
    return "plain" if not callable(stabilizer) and stabilizer == 0 and not zero_params else "rule"


def _relevance_per_input(rule: Rule, call: LayerCall, grad_outputs: Tensors) -> Tensors:
    """Gradient form of a rule whose relevance is ``x+ * a + x- * b``: its relevance divided by the input.

    The relevance of such a rule is 0 wherever the input is 0, so dividing loses nothing (0 there).
    """
    relevance = rule.backward(call, tuple(g * out for g, out in zip(grad_outputs, call.outputs)))
    return tuple(None if r is None else _stabilize.divide_where_nonzero(r, x) for r, x in zip(relevance, call.inputs))


def _as_tuple(value: torch.Tensor | Tensors) -> Tensors:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _non_negative(xs: Tensors) -> bool:
    """True if no input has a negative entry (then every ``x-`` term is an exact zero and is skipped)."""
    return all(x.numel() == 0 or bool(x.min() >= 0) for x in xs)


def _affine(call: LayerCall, zero_params: tuple[str, ...]) -> bool:
    """True if ``z = f(x; W+, b+) + f(x; W-, b-)`` holds, so the stored output saves a forward pass.

    That is the case for dense and convolution layers (linear in their parameters) when no
    parameter is zeroed (the stored output includes every parameter).
    """
    return not zero_params and isinstance(call.op, (ops.LinearOp, ops.ConvOp))


def _times_inputs(xs: Tensors, products: Tensors, op) -> Tensors:
    """Return ``x * v`` per input; in place on ``v`` when it is a fresh kernel output and no graph is recorded."""
    if not torch.is_grad_enabled() and (isinstance(op, ops.LinearOp) or (isinstance(op, ops.ConvOp) and op.explicit)):
        return tuple(v.mul_(x) for x, v in zip(xs, products))
    return _mul(xs, products)


def _add(a: Tensors, b: Tensors) -> Tensors:
    return tuple(p + q for p, q in zip(a, b))


def _mul(a: Tensors, b: Tensors) -> Tensors:
    return tuple(p * q for p, q in zip(a, b))


def _stabilizer_absorption(
    call: LayerCall, grad_outputs: Tensors, relevance, stabilizer, zero_params: tuple[str, ...] = ()
) -> Absorption | None:
    """The split of a rule that divides by the stabilised output ``z``: ``R (1 - z / stab(z))`` is the stabiliser's.

    ``z`` is the layer's output (with ``zero_params`` zeroed). The rest of what the layer absorbed
    is the bias's share ``R b / stab(z)``: the inputs' contributions add up to ``z - b``. Layers with
    several outputs are not split.
    """
    if len(grad_outputs) != 1:
        return None
    if zero_params:
        z = call.op.forward(call.inputs, _modify(call.params(), _same, zero_params))
    else:
        z = call.output
    share = relevance_total(grad_outputs[0] * (1 - z / apply_stabilizer(stabilizer, z)))
    received = sum(relevance_total(r) for r in grad_outputs)
    emitted = sum(relevance_total(r) for r in relevance)
    return Absorption(stabilizer=share, bias=received - emitted - share)


_STABILIZER_DOC = "added to the denominator with its sign (a number), or a callable f(z) -> stabilised z"
_ZERO_DOC = "names of parameters set to zero, e.g. [\"bias\"]"


def _stabilizer(default: float = 1e-6):
    return parameter(default, doc=_STABILIZER_DOC, kind="number >= 0", check=non_negative_or_callable)


def _zero_params():
    return parameter((), doc=_ZERO_DOC, kind="list of names", check=names, converter=to_names)


@attrs.frozen(kw_only=True)
class Epsilon(Rule):
    """LRP-epsilon: ``R_i = x_i sum_j w_ji R_j / (z_j + eps sign(z_j))``; ``epsilon=0`` is LRP-0.

    With several inputs each gets ``x_i`` times its share; with several outputs the shares of all
    outputs add up.
    """

    name = "epsilon"
    summary = "LRP-epsilon: proportional to the contributions, epsilon absorbs weak ones"
    epsilon: float = parameter(1e-6, doc=_STABILIZER_DOC, kind="number >= 0", check=non_negative_or_callable)
    zero_params: tuple[str, ...] = _zero_params()

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        xs, params = call.inputs, call.params()
        if self.zero_params:
            params = _modify(params, _same, self.zero_params)
            outputs = _as_tuple(call.op.forward(xs, params))
        else:
            outputs = call.outputs
        scaled = _scaled(grad_outputs, outputs, self.epsilon)
        return _times_inputs(xs, call.op.transpose(scaled, xs, params), call.op)

    def gradient_form(self, module):
        """The module's own gradient with ``epsilon=0`` and no zeroed parameter; otherwise :meth:`gradient`."""
        return _plain_if_unstabilized(self.epsilon, self.zero_params)

    def gradient(self, call, grad_outputs):
        """``J^T (G z / stab(z'))``: the relevance of each input divided by the input."""
        xs, params, outputs = call.inputs, call.params(), call.outputs
        stabilized = outputs
        if self.zero_params:
            params = _modify(params, _same, self.zero_params)
            stabilized = _as_tuple(call.op.forward(xs, params))
        scaled = _gradient_scaled(grad_outputs, outputs, stabilized, self.epsilon)
        return call.op.transpose(scaled[0] if len(scaled) == 1 else scaled, xs, params)

    def absorption(self, call, grad_outputs, relevance):
        """Split what the layer absorbed into the epsilon and the bias shares (one-output layers)."""
        return _stabilizer_absorption(call, grad_outputs, relevance, self.epsilon, self.zero_params)


@attrs.frozen(kw_only=True)
class Norm(Rule):
    """Proportional split without parameters (sums, average pooling): ``R_i = x_i dz/dx_i R / z``.

    Several inputs and several outputs are handled as in :class:`Epsilon`.
    """

    name = "norm"
    summary = "proportional split by contribution, for parameter-free layers (Sum, AvgPool)"
    stabilizer: float = _stabilizer()

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        xs, params = call.inputs, call.params()
        scaled = _scaled(grad_outputs, call.outputs, self.stabilizer)
        shares = call.op.transpose(scaled, xs, params)
        # A sum hands every summand the same quotient (a fresh buffer): the last product may reuse it.
        reusable = isinstance(call.op, ops.SumOp) and shares[-1] is scaled and xs[-1].dtype == scaled.dtype
        if reusable and not torch.is_grad_enabled():
            return (*_mul(xs[:-1], shares[:-1]), shares[-1].mul_(xs[-1]))
        return _mul(xs, shares)

    def gradient_form(self, module):
        """The module's own gradient with ``stabilizer=0``; otherwise :meth:`gradient`."""
        return _plain_if_unstabilized(self.stabilizer)

    def gradient(self, call, grad_outputs):
        """``J^T (G z / stab(z))``: the relevance of each input divided by the input."""
        outputs = call.outputs
        scaled = _gradient_scaled(grad_outputs, outputs, outputs, self.stabilizer)
        return call.op.transpose(scaled[0] if len(scaled) == 1 else scaled, call.inputs, call.params())

    def absorption(self, call, grad_outputs, relevance):
        """Split what the layer absorbed into the stabiliser and the bias shares (one-output layers)."""
        return _stabilizer_absorption(call, grad_outputs, relevance, self.stabilizer)


@attrs.frozen(kw_only=True)
class ZPlus(Rule):
    """LRP-z+: only positive contributions (``x+ w+`` and ``x- w-``) count; equals alpha_beta(1, 0)."""

    name = "zplus"
    summary = "LRP-z+: distribute by positive contributions only"
    stabilizer: float = _stabilizer()
    zero_params: tuple[str, ...] = _zero_params()

    def needs_rectified_output(self) -> bool:
        """True: an output without positive contributions passes no relevance on."""
        return True

    def gradient_form(self, module):
        """:meth:`gradient`."""
        return "rule"

    def gradient(self, call, grad_outputs):
        """The relevance divided by the input (0 where the input is 0, where the relevance is 0 too)."""
        return _relevance_per_input(self, call, grad_outputs)

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        relevance = _relevance_out(call, grad_outputs, self.name)
        xs, op, params = call.inputs, call.op, call.params()
        pos = _modify(params, _positive, self.zero_params)
        if _non_negative(xs):  # the x- terms are exact zeros, and x+ is x
            scaled = divide_stabilized(relevance, self.stabilizer, op.forward(xs, pos))
            return _times_inputs(xs, op.transpose(scaled, xs, pos), op)
        x_pos = tuple(x.clamp(min=0) for x in xs)
        neg = _modify(params, _negative, _no_bias(self.zero_params))
        x_neg = tuple(x.clamp(max=0) for x in xs)
        z = op.forward(x_pos, pos) + op.forward(x_neg, neg)
        scaled = divide_stabilized(relevance, self.stabilizer, z)
        return _add(_mul(x_pos, op.transpose(scaled, x_pos, pos)), _mul(x_neg, op.transpose(scaled, x_neg, neg)))


def _check_alpha_beta(instance: AlphaBeta, attribute, value) -> None:
    if instance.alpha - instance.beta != 1:
        from zplug.errors import SpecError

        raise SpecError(
            "parameters alpha and beta must satisfy alpha - beta = 1 "
            f"(got alpha={instance.alpha}, beta={instance.beta})"
        )


@attrs.frozen(kw_only=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta: ``alpha`` times the positive share minus ``beta`` times the negative share."""

    name = "alpha_beta"
    summary = "LRP-alpha-beta: weigh positive (alpha) against negative (beta) contributions"
    alpha: float = parameter(2.0, doc="weight of positive contributions", kind="number >= 0", check=non_negative)
    beta: float = parameter(1.0, doc="weight of negative contributions (alpha - beta = 1)", kind="number >= 0",
                            check=non_negative)
    stabilizer: float = _stabilizer()
    zero_params: tuple[str, ...] = _zero_params()

    def __attrs_post_init__(self) -> None:
        _check_alpha_beta(self, None, None)

    def needs_rectified_output(self) -> bool:
        """True for ``beta = 0`` (z+): an output without positive contributions passes no relevance on."""
        return self.beta == 0

    def gradient_form(self, module):
        """:meth:`gradient`."""
        return "rule"

    def gradient(self, call, grad_outputs):
        """The relevance divided by the input (0 where the input is 0, where the relevance is 0 too)."""
        return _relevance_per_input(self, call, grad_outputs)

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        relevance = _relevance_out(call, grad_outputs, self.name)
        xs, op, params = call.inputs, call.op, call.params()
        stab = self.stabilizer
        pos = _modify(params, _positive, self.zero_params)
        neg = _modify(params, _negative, self.zero_params)
        if _non_negative(xs):
            z_pos = op.forward(xs, pos)
            # W-x + b- = z - (W+x + b+): the stored output saves the second forward pass
            z_neg = call.output - z_pos if _affine(call, self.zero_params) else op.forward(xs, neg)
            s_pos = divide_stabilized(relevance, stab, z_pos)
            s_neg = divide_stabilized(relevance, stab, z_neg)
            r_pos = _mul(xs, op.transpose(s_pos, xs, pos))
            r_neg = _mul(xs, op.transpose(s_neg, xs, neg))
        else:
            x_pos = tuple(x.clamp(min=0) for x in xs)
            x_neg = tuple(x.clamp(max=0) for x in xs)
            pos_nb = _modify(params, _positive, _no_bias(self.zero_params))
            neg_nb = _modify(params, _negative, _no_bias(self.zero_params))
            s_pos = divide_stabilized(relevance, stab, op.forward(x_pos, pos) + op.forward(x_neg, neg_nb))
            s_neg = divide_stabilized(relevance, stab, op.forward(x_pos, neg) + op.forward(x_neg, pos_nb))
            r_pos = _add(_mul(x_pos, op.transpose(s_pos, x_pos, pos)), _mul(x_neg, op.transpose(s_pos, x_neg, neg_nb)))
            r_neg = _add(_mul(x_pos, op.transpose(s_neg, x_pos, neg)), _mul(x_neg, op.transpose(s_neg, x_neg, pos_nb)))
        return tuple(self.alpha * p - self.beta * n for p, n in zip(r_pos, r_neg))


@attrs.frozen(kw_only=True)
class Gamma(Rule):
    """Generalised LRP-gamma: favour contributions of the output's sign by ``gamma``."""

    name = "gamma"
    summary = "LRP-gamma: favour contributions of the output's sign"
    gamma: float = parameter(0.25, doc="how much contributions of the output's sign are favoured", kind="number >= 0",
                             check=non_negative)
    stabilizer: float = _stabilizer()
    zero_params: tuple[str, ...] = _zero_params()

    def gradient_form(self, module):
        """:meth:`gradient`."""
        return "rule"

    def gradient(self, call, grad_outputs):
        """The relevance divided by the input (0 where the input is 0, where the relevance is 0 too)."""
        return _relevance_per_input(self, call, grad_outputs)

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        relevance = _relevance_out(call, grad_outputs, self.name)
        xs, op, params = call.inputs, call.op, call.params()
        gamma, stab = self.gamma, self.stabilizer
        z = call.output  # the gate uses the unmodified output, bias included

        def up(p: torch.Tensor) -> torch.Tensor:
            return p + gamma * p.clamp(min=0)

        def down(p: torch.Tensor) -> torch.Tensor:
            return p + gamma * p.clamp(max=0)

        w_up, w_down = _modify(params, up, self.zero_params), _modify(params, down, self.zero_params)
        if _non_negative(xs):
            if _affine(call, self.zero_params):
                # With P = W+x + b+: (W + gW+)x + b + gb+ = z + gP and (W + gW-)x + b + gb- = z + g(z - P).
                z_pos = op.forward(xs, _modify(params, _positive))
                d_up, d_down = z + gamma * z_pos, lambda: z + gamma * (z - z_pos)
            else:
                d_up, d_down = op.forward(xs, w_up), lambda: op.forward(xs, w_down)
            relevance_in = op.transpose((z > 0) * divide_stabilized(relevance, stab, d_up), xs, w_up)
            negative = (z < 0) * relevance
            if bool(negative.any()):  # zero when the layer feeds a ReLU whose upper rule scales by the input
                relevance_in = _add(relevance_in, op.transpose(negative / apply_stabilizer(stab, d_down()), xs, w_down))
            return _times_inputs(xs, relevance_in, op)
        x_pos = tuple(x.clamp(min=0) for x in xs)
        x_neg = tuple(x.clamp(max=0) for x in xs)
        up_nb = _modify(params, up, _no_bias(self.zero_params))
        down_nb = _modify(params, down, _no_bias(self.zero_params))
        s_pos = (z > 0) * divide_stabilized(relevance, stab, op.forward(x_pos, w_up) + op.forward(x_neg, down_nb))
        s_neg = (z < 0) * divide_stabilized(relevance, stab, op.forward(x_pos, w_down) + op.forward(x_neg, up_nb))
        terms = (
            _mul(x_pos, op.transpose(s_pos, x_pos, w_up)),
            _mul(x_neg, op.transpose(s_pos, x_neg, down_nb)),
            _mul(x_pos, op.transpose(s_neg, x_pos, w_down)),
            _mul(x_neg, op.transpose(s_neg, x_neg, up_nb)),
        )
        return tuple(a + b + c + d for a, b, c, d in zip(*terms))


def _bound(value: float | torch.Tensor, x: torch.Tensor, which: str, layer: str) -> torch.Tensor:
    """Broadcast a z-box bound to the input's shape (scalars, per-channel or per-pixel tensors)."""
    bound = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    shape = tuple(x.shape)
    if 0 < bound.ndim <= x.ndim and bound.shape[0] > shape[0] and bound.ndim > 1:
        bound = bound[: shape[0]]  # a bound made for a larger batch
    if 0 < bound.ndim < x.ndim:
        bound = bound.reshape(*bound.shape, *([1] * (x.ndim - bound.ndim)))
    try:
        return bound.expand(shape)
    except RuntimeError:
        raise RelevanceError(
            f"zbox bound '{which}' of shape {tuple(torch.as_tensor(value).shape)} does not fit the input of layer "
            f"'{layer}' of shape {shape}; use a number, a (1, C, 1, 1) tensor or a tensor of the input's shape"
        ) from None


@attrs.frozen(kw_only=True)
class ZBox(Rule):
    """LRP-z^B for bounded inputs (usually the first layer): ``low <= x <= high``."""

    name = "zbox"
    summary = "LRP-zB: for the input layer, with the lowest and highest input values"
    low: float | torch.Tensor = parameter(doc="lowest possible input value (number or tensor)",
                                          kind="number or tensor", check=number_or_tensor)
    high: float | torch.Tensor = parameter(doc="highest possible input value (number or tensor)",
                                           kind="number or tensor", check=number_or_tensor)
    stabilizer: float = _stabilizer()
    zero_params: tuple[str, ...] = _zero_params()

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        relevance = _relevance_out(call, grad_outputs, self.name)
        xs, op, params = call.inputs, call.op, call.params()
        lows = tuple(_bound(self.low, x, "low", call.name) for x in xs)
        highs = tuple(_bound(self.high, x, "high", call.name) for x in xs)
        plain = _modify(params, _same, self.zero_params)
        pos = _modify(params, _positive, self.zero_params)
        neg = _modify(params, _negative, self.zero_params)
        z_x = op.forward(xs, plain) if self.zero_params else call.output
        z = z_x - (op.forward(lows, pos) + op.forward(highs, neg))
        scaled = divide_stabilized(relevance, self.stabilizer, z)
        r_x = _mul(xs, op.transpose(scaled, xs, plain))
        r_low = _mul(lows, op.transpose(scaled, lows, pos))
        r_high = _mul(highs, op.transpose(scaled, highs, neg))
        return tuple(a - (b + c) for a, b, c in zip(r_x, r_low, r_high))


@attrs.frozen(kw_only=True)
class WSquare(Rule):
    """LRP-w^2: distribute by squared weights, independent of the input."""

    name = "wsquare"
    summary = "LRP-w2: distribute by squared weights (input-independent)"
    stabilizer: float = _stabilizer()
    zero_params: tuple[str, ...] = _zero_params()

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        relevance = _relevance_out(call, grad_outputs, self.name)
        ones = tuple(torch.ones_like(x) for x in call.inputs)
        squared = _modify(call.params(), torch.square, self.zero_params)
        scaled = divide_stabilized(relevance, self.stabilizer, call.op.forward(ones, squared))
        return call.op.transpose(scaled, ones, squared)


@attrs.frozen(kw_only=True)
class Flat(Rule):
    """LRP-flat: distribute uniformly over each output's receptive field."""

    name = "flat"
    summary = "LRP-flat: distribute uniformly over the receptive field"
    stabilizer: float = _stabilizer()
    zero_params: tuple[str, ...] = _zero_params()

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        relevance = _relevance_out(call, grad_outputs, self.name)
        ones = tuple(torch.ones_like(x) for x in call.inputs)
        flat = _modify(call.params(), torch.ones_like, _no_bias(self.zero_params))
        scaled = divide_stabilized(relevance, self.stabilizer, call.op.forward(ones, flat))
        return call.op.transpose(scaled, ones, flat)


__all__ = ("AlphaBeta", "Epsilon", "Flat", "Gamma", "Norm", "WSquare", "ZBox", "ZPlus")
