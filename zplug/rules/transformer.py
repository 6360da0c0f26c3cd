"""Rules for the operations of transformers: normalisation, softmax and products of activations.

They follow AttnLRP (Achtibat et al., ICML 2024) and its CP-LRP variant (Ali et al., ICML 2022):

* ``frozen_scale`` (LayerNorm, RMSNorm, GroupNorm, ``F.normalize``): the normalising scale
  ``1 / std`` is held constant, which leaves an affine map of the input; the epsilon rule
  distributes over it. For RMSNorm and ``F.normalize`` (no centring) this is the identity.
* ``softmax``: ``R_x = x * (R_s - s * sum(R_s))`` along the softmax dimension, the Taylor
  expansion of the softmax at its input with the bias term absorbed; masked ``-inf`` inputs
  count as 0. It is not conservative: the bias term keeps what it absorbs.
* ``product`` (``q @ k^T``, ``attn @ v``, gates): every operand that carries relevance gets the
  epsilon share it would get if the others were constants, times a weight: ``1/n`` each
  (uniform, AttnLRP) or 1 for the value operand (CP-LRP).

Element-wise non-linearities (GELU, SiLU, tanh) get the identity rule, which is ``pass``.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import attrs

from zplug._lazy import lazy_module
from zplug.errors import RelevanceError, SpecError
from zplug.rules.base import Rule, names, non_negative_or_callable, parameter, to_names

if TYPE_CHECKING:
    import torch
else:
    # Declaring the rules (to register, list or check them in presets) needs no torch.
    torch = lazy_module("torch")
_stabilize = lazy_module("zplug.engine.stabilize")


def divide_stabilized(relevance: torch.Tensor, stabilizer, z: torch.Tensor) -> torch.Tensor:
    """``relevance / stabilised z``: :func:`zplug.engine.stabilize.divide_stabilized`."""
    return _stabilize.divide_stabilized(relevance, stabilizer, z)

_STABILIZER_DOC = "added to the denominator with its sign (a number), or a callable f(z) -> stabilised z"


def _relevance_out(call, grad_outputs, rule: str) -> torch.Tensor:
    if len(grad_outputs) != 1:
        raise RelevanceError(f"rule '{rule}' needs a layer with one output; '{call.name}' has {len(grad_outputs)}")
    return grad_outputs[0]


def _single_input(call, rule: str) -> torch.Tensor:
    if len(call.inputs) != 1:
        raise RelevanceError(
            f"rule '{rule}' needs a layer with one tensor input; layer '{call.name}' has {len(call.inputs)}"
        )
    return call.inputs[0]


# -- frozen_scale ----------------------------------------------------------------------------------
def _dims(x: torch.Tensor, normalized_shape) -> tuple[int, ...]:
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(x.ndim - count, x.ndim))


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = _dims(x, normalized_shape)
    mean = x.mean(dim=dims, keepdim=True)
    inverse_std = torch.rsqrt(x.detach().var(dim=dims, unbiased=False, keepdim=True) + eps)
    y = (x - mean) * inverse_std
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    grouped = x.reshape(x.shape[0], num_groups, -1)
    mean = grouped.mean(dim=-1, keepdim=True)
    inverse_std = torch.rsqrt(grouped.detach().var(dim=-1, unbiased=False, keepdim=True) + eps)
    y = ((grouped - mean) * inverse_std).reshape(x.shape)
    channel = (1, -1) + (1,) * (x.ndim - 2)  # weight and bias are per channel (dimension 1)
    if weight is not None:
        y = y * weight.reshape(channel)
    return y if bias is None else y + bias.reshape(channel)


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    dims = _dims(x, normalized_shape)
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    y = x * torch.rsqrt(x.detach().square().mean(dim=dims, keepdim=True) + eps)
    return y if weight is None else y * weight


def _normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    if out is not None:
        raise RelevanceError("frozen_scale: F.normalize with out= cannot be differentiated")
    return x / torch.linalg.vector_norm(x.detach(), ord=p, dim=dim, keepdim=True).clamp_min(eps)


@functools.cache
def frozen_functions() -> dict:
    """The normalising functions whose scale ``frozen_scale`` holds constant, with their replacements."""
    functional = torch.nn.functional
    table = {functional.layer_norm: _layer_norm, functional.group_norm: _group_norm, functional.normalize: _normalize}
    if hasattr(functional, "rms_norm"):  # torch >= 2.4
        table[functional.rms_norm] = _rms_norm
    return table


@functools.cache
def _frozen_scale_mode() -> type:
    """The torch function mode class (made on first use: defining it needs torch)."""

    class FrozenScaleMode(torch.overrides.TorchFunctionMode):
        """While active, the normalising functions compute with their scale detached (thread-local, scoped)."""

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            frozen = frozen_functions().get(func)
            if frozen is None:
                return func(*args, **(kwargs or {}))
            self.seen.append(func.__name__)
            return frozen(*args, **(kwargs or {}))

    return FrozenScaleMode


def _check_stabilizer(name, value):
    non_negative_or_callable(name, value)


@attrs.frozen(kw_only=True)
class FrozenScale(Rule):
    """Normalisation layers: the normalising scale held constant, the epsilon rule on what is left.

    With ``s = 1 / sqrt(var(x) + eps)`` held constant, LayerNorm is the affine map
    ``y = w * s * (x - mean(x)) + b`` and ``R_x = x * A^T (R_y / stab(y))`` with ``A`` its
    matrix; GroupNorm is the same per group, RMSNorm (``y = w * s * x``) and ``F.normalize``
    give ``R_x = R_y`` (up to the stabiliser and the bias). The module's forward is re-run with
    ``F.layer_norm``, ``F.group_norm``, ``F.rms_norm`` and ``F.normalize`` computing with their
    scale detached, so subclasses that permute around the call (torchvision's ``LayerNorm2d``)
    work too; a module that calls none of them is an error.
    """

    name = "frozen_scale"
    summary = "normalisation (LayerNorm, RMSNorm, GroupNorm): scale held constant, epsilon on the rest (AttnLRP)"
    epsilon: float = parameter(1e-6, doc=_STABILIZER_DOC, kind="number >= 0", check=_check_stabilizer)
    zero_params: tuple[str, ...] = parameter(
        (), doc='names of parameters set to zero, e.g. ["bias"]', kind="list of names", check=names,
        converter=to_names,
    )

    def compute_forward(self, module, forward, args, kwargs, state):
        """``torch.nn.LayerNorm``: ``native_layer_norm``, whose scale the backward pass then reuses."""
        if not _plain_layer_norm_call(module, forward, args, kwargs):
            return forward(*args, **kwargs)
        output, _, state["inverse_std"] = torch.native_layer_norm(
            args[0], module.normalized_shape, module.weight, module.bias, module.eps
        )
        return output

    def backward(self, call, grad_outputs):
        """Return the relevance of the input (see the class docstring)."""
        return (self._propagate(call, grad_outputs, gradient=False),)

    def gradient_form(self, module):
        """:meth:`gradient`."""
        return "rule"

    def gradient(self, call, grad_outputs):
        """``A^T (G y / stab(y'))``: the input's relevance divided by the input."""
        return (self._propagate(call, grad_outputs, gradient=True),)

    def _propagate(self, call, grad_outputs, *, gradient: bool) -> torch.Tensor:
        """``A^T v`` with ``v = R / stab(y)`` (times ``x``), or in gradient form ``v = G y / stab(y')``."""
        relevance = _relevance_out(call, grad_outputs, self.name)
        x = _single_input(call, self.name)
        params = call.params()
        if self.zero_params:
            params = {k: None if v is None else (torch.zeros_like(v) if k in self.zero_params else v)
                      for k, v in params.items()}
        if _plain_layer_norm(call):
            return self._layer_norm(call, relevance, x, params, gradient=gradient)
        mode = _frozen_scale_mode()()
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            with mode:
                y = call.op.forward((leaf,), params)
            if not mode.seen:
                raise RelevanceError(
                    f"rule '{self.name}' on layer '{call.name}' ({type(call.module).__name__}): its forward calls none "
                    "of F.layer_norm, F.group_norm, F.rms_norm, F.normalize, so there is no scale to hold constant; "
                    "give this layer another rule, or write its normalisation with one of these functions"
                )
            if gradient:  # R = out G, divided by the stabilised y (computed with zeroed parameters, if any)
                scaled = _stabilize.gradient_scaled(relevance, self.epsilon, call.output, y.detach())
            else:
                scaled = divide_stabilized(relevance, self.epsilon, y.detach())
            (grad,) = torch.autograd.grad(y, leaf, scaled)
        return grad if gradient else x * grad

    def _layer_norm(self, call, relevance, x, params, *, gradient: bool) -> torch.Tensor:
        """``torch.nn.LayerNorm`` in closed form: ``x * s * (w v - mean(w v))`` with ``v = R / stab(y)``.

        ``y = w s (x - mean(x)) + b`` with the scale ``s = 1 / sqrt(var(x) + eps)`` held constant has the
        transposed Jacobian ``v -> s (w v - mean(w v))`` (means over the normalised dimensions). The stored
        output serves as ``y`` unless parameters are zeroed; no forward is re-run and no graph is built.
        In gradient form ``v = G y / stab(y')`` and the product with ``x`` is left out.
        """
        module = call.module
        dims = _dims(x, module.normalized_shape)
        weight, bias = params.get("weight"), params.get("bias")
        if self.zero_params:
            y = torch.nn.functional.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
        else:
            y = call.output
        inplace = not torch.is_grad_enabled()  # fresh buffers may be reused unless a graph is recorded
        if gradient:
            scaled = _stabilize.gradient_scaled(relevance, self.epsilon, call.output, y)
            inplace = inplace and scaled is not relevance  # the incoming gradient may be shared: not in place
        else:
            scaled = divide_stabilized(relevance, self.epsilon, y)
        if weight is not None:
            scaled = scaled.mul_(weight) if inplace else scaled * weight
        mean = scaled.mean(dim=dims, keepdim=True)
        centred = scaled.sub_(mean) if inplace else scaled - mean
        # The scale as the forward computed it (kept by compute_forward; else ``native_layer_norm`` again, which
        # returns it: ``var`` is slower on CPU).
        inverse_std = call.state.get("inverse_std")
        if inverse_std is None:
            inverse_std = torch.native_layer_norm(x.detach(), module.normalized_shape, None, None, module.eps)[2]
        if gradient:
            return centred.mul_(inverse_std) if inplace else centred * inverse_std
        if inplace:
            return centred.mul_(inverse_std).mul_(x)
        return centred * inverse_std * x


def _plain_layer_norm(call) -> bool:
    """True for a one-tensor call of a ``torch.nn.LayerNorm`` running ``torch.nn.LayerNorm.forward`` itself."""
    # The forward the rule stands in for: a canonizer's, or the class's.
    return _plain_layer_norm_call(call.module, call.binding.original_forward, call.args, call.kwargs)


def _plain_layer_norm_call(module, forward, args: tuple, kwargs: dict) -> bool:
    return (
        isinstance(module, torch.nn.LayerNorm)
        and getattr(forward, "__func__", None) is torch.nn.LayerNorm.forward
        and getattr(forward, "__self__", None) is module
        and len(args) == 1
        and not kwargs
    )


# -- softmax ---------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class Softmax(Rule):
    """Softmax ``s = softmax(x)``: ``R_x = x * (R_s - s * sum_j R_s_j)`` along the softmax dimension.

    This is AttnLRP's rule (the first-order Taylor expansion at ``x`` with a bias term). Inputs
    of ``-inf`` (masked positions, where ``s = 0``) count as 0. The sum of ``R_x`` is the sum of
    ``R_s`` minus ``sum(x * s) * sum(R_s)`` per row: the rule is not conservative, and the ledger
    shows the difference as absorbed.
    """

    name = "softmax"
    summary = "softmax: x * (R - s sum R) along its dimension, -inf inputs as 0 (AttnLRP)"

    def backward(self, call, grad_outputs):
        """Return the relevance of the input (see the class docstring)."""
        relevance = _relevance_out(call, grad_outputs, self.name)
        x = _single_input(call, self.name)
        dim = getattr(call.module, "dim", None)
        if not isinstance(dim, int):
            raise RelevanceError(
                f"rule '{self.name}' on layer '{call.name}' ({type(call.module).__name__}) needs a module with an "
                f"integer attribute 'dim' (the softmax dimension, as torch.nn.Softmax has); got {dim!r}"
            )
        s = call.output
        inner = torch.addcmul(relevance, s, relevance.sum(dim=dim, keepdim=True), value=-1)  # R - s sum(R)
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            # Without -inf inputs the product is finite (unless the relevance is not): a finite sum proves
            # there was nothing to mask, and costs one read instead of a comparison and a masked copy.
            # (CPU only: on a GPU the check would wait for the device.)
            out = inner.mul_(x)
            if math.isfinite(out.sum().item()):
                return (out,)
            inner = torch.addcmul(relevance, s, relevance.sum(dim=dim, keepdim=True), value=-1)
        return (inner * x.masked_fill(x == float("-inf"), 0.0),)

    def gradient_form(self, module):
        """The softmax's own gradient (``s * (G - sum(s G))`` is its vector-Jacobian product)."""
        plain = type(module).forward is torch.nn.Softmax.forward and "forward" not in vars(module)
        return "plain" if plain else "rule"

    def gradient(self, call, grad_outputs):
        """``s * (G - sum(s G))`` along the softmax dimension."""
        grad = _relevance_out(call, grad_outputs, self.name)
        dim = getattr(call.module, "dim", None)
        if not isinstance(dim, int):
            raise RelevanceError(
                f"rule '{self.name}' on layer '{call.name}' ({type(call.module).__name__}) needs a module with an "
                f"integer attribute 'dim' (the softmax dimension, as torch.nn.Softmax has); got {dim!r}"
            )
        s = call.output
        weighted = s * grad
        return (weighted - s * weighted.sum(dim=dim, keepdim=True),)


# -- product ---------------------------------------------------------------------------------------
def _check_to(name, value):
    if value not in ("all", "value"):
        raise SpecError(f"parameter '{name}' must be 'all' or 'value' (got {value!r})")


def _carries(operand) -> bool:
    """Whether an operand carries relevance: a tensor computed from the inputs (not a parameter or constant)."""
    return (
        isinstance(operand, torch.Tensor)
        and operand.is_floating_point()
        and operand.requires_grad
        and not isinstance(operand, torch.nn.Parameter)
    )


def _unbroadcast(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``grad`` over the dimensions that broadcasting added or expanded to reach ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    return (grad.sum(dim=dims, keepdim=True) if dims else grad).reshape(shape)


def _matmul_share(module, scaled: torch.Tensor, operands: tuple, index: int, weight: float) -> torch.Tensor:
    """``weight * operand * J^T scaled`` for operand ``index`` of ``scale * (a @ b)``.

    The constant ``weight * scale`` multiplies the smaller of the other operand (before the product) and the
    result; the product with the operand is made in place on the fresh matmul output unless a graph is recorded.
    """
    a, b = operands
    operand, other = operands[index], operands[1 - index]
    factor = weight * (1.0 if module.scale is None else module.scale)
    if a.ndim < 2 or b.ndim < 2:  # vector products: let autograd sort out the shapes
        with torch.enable_grad():
            leaves = (a.detach().requires_grad_(), b.detach().requires_grad_())
            out = type(module).forward(module, *leaves)
            grad = torch.autograd.grad(out, leaves[index], scaled)[0]  # the forward applies the scale
        share = operand * grad
        return share if weight == 1 else share * weight
    fold = factor != 1 and other.numel() <= operand.numel()
    if fold:
        other = other * factor
    if index == 0:
        grad = _unbroadcast(torch.matmul(scaled, other.transpose(-1, -2)), a.shape)
    else:
        grad = _unbroadcast(torch.matmul(other.transpose(-1, -2), scaled), b.shape)
    if torch.is_grad_enabled() or grad.dtype != operand.dtype:
        share = operand * grad
        return share if fold or factor == 1 else share * factor
    share = grad.mul_(operand)
    return share if fold or factor == 1 else share.mul_(factor)


def _mul_share(scaled: torch.Tensor, operands: tuple, index: int, weight: float) -> torch.Tensor:
    """``weight * operand * J^T scaled`` for operand ``index`` of an element-wise product."""
    result = scaled
    for j, other in enumerate(operands):
        if j != index:
            result = result * other
    grad = _unbroadcast(result, operands[index].shape)
    operand = operands[index]
    if grad is scaled or torch.is_grad_enabled() or grad.dtype != operand.dtype:  # ``scaled`` is shared: keep it
        share = operand * grad
        return share if weight == 1 else share * weight
    share = grad.mul_(operand)
    return share if weight == 1 else share.mul_(weight)


@attrs.frozen(kw_only=True)
class Product(Rule):
    """Products of activations: ``q @ k^T``, ``attn @ v``, gates ``act(g) * u`` (AttnLRP, CP-LRP).

    For an output ``O`` that is linear in each operand separately (a matrix or element-wise
    product), operand ``A`` gets ``w_A * A * J_A^T (R_O / stab(O))``, where ``J_A`` is the
    derivative with the other operands held constant: the epsilon rule, which alone would hand
    ``A`` all of ``R_O``. The weights ``w`` sum to 1 over the operands that carry relevance
    (tensors computed from the input; parameters, constants and numbers carry none and get
    none):

    * ``to="all"``: ``w = 1/n`` for each of the ``n`` operands (AttnLRP's uniform rule);
    * ``to="value"``: everything to the module's value operand (its ``value`` attribute, set
      by the canonizer: ``v`` in ``attn @ v``, the gated signal of a gate). A product without a
      value operand (the attention scores ``q @ k^T``) passes nothing: CP-LRP's detached
      query/key path.

    An operand that is the only one carrying relevance gets all of it with either setting
    (a constant factor passes 100 % to the other operand). On modules other than
    :class:`~zplug.layers.MatMul` and :class:`~zplug.layers.Mul`, ``J^T`` is the module's own
    vector-Jacobian product.
    """

    name = "product"
    summary = "products of activations (matmul, gates): epsilon per operand, uniform or all to the value"
    epsilon: float = parameter(1e-6, doc=_STABILIZER_DOC, kind="number >= 0", check=_check_stabilizer)
    to: str = parameter(
        "all",
        doc="'all': each operand carrying relevance gets 1/n (AttnLRP); 'value': all to the value operand (CP-LRP)",
        kind="'all' or 'value'",
        check=_check_to,
    )

    def backward(self, call, grad_outputs):
        """Return the relevance of each input (see the class docstring)."""
        from zplug.functional_layers import MatMul

        relevance = _relevance_out(call, grad_outputs, self.name)
        module = call.module
        known, operands, weights = self._operands(call)
        shares: dict[int, torch.Tensor] = {}
        if weights:
            scaled = divide_stabilized(relevance, self.epsilon, call.output)
            transposed = None if known else call.op.transpose(scaled, call.inputs, call.params())
            for index, weight in weights.items():
                operand = operands[index]
                if transposed is not None:
                    share = operand * transposed[index]
                    shares[index] = share if weight == 1 else share * weight
                elif isinstance(module, MatMul):
                    shares[index] = _matmul_share(module, scaled, operands, index, weight)
                else:
                    shares[index] = _mul_share(scaled, operands, index, weight)
        return self._per_input(call, known, operands, shares)

    def gradient_form(self, module):
        """:meth:`gradient`."""
        return "rule"

    def gradient(self, call, grad_outputs):
        """``w_A J_A^T (G O / stab(O))`` per operand: its relevance divided by the operand."""
        grad = _relevance_out(call, grad_outputs, self.name)
        module = call.module
        known, operands, weights = self._operands(call)
        scaled = _stabilize.gradient_scaled(grad, self.epsilon, call.output)
        grads: dict[int, torch.Tensor] = {}
        if weights and known:
            with torch.enable_grad():
                leaves = [a.detach().requires_grad_(i in weights) if isinstance(a, torch.Tensor) else a
                          for i, a in enumerate(operands)]
                product = type(module).forward(module, *leaves)
                found = torch.autograd.grad(product, [leaves[i] for i in weights], scaled)
            grads = {i: g if w == 1 else g * w for (i, w), g in zip(weights.items(), found)}
        elif weights:
            transposed = call.op.transpose(scaled, call.inputs, call.params())
            grads = {i: transposed[i] if w == 1 else transposed[i] * w for i, w in weights.items()}
        return self._per_input(call, known, operands, grads)

    def receivers(self, module, inputs):
        """With ``to="value"`` on a matrix or element-wise product: the value operand only (see :meth:`_weights`)."""
        from zplug.functional_layers import MatMul, Mul

        if self.to != "value" or not isinstance(module, (MatMul, Mul)):
            return None
        return tuple(self._weights(module, [i for i, operand in enumerate(inputs) if _carries(operand)]))

    def _weights(self, module, carriers: list[int]) -> dict[int, float]:
        return product_weights(carriers, getattr(module, "value", None), self.to)

    def _operands(self, call) -> tuple[bool, tuple, dict[int, float]]:
        """``(known, operands, weights)``: a MatMul/Mul call's own arguments (else its inputs) and their weights."""
        from zplug.functional_layers import MatMul, Mul

        known = isinstance(call.module, (MatMul, Mul)) and not call.kwargs
        operands = call.args if known else call.inputs
        carriers = [i for i, operand in enumerate(operands) if _carries(operand)]
        return known, operands, self._weights(call.module, carriers)

    @staticmethod
    def _per_input(call, known: bool, operands: tuple, found: dict[int, torch.Tensor]) -> tuple:
        """``found`` (by operand position) as one entry per tensor input of the call."""
        if not known:
            return tuple(found.get(i) for i in range(len(call.inputs)))
        positions = [i for i, a in enumerate(operands) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        return tuple(found.get(i) for i in positions)


def product_weights(carriers: list[int], value: int | None, to: str) -> dict[int, float]:
    """The product rule's weight of each operand that carries relevance (positions ``carriers``).

    ``1/n`` each with ``to="all"`` or a single carrier; with ``to="value"`` 1 for the value operand (if it
    carries), nothing for the others.
    """
    if len(carriers) <= 1 or to == "all":
        return {i: 1.0 / len(carriers) for i in carriers}
    return {value: 1.0} if value in carriers else {}


__all__ = ("FrozenScale", "Product", "Softmax", "frozen_functions")
